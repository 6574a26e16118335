"""Budgets and alerts: meter budget, meter alerts [clear]; the --budget options of
`meter task` and `meter phase` (docs/budgets.md)."""

import click

from taskmeter import terminal
from taskmeter.cli.common import budget_defaults, cli, db_option, idle_seconds, json_option, open_db, utc_option
from taskmeter.errors import MeterError
from taskmeter.store import alerts
from taskmeter.store import budgets as stored_budgets
from taskmeter.store.connection import require_transaction, write_transaction
from taskmeter.terminal import Column
from taskmeter.timefmt import format_duration

TYPE_CHECKING = False
if TYPE_CHECKING:  # for the type checker: importing the report types costs every command
    from taskmeter.analytics.records import OpenTaskSoFar


class BudgetType(click.ParamType):
    name = "AMOUNT"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return stored_budgets.parse_amount(value)
        except MeterError as exc:
            self.fail(str(exc), param, ctx)


def budget_options(command):
    """--budget, --also and --on-exceeded, for `meter task` and `meter phase`."""
    command = click.option(
        "--on-exceeded",
        type=click.Choice(["warn", "block"]),
        help="When the budget is spent: warn (default from config) or block new calls with HTTP 429.",
    )(command)
    command = click.option(
        "--also",
        is_flag=True,
        help="With --budget: keep the budget's cap in the other unit (tokens or dollars) instead of replacing it.",
    )(command)
    return click.option(
        "--budget",
        "budget_amounts",
        type=BudgetType(),
        multiple=True,
        help="A budget in tokens (2M, 500k) or dollars ('$5'); it replaces the budget set before (give both kinds, "
        "or add --also, to cap both). `--unset budget` removes it.",
    )(command)


def apply_budget(db, scope: str, target: str, amounts: tuple, on_exceeded: str | None, also: bool, remove: bool) -> str | None:
    """Set, change or remove the budget of `target`, in the caller's transaction; what the
    confirmation line says of it (every cap in force), or None when it was left alone."""
    require_transaction(db, "apply_budget")
    if also and not amounts:
        raise MeterError("--also goes with --budget")
    if remove and (amounts or on_exceeded):
        raise MeterError("--budget and --unset budget contradict each other")
    before = stored_budgets.own_budget(db, scope, target)
    if before is None and (remove or (on_exceeded and not amounts)):
        raise MeterError(f"{target} has no budget of its own: give one with --budget")
    if remove:
        stored_budgets.clear_budget(db, scope, target)
        return f"budget removed (was {stored_budgets.caps_text(before)})"
    if amounts:
        stored_budgets.set_budget(db, scope, target, list(amounts), on_exceeded, also)
    elif on_exceeded:
        stored_budgets.set_mode(db, scope, target, on_exceeded)
    else:
        return None
    after = stored_budgets.own_budget(db, scope, target)
    assert after is not None  # just set
    mode = after["on_exceeded"] or f"{budget_defaults().on_exceeded} by default"
    line = f"budget {stored_budgets.caps_text(after)} ({mode})"
    replaced = before is not None and any(before[unit] and before[unit] != after[unit] for unit in ("tokens", "usd"))
    if replaced:  # a cap that --also adds replaces nothing
        line += f", was {stored_budgets.caps_text(before)}"
    return line


def budget_records(db) -> list[dict]:
    """Every budget in force with its spend and each of its caps judged (`meter budget --json`).
    Working time comes from one pass over every task and phase, not a report per budget."""
    from taskmeter.analytics.budgets import budget_statuses, caps
    from taskmeter.analytics.forecast import outcome_of
    from taskmeter.analytics.forecasts import budget_chances
    from taskmeter.analytics.listings import task_records
    from taskmeter.analytics.reports import phase_reports

    statuses = budget_statuses(db, budget_defaults())
    idle = idle_seconds()
    # (scope, target) -> (finished, working time, estimated working time left)
    work: dict[tuple[str, str], tuple] = {}
    every_task = task_records(db, idle_seconds=idle, intervals=False) if statuses else []
    if any(status["scope"] == "task" for status in statuses):
        work |= {("task", r["task_id"]): (r["status"] == "approved", r["actual_duration"], _left([r])) for r in every_task}
    if any(status["scope"] == "phase" for status in statuses):
        work |= {
            ("phase", p["phase_id"]): (
                p["tasks_total"] > 0 and p["tasks_completed"] == p["tasks_total"],
                p["actual_total"],
                _left(p["open_tasks_so_far"]),
            )
            for p in phase_reports(db, idle_seconds=idle)
        }
    chances = budget_chances([outcome_of(r) for r in every_task], statuses)
    records = []
    for status in statuses:
        # A budget for a task or phase not begun yet has no working time: open, nothing to project.
        finished, worked, left = work.get((status["scope"], status["target"]), (False, None, None))
        judged = caps(status, finished, worked, left)
        for cap in judged:  # the forecast's chance to stay within it (docs/forecasts.md); None: no forecast
            cap["chance_within"] = None if finished else chances.get((status["scope"], status["target"]), {}).get(cap["unit"])
        records.append({**status, "finished": finished, "caps": judged})
    return records


def _left(open_tasks: list["OpenTaskSoFar"]) -> float | None:
    """The estimated working time the open tasks have left; None when one has no estimate.
    A task already past its estimate has none left."""
    left = [
        max(0.0, estimate - (task["actual_duration"] or 0)) for task in open_tasks if (estimate := task["estimated_duration"])
    ]
    return sum(left) if len(left) == len(open_tasks) else None


