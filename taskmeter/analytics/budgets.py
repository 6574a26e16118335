"""Budgets against spend: what each budget has used, what remains, whether it
blocks, and (for `meter budget`) where the current burn rate takes open work.

Spend is the task_usage rollup's: total tokens (input + output, as
TOKEN_COUNT_USED) and the cost of the priced calls; a phase's is its tasks' sum.
The API-equivalent cost of subscription calls (price_basis 'api-equivalent') is
money the subscription already paid: it spends USD budgets only when the config's
count_subscription_usd says so. Their tokens always count.
A task with no budget of its own has the config's default per-task budget, if any.
"""

import sqlite3
from collections import namedtuple

from taskmeter.money import usd
from taskmeter.tokens import TOKENS_SQL

WARN_AT = (0.8, 1.0)  # the shares of a budget whose crossing is announced


# The config's [budgets] section (its defaults are defaults.toml's). A namedtuple,
# not a dataclass: the status line imports this module, and importing dataclasses
# would cost it 9 ms.
Defaults = namedtuple("Defaults", "on_exceeded task_tokens task_usd count_subscription_usd")


def defaults_of(section: dict) -> Defaults:
    """Defaults from the config's [budgets] section, as a dict."""
    return Defaults(section["on_budget_exceeded"], section["task_tokens"], section["task_usd"], section["count_subscription_usd"])


def configured_defaults(values) -> Defaults:
    """Defaults from the config files as read without validating them (config/files.py's Values)."""
    from taskmeter.config.files import FLAG, NUMBER, TEXT

    return Defaults(
        values.get("budgets.on_budget_exceeded", TEXT),
        values.get("budgets.task_tokens", NUMBER),
        values.get("budgets.task_usd", NUMBER),
        values.get("budgets.count_subscription_usd", FLAG),
    )


def _spent_usd(defaults: Defaults, table: str = "") -> str:
    """SQL of the USD a task_usage row (`table.`) spends against budgets."""
    if defaults.count_subscription_usd:
        return f"{table}cost_usd"
    return f"({table}cost_usd - {table}api_equivalent_usd)"


def _spend_by_task(db: sqlite3.Connection, defaults: Defaults) -> dict[str, dict]:
    """task ID -> {phase_id, tokens, usd, calls, approved} for every task."""
    rows = db.execute(
        f"""
        SELECT t.id, t.phase_id, t.final_approval_at, coalesce(u.interactions, 0) AS calls,
            {TOKENS_SQL.format(r="u.")} AS tokens, coalesce({_spent_usd(defaults, "u.")}, 0) AS usd
        FROM tasks t LEFT JOIN task_usage u ON u.task_key = t.id
        """
    )
    return {
        row["id"]: {
            "phase_id": row["phase_id"],
            "tokens": row["tokens"],
            "usd": row["usd"],
            "calls": row["calls"],
            "approved": bool(row["final_approval_at"]),
        }
        for row in rows
    }


def _status(
    scope: str, target: str, tokens: int | None, usd: float | None, on_exceeded: str, set_at: str | None, spent: dict
) -> dict:
    shares = [spent["tokens"] / tokens if tokens else None, spent["usd"] / usd if usd else None]
    used = max(share for share in shares if share is not None)
    return {
        "scope": scope,
        "target": target,
        "own": set_at is not None,  # False: the config's default per-task budget
        "set_at": set_at,
        "tokens_budget": tokens,
        "usd_budget": usd,
        "tokens_used": spent["tokens"],
        "usd_used": spent["usd"],
        "calls": spent["calls"],
        "tokens_remaining": tokens - spent["tokens"] if tokens else None,
        "usd_remaining": usd - spent["usd"] if usd else None,
        "used_share": used,
        "exceeded": used >= 1.0,
        "on_exceeded": on_exceeded,
        "blocks": used >= 1.0 and on_exceeded == "block",
        # Spend past the budget: calls already in flight when it ran out are never cut.
        "tokens_over": max(0, spent["tokens"] - tokens) if tokens else None,
        "usd_over": max(0.0, spent["usd"] - usd) if usd else None,
    }


