"""Building forecasts: the tasks' records from the store (analytics/listings.py,
one definition of each figure), then analytics/forecast.py's pure computations.
`meter forecast`, `meter set-task --estimate`, `meter budget`, the reports and the
recorder's forecast alert all come here (docs/forecasts.md)."""

import sqlite3
from collections.abc import Mapping
from datetime import timedelta

from taskmeter.analytics import forecast
from taskmeter.analytics.forecast import DEFAULT_LEVEL, QUANTITIES, Outcome, TaskForecast
from taskmeter.analytics.listings import task_records
from taskmeter.analytics.worktime import DEFAULT_IDLE_SECONDS
from taskmeter.money import usd
from taskmeter.store import tasks
from taskmeter.timefmt import format_duration, from_stored, now_stored, seconds_between, to_stored

# A budget's unit -> the quantity that spends it.
BUDGET_QUANTITIES = {"tokens": "tokens", "usd": "cost_usd"}


def outcomes(db: sqlite3.Connection, idle_seconds: float = DEFAULT_IDLE_SECONDS, now: str | None = None) -> list[Outcome]:
    """Every task as the forecast reads it, from its record (approved and open)."""
    return [forecast.outcome_of(r) for r in task_records(db, now=now, idle_seconds=idle_seconds, intervals=False)]


def _approved_rows(db: sqlite3.Connection) -> list[Outcome]:
    """Every approved task in approval order, from its row alone: what choosing a class
    needs (its tag, phase, whether it has an estimate and working time), with a stand-in
    for its results (forecast.reference_class), so that only the tasks of a window
    have their working time computed."""
    rows = db.execute("SELECT id, phase_id, tag, final_approval_at, estimate_seconds, begin_at FROM tasks")
    return forecast.approved_in_order(
        Outcome(row[0], row[1], row[2], row[3], row[4], (0.0 if row[5] else None, None, None)) for row in rows
    )


def _history_for(
    db: sqlite3.Connection, targets: list[Outcome], past: list[Outcome], now: str, idle_seconds: float, level: float
) -> list[Outcome]:
    """`past` (from _approved_rows) with the tasks of each target's window read in full,
    as their records (metrics.task_fields) give them."""
    from taskmeter.analytics import history, metrics

    wanted = {o.task_id for target in targets for o in forecast.reference_class(target, past, level).window}
    if not wanted:
        return past
    rows = [dict(row) for row in tasks.tasks_by_id(db, sorted(wanted))]
    full = {h.task["id"]: forecast.outcome_of(metrics.task_fields(h, now, idle_seconds)) for h in history.histories(db, rows)}
    return [full.get(o.task_id, o) for o in past]


def task_forecast(
    db: sqlite3.Connection,
    task_id: str,
    idle_seconds: float = DEFAULT_IDLE_SECONDS,
    level: float = DEFAULT_LEVEL,
    now: str | None = None,
) -> TaskForecast:
    """The forecast of one task (open or approved) from the tasks approved before now
    (an approved task: before its own approval). Only the tasks of its class's window
    are read in full, however long the history."""
    from taskmeter.analytics.reports import task_report

    now = now or now_stored()
    target = forecast.outcome_of(task_report(db, task_id.strip(), now, idle_seconds))
    past = _approved_rows(db)
    if target.approved_at:
        past = [o for o in past if (o.approved_at, o.task_id) < (target.approved_at, target.task_id)]
    return forecast.forecast_task(target, _history_for(db, [target], past, now, idle_seconds, level), level)


def phase_forecast(
    db: sqlite3.Connection,
    phase_id: str,
    idle_seconds: float = DEFAULT_IDLE_SECONDS,
    level: float = DEFAULT_LEVEL,
    now: str | None = None,
    budget_defaults=None,
) -> dict:
    """A phase's totals when its open tasks are done, by resampling each open task's
    class (never by adding intervals); its finish date at the phase's pace of working
    time so far; the chance to stay within its estimate and each cap of its budget."""
    from taskmeter.analytics.reports import phase_report

    now = now or now_stored()
    phase = tasks.get_phase(db, phase_id.strip())
    report = phase_report(db, phase["id"], now, idle_seconds)
    members = [forecast.outcome_of(task) for task in report["tasks"]]
    targets = [o for o in members if not o.approved_at]
    past = _history_for(db, targets, _approved_rows(db), now, idle_seconds, level)
    open_tasks = [forecast.forecast_task(o, past, level) for o in targets]
    record: dict = {"phase_id": phase["id"], "level": level, "open_tasks": [f.record["task_id"] for f in open_tasks]}
    draws: dict[str, list[float] | None] = {}
    short = [f.record["task_id"] for f in open_tasks if f.record["working_seconds"].get("high") is None]
    for index, quantity in enumerate(QUANTITIES):
        drawn = draws[quantity] = forecast.resample_total(open_tasks, quantity, seed=f"{phase['id']}:{quantity}")
        used = sum(o.results[index] or 0 for o in members)
        if drawn is None:
            lacking = [f.record["task_id"] for f in open_tasks if f.record[quantity].get("high") is None]
            record[quantity] = {"reason": f"not enough history for {', '.join(lacking)}", "used": used}
            continue
        record[quantity] = {**forecast.summary(drawn, used, level), "used": used, "left": forecast.summary(drawn, 0.0, level)}
    record["finish"] = _finish(report, draws["working_seconds"], now, level)
    estimate = report["estimated_total"]
    worked = record["working_seconds"]["used"]
    record["estimated_total"] = estimate
    if draws["working_seconds"] is None:
        record["chance_within_estimate"] = None
    elif estimate is None:
        record["chance_within_estimate"] = None
        record["estimate_reason"] = f"tasks without an estimate: {', '.join(report['tasks_without_estimate'])}"
    else:
        record["chance_within_estimate"] = forecast.chance_within(draws["working_seconds"], estimate - worked)
    record["chance_within_budget"] = {}
    if budget_defaults is not None:
        from taskmeter.analytics.budgets import budget_statuses

        for status in budget_statuses(db, budget_defaults):
            if status["scope"] == "phase" and status["target"] == phase["id"]:
                record["chance_within_budget"] = chances(status, draws)
    if short:
        record["reason"] = f"not enough history for {', '.join(short)}"
    record["tasks"] = [f.record for f in open_tasks]
    return record