def _amount(unit: str, value: float) -> str:
    return terminal.money(value) if unit == "usd" else terminal.number(round(value))


def _outlook(cap: dict) -> str:
    """Finished work: its final spend against the cap. Open work: the projection, if any."""
    if cap["final"]:
        overrun, said = cap["final_overrun"], "final"
    elif cap["projected_overrun"] is not None:
        overrun, said = cap["projected_overrun"], "projected"
    else:
        return ""
    return f"{said}: {_amount(cap['unit'], abs(overrun))} {'over' if overrun > 0 else 'under'}"


def _runs_out(cap: dict) -> str:
    seconds = cap["runs_out_in_seconds"]
    if seconds is None:
        return ""
    return "spent" if seconds == 0 else format_duration(seconds) or ""


@cli.command("budget")
@json_option
@db_option
def budget_cmd(as_json, db_path):
    """Budgets with spend, and each cap judged: finished work against its final
    spend, open work by where the current burn rate takes it.

    \b
    Set one:   meter task P1-010 --budget 2M [--budget '$5'] [--on-exceeded block]
               meter phase P1 --budget '$50'
    Default:   [budgets] task_tokens / task_usd in the config, for every open task
    """
    from taskmeter.analytics.budgets import current_budget
    from taskmeter.store.tasks import current_task

    with open_db(db_path, create=False) as db:
        records = budget_records(db)
        current, binding = current_task(db), current_budget(db, budget_defaults())
    if as_json:
        terminal.print_json(records)
        return
    if not records:
        terminal.info("No budgets. Set one with `meter task ID --budget 2M` or `meter phase ID --budget '$50'`.")
        return
    rows = []
    for record in records:
        name = ("phase " if record["scope"] == "phase" else "") + record["target"] + ("" if record["own"] else " (default)")
        for cap in record["caps"]:  # one line per cap: each is judged on its own
            spent = cap["exceeded"] and record["on_exceeded"] == "block"
            rows.append(
                [
                    name,
                    f"{_amount(cap['unit'], cap['used'])} of {_amount(cap['unit'], cap['budget'])}"
                    + (" tokens" if cap["unit"] == "tokens" else ""),
                    f"{cap['used_share'] * 100:.0f}%",
                    record["on_exceeded"] + (" BLOCKING" if spent else ""),
                    _outlook(cap),
                    _runs_out(cap),
                    "" if cap["chance_within"] is None else f"{cap['chance_within'] * 100:.0f}%",
                ]
            )
    terminal.table(
        [
            Column("Budget", "id"),
            Column("Used of cap", "text"),
            Column("Used", "figure"),
            Column("When spent", "text", drop=2),
            Column("At completion", "text", drop=3),
            Column("Runs out in", "text", drop=1),
            Column("Chance within", "figure", drop=4),
        ],
        rows,
    )
    if binding is not None:
        what = f"phase {binding['target']}" if binding["scope"] == "phase" else binding["target"]
        terminal.note(
            f"The budget that binds {current.task_id} (the current task): {what}, {binding['used_share'] * 100:.0f}% used."
        )
    terminal.note(
        "At completion: finished work, its final spend against the cap; open work, its spend so far"
        " plus the spend per working hour over the estimated working time left."
        " Chance within: how often work like it stayed within the cap (meter forecast; blank: not enough history)."
    )


@cli.group("alerts", invoke_without_command=True)
@click.option("--all", "include_cleared", is_flag=True, help="Cleared alerts too.")
@json_option
@utc_option
@db_option
@click.pass_context
def alerts_cmd(ctx, include_cleared, as_json, utc, db_path):
    """Alerts the recorder raised: budgets at 80% and 100%, loops of near-identical
    requests, burn rates far above the approved tasks', open tasks past the upper end
    of their forecast. `meter alerts clear` closes them."""
    if ctx.invoked_subcommand is not None:
        return
    with open_db(db_path, create=False) as db:
        found = alerts.listed(db, include_cleared)
    if as_json:
        terminal.print_json([{"alert_id": alert.pop("id"), **alert, "blocks": bool(alert["blocks"])} for alert in found])
        return
    if not found:
        terminal.info("No open alerts." if not include_cleared else "No alerts.")
        return
    terminal.table(
        [
            Column("ID", "id"),
            Column("At", "time"),
            Column("Kind", "text", drop=2),
            Column("Alert", "text", shrink=True),
            Column("Cleared", "time", drop=1),
        ],
        [[alert["id"], alert["at"], alert["kind"], alert["message"], alert["cleared_at"]] for alert in found],
        utc=utc,
    )


@alerts_cmd.command("clear")
@click.argument("alert_ids", nargs=-1, type=int)
@db_option
def alerts_clear_cmd(alert_ids, db_path):
    """Close the alerts given by ID (every open one when none is given). A loop
    alert that blocks its session stops blocking within a second."""
    wanted = set(alert_ids)
    with open_db(db_path, create=False) as db, write_transaction(db):
        cleared = alerts.clear(db, list(wanted) or None)
        if cleared < len(wanted):  # all or nothing: the transaction is rolled back
            raise MeterError(f"only {cleared} of {len(wanted)} alerts are open: none cleared; see `meter alerts --all`")
    terminal.info(f"Cleared {cleared} alert{'s' if cleared != 1 else ''}.")