def budget_statuses(db: sqlite3.Connection, defaults: Defaults) -> list[dict]:
    """Every budget in force: each phase's and task's own, then the default for
    every open task without one. Phases first, then tasks, by ID."""
    by_task = _spend_by_task(db, defaults)
    statuses, own_tasks = [], set()
    for row in db.execute("SELECT * FROM budgets ORDER BY scope, target"):
        mode = row["on_exceeded"] or defaults.on_exceeded
        if row["scope"] == "phase":
            members = [spent for spent in by_task.values() if spent["phase_id"] == row["target"]]
            spent = {key: sum(m[key] for m in members) for key in ("tokens", "usd", "calls")}
        else:
            own_tasks.add(row["target"])
            spent = by_task.get(row["target"], {"tokens": 0, "usd": 0.0, "calls": 0})
        statuses.append(_status(row["scope"], row["target"], row["tokens"], row["usd"], mode, row["set_at"], spent))
    if defaults.task_tokens or defaults.task_usd:
        for task_id, spent in sorted(by_task.items()):
            if task_id not in own_tasks and not spent["approved"]:
                statuses.append(
                    _status("task", task_id, defaults.task_tokens, defaults.task_usd, defaults.on_exceeded, None, spent)
                )
    return statuses


def header(status: dict) -> str:
    """The x-meter-budget response header: what remains of the budget a call counts against."""
    parts = [f"{status['scope']}={status['target']}"]
    if status["tokens_budget"]:
        parts.append(f"tokens-remaining={status['tokens_remaining']}")
    if status["usd_budget"]:
        parts.append(f"usd-remaining={status['usd_remaining']:.4f}")
    parts.append(f"used={status['used_share'] * 100:.1f}%")
    return "; ".join(parts)


def describe(status: dict) -> str:
    """One line: P1-010: 1,612,000 of 2,000,000 tokens (81% used); with both caps,
    each with its own share: ... tokens (81% used), $5.50 of $5.00 (110% used)."""
    amounts = []
    if status["tokens_budget"]:
        amounts.append(f"{status['tokens_used']:,} of {status['tokens_budget']:,} tokens")
    if status["usd_budget"]:
        amounts.append(f"{usd(status['usd_used'])} of {usd(status['usd_budget'])}")
    what = f"phase {status['target']}" if status["scope"] == "phase" else status["target"]
    if len(amounts) == 2:  # each cap judged on its own: one share would hide which cap is spent
        tokens_share, usd_share = status["tokens_used"] / status["tokens_budget"], status["usd_used"] / status["usd_budget"]
        return f"{what}: {amounts[0]} ({tokens_share * 100:.0f}% used), {amounts[1]} ({usd_share * 100:.0f}% used)"
    return f"{what}: {amounts[0]} ({status['used_share'] * 100:.0f}% used)"


def refusal(status: dict) -> str:
    """Why a blocked call was refused, and how to go on: the message its client shows."""
    command = f"meter {status['scope']} {status['target']} --budget <more>"
    if not status["own"]:
        command += " (or raise [budgets] task_tokens / task_usd in the config)"
    return (
        f"taskmeter: the budget of {describe(status)} is spent, and it blocks new calls. "
        f"Raise it with `{command}`, or let calls through with `meter {status['scope']} {status['target']} --on-exceeded warn`."
    )