def _finish(report: Mapping, left: list[float] | None, now: str, level: float) -> dict:
    """When the work left is done at the phase's pace so far: its working time per
    hour of the clock since it began."""
    begin, worked = report["phase_begin"], report["actual_total"]
    if left is None:
        return {"reason": "the work left has no forecast"}
    if not begin or not worked:
        return {"reason": "the phase has no working time yet: no pace to go by"}
    pace = worked / max(seconds_between(begin, now), 1.0)  # working seconds per second of the clock
    at = from_stored(now)
    spread = forecast.summary(left, 0.0, level)

    def moment(seconds: float) -> str:
        return to_stored(at + timedelta(seconds=seconds / pace))

    return {"point": moment(spread["point"]), "low": moment(spread["low"]), "high": moment(spread["high"]), "pace": pace}


def chances(status: dict, draws: dict[str, list[float] | None]) -> dict[str, float | None]:
    """Per cap of a budget: the chance that what is left of the work keeps its spend within the cap."""
    found: dict[str, float | None] = {}
    for unit, quantity in BUDGET_QUANTITIES.items():
        limit = status[f"{unit}_budget"]
        if limit:
            left = draws[quantity]
            found[unit] = None if left is None else forecast.chance_within(left, limit - status[f"{unit}_used"])
    return found


def budget_chances(
    everything: list[Outcome], statuses: list[dict], level: float = DEFAULT_LEVEL
) -> dict[tuple[str, str], dict[str, float | None]]:
    """Per budget of open work, (scope, target) -> per cap the chance that the work
    left keeps it within the cap: each open task's final spend drawn from its class
    (at least what it has spent), a phase's summed over its open tasks. `everything`:
    every task (outcomes())."""
    past = forecast.approved_in_order(everything)
    found = {}
    for status in statuses:
        scope, target = status["scope"], status["target"]
        members = [
            o
            for o in everything
            if not o.approved_at and (o.phase_id == target if scope == "phase" else o.task_id.lower() == target.lower())
        ]
        if scope == "task" and not members:
            continue  # approved: its spend is final
        open_tasks = [forecast.forecast_task(o, past, level) for o in members]
        draws = {q: forecast.resample_total(open_tasks, q, seed=f"{scope}:{target}:{q}") for q in QUANTITIES}
        found[scope, target] = chances(status, draws)
    return found


def backtest(db: sqlite3.Connection, idle_seconds: float = DEFAULT_IDLE_SECONDS, level: float = DEFAULT_LEVEL) -> dict:
    return forecast.backtest(outcomes(db, idle_seconds), level)


# ---------------------------------------------------------------- saying it


def compact_tokens(count: float) -> str:
    """180k, 1.2M: a token count at a glance, two significant digits."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if count >= size:
            return f"{float(f'{count / size:.2g}'):g}{unit}"
    return f"{round(count)}"


def _duration(seconds: float) -> str:
    """A forecast's duration: to the minute from 10 minutes up (its seconds would claim a precision it has not)."""
    return format_duration(round(seconds / 60) * 60 if seconds >= 600 else seconds)


SAY = {
    "working_seconds": _duration,
    "tokens": compact_tokens,
    "cost_usd": usd,
}


def spread(quantity: dict, name: str) -> str:
    """`1h 40m–3h 10m`: a quantity's interval, or why there is none."""
    if quantity.get("high") is None:
        return quantity.get("reason", "no forecast")
    return f"{SAY[name](quantity['low'])}–{SAY[name](quantity['high'])}"