def caps(status: dict, finished: bool, worked_seconds: float | None, estimate_left_seconds: float | None) -> list[dict]:
    """Each cap of a budget (tokens, USD) judged on its own (docs/budgets.md,
    "Projection"). Finished work shows its final spend against the cap. Open work
    shows where the spend per working hour so far takes it: the spend so far plus
    that rate over the estimated working time left, the overrun that means, and
    the working time until the cap runs out."""
    judged = []
    for unit in ("tokens", "usd"):
        limit = status[f"{unit}_budget"]
        if not limit:
            continue
        used = status[f"{unit}_used"]
        cap = {
            "unit": unit,
            "budget": limit,
            "used": used,
            "used_share": used / limit,
            "exceeded": used >= limit,
            "final": finished,
            "final_overrun": used - limit if finished else None,  # negative: left unspent
            "burn_rate_per_hour": None,
            "projected_at_completion": None,
            "projected_overrun": None,
            "runs_out_in_seconds": None,
        }
        if not finished and worked_seconds:
            rate = used / worked_seconds  # per working second
            cap["burn_rate_per_hour"] = rate * 3600
            if estimate_left_seconds is not None:
                cap["projected_at_completion"] = used + rate * estimate_left_seconds
                cap["projected_overrun"] = cap["projected_at_completion"] - limit
            cap["runs_out_in_seconds"] = 0.0 if used >= limit else ((limit - used) / rate if rate > 0 else None)
        judged.append(cap)
    return judged


def binding(candidates) -> dict | None:
    """The budget that binds a task's calls: of those covering them (its own or the
    config's default, its phase's), the one with the highest share used, the
    task's own on a tie. `meter status`, `meter budget` and the status line show it."""
    return max((status for status in candidates if status is not None), key=lambda status: status["used_share"], default=None)


def task_budgets(db: sqlite3.Connection, statuses: list[dict]) -> dict[str, dict]:
    """Per task whose calls a budget covers: `binding` (above) and `blocking`
    (its own or its phase's, whichever blocks, else None)."""
    by_scope = {(s["scope"], s["target"]): s for s in statuses}
    covered = {}
    for row in db.execute("SELECT id, phase_id FROM tasks"):
        own, phase = by_scope.get(("task", row["id"])), by_scope.get(("phase", row["phase_id"]))
        if own is None and phase is None:
            continue
        blocking = next((s for s in (own, phase) if s is not None and s["blocks"]), None)
        covered[row["id"]] = {"binding": binding((own, phase)), "blocking": blocking}
    return covered


def guarded_scopes(db: sqlite3.Connection, statuses: list[dict]) -> dict[str, dict]:
    """What the proxy's Guard judges calls by (docs/budgets.md), per budget:
    `scope:target` (lower-case) -> its x-meter-budget `header`, its `used_share`, whether it `blocks`
    when spent, the `refusal` once it does, and its `room`: how many calls the
    spend left would pay for at the scope's mean call (of every call stored, when
    the scope has none; 0 when none is stored at all; None when calls cost it nothing)."""
    everything = db.execute(f"SELECT sum(interactions), sum({TOKENS_SQL.format(r='')}), sum(cost_usd) FROM task_usage").fetchone()
    calls, tokens, usd = (value or 0 for value in everything)
    overall = {"tokens": tokens / calls, "usd": usd / calls} if calls else None
    return {
        f"{status['scope']}:{status['target']}".lower(): {
            "header": header(status),
            "used_share": status["used_share"],
            "blocks": status["on_exceeded"] == "block",
            "refusal": refusal(status) if status["blocks"] else None,
            "room": _room(status, overall),
        }
        for status in statuses
    }


def _room(status: dict, overall: dict | None) -> float | None:
    rooms = []
    for kind in ("tokens", "usd"):
        if not status[f"{kind}_budget"]:
            continue
        if status["calls"]:
            per_call = status[f"{kind}_used"] / status["calls"]
        elif overall is not None:
            per_call = overall[kind]
        else:
            return 0.0  # nothing measured yet: one call at a time until one is
        if per_call > 0:
            rooms.append(max(0.0, status[f"{kind}_remaining"]) / per_call)
    return min(rooms, default=None)


def current_budget(db: sqlite3.Connection, defaults: Defaults) -> dict | None:
    """The budget that binds the current task's calls, for `meter status`, `meter budget` and the dashboard."""
    from taskmeter.store import tasks  # here: the status line imports this module and must start fast

    current = tasks.current_task(db)
    if current is None:
        return None
    covered = task_budgets(db, budget_statuses(db, defaults)).get(current.task_id)
    return covered["binding"] if covered else None