def similar_line(record: dict) -> str:
    """The line `meter set-task ID --estimate 2h` answers with:
    similar tasks took 1h 40m–3h 10m (80%, 23 tasks); 180k–420k tokens, $1.10–$2.60."""
    working = record["working_seconds"]
    if working.get("high") is None:
        return f"Forecast: {working['reason']}; an interval needs {working['needed']} comparable approved tasks."
    level = f"{record['level'] * 100:g}%"
    line = f"Similar tasks took {spread(working, 'working_seconds')} ({level}, {working['tasks']} tasks)"
    others = []
    if record["tokens"].get("high") is not None:
        others.append(f"{spread(record['tokens'], 'tokens')} tokens")
    if record["cost_usd"].get("high") is not None:
        others.append(spread(record["cost_usd"], "cost_usd"))
    return line + (f"; {', '.join(others)}" if others else "") + "."


def class_name(record: dict) -> str:
    kind, name = record["reference_class"]["kind"], record["reference_class"]["name"]
    return {"tag": f"tag {name}", "phase": f"phase {name}'s earlier tasks", "all": "every approved task"}[kind]


def task_lines(record: dict) -> list[tuple[str, str]]:
    """A task's forecast as `NAME: value` lines (meter forecast TASK, the task report's block)."""
    basis = (
        f"its estimate {format_duration(record['estimate_seconds'])} x the class's ratios"
        if record["basis"] == "estimate"
        else "the class's results (no estimate)"
    )
    lines = [
        ("FORECAST", f"{record['level'] * 100:g}% intervals from {class_name(record)} ({record['tasks_used']} tasks used)"),
        ("FROM", basis),
    ]
    for name, label in (("working_seconds", "WORKING TIME"), ("tokens", "TOKENS"), ("cost_usd", "COST")):
        quantity = record[name]
        said = spread(quantity, name)
        if quantity.get("high") is not None:
            said = f"{SAY[name](quantity['point'])} ({said})"
        so_far = record.get("so_far", {}).get(name)
        if so_far is not None:
            said += f"; so far {SAY[name](so_far)}" + (" (past the interval)" if name in record["past_high"] else "")
        lines.append((label, said))
    return lines


def past_high_message(record: dict, quantity: str) -> str:
    """The alert of an open task past the upper end of its interval: P2-004 is past 90% of similar tasks' time."""
    what = {"working_seconds": "time", "tokens": "tokens", "cost_usd": "cost"}[quantity]
    share = f"{(1 + record['level']) / 2 * 100:g}%"
    said = SAY[quantity](record["so_far"][quantity])
    return (
        f"{record['task_id']} is past {share} of similar tasks' {what}: {said} so far, "
        f"above {SAY[quantity](record[quantity]['high'])} ({class_name(record)}, {record[quantity]['tasks']} tasks)"
    )


def _aligned(pairs: list[tuple[str, str]]) -> list[str]:
    width = max(len(name) for name, _ in pairs) + 2
    return [f"{(name + ':'):<{width}}{value}" for name, value in pairs]


def task_block(record: dict) -> list[str]:
    """The forecast block of a task's report (next to the seed's DURATION ANALYSIS):
    for an approved task, what was forecast from the tasks approved before it."""
    return ["=== FORECAST ===", *_aligned(task_lines(record))]


def phase_lines(record: dict, moment) -> list[tuple[str, str]]:
    """A phase's forecast as `NAME: value` lines (meter forecast PHASE, the phase report's block);
    `moment` says a stored time as the reader reads it."""
    level = f"{record['level'] * 100:g}%"
    resampled = tasks.counted(len(record["open_tasks"]), "open task")
    pairs = [("FORECAST", f"{level} intervals, {resampled} resampled")]
    for name, label in (("working_seconds", "WORKING TIME"), ("tokens", "TOKENS"), ("cost_usd", "COST")):
        quantity = record[name]
        if quantity.get("high") is None:
            pairs.append((label, quantity["reason"]))
            continue
        say = SAY[name]
        pairs.append(
            (
                label,
                f"{say(quantity['point'])} in all ({spread(quantity, name)}); "
                f"{say(quantity['left']['point'])} left ({spread(quantity['left'], name)})",
            )
        )
    finish = record["finish"]
    if finish.get("point"):
        pace = SAY["working_seconds"](finish["pace"] * 86400)
        pairs.append(
            (
                "FINISH",
                f"{moment(finish['point'])} ({moment(finish['low'])} – {moment(finish['high'])})"
                f" at its pace of {pace} of work a day",
            )
        )
    else:
        pairs.append(("FINISH", finish["reason"]))
    chance = record["chance_within_estimate"]
    if chance is not None:
        pairs.append(("WITHIN ESTIMATE", f"{chance * 100:.0f}% (estimate {SAY['working_seconds'](record['estimated_total'])})"))
    elif record.get("estimate_reason"):
        pairs.append(("WITHIN ESTIMATE", record["estimate_reason"]))
    for unit, budget_chance in record["chance_within_budget"].items():
        pairs.append((f"WITHIN {unit.upper()} BUDGET", "no forecast" if budget_chance is None else f"{budget_chance * 100:.0f}%"))
    return pairs


def phase_block(record: dict, moment) -> list[str]:
    return ["=== FORECAST ===", *_aligned(phase_lines(record, moment))]
