"""Forecasts: meter forecast [TASK | PHASE] [--backtest] (docs/forecasts.md)."""

import click

from taskmeter import terminal
from taskmeter.cli.common import budget_defaults, cli, db_option, idle_seconds, json_option, open_db, utc_option
from taskmeter.errors import MeterError
from taskmeter.store import tasks
from taskmeter.terminal import Column


def _level(ctx, param, value):
    from taskmeter.analytics.forecast import check_level

    if value is not None:
        try:
            check_level(value)
        except MeterError as exc:
            raise click.BadParameter(str(exc).removeprefix("--level "), ctx, param) from None
    return value


@cli.command("forecast")
@click.argument("target", required=False, metavar="[TASK | PHASE]")
@click.option(
    "--level",
    type=float,
    default=0.8,
    show_default=True,
    callback=_level,
    help="The share of results the intervals should hold, 0.5 to 0.95.",
)
@click.option("--backtest", is_flag=True, help="Score the forecasts on your approved tasks, each forecast from those before it.")
@json_option
@utc_option
@db_option
def forecast_cmd(target, level, backtest, as_json, utc, db_path):
    """What a task or phase will take in working time, tokens and cost, with
    intervals from your own approved tasks (the current task by default).

    \b
    A task: its estimate times the ratios actual/estimate of similar tasks (its
    tag's, else its phase's, else all), at conformal ranks; no estimate: their results.
    A phase: its totals when its open tasks are done, its finish date, the chance to
    stay within its estimate and budget.
    Fewer than 9 comparable approved tasks (at 80%) give no interval.
    """
    from taskmeter.analytics import forecasts

    if backtest and target:
        raise click.UsageError("--backtest scores every approved task: it takes no TASK or PHASE")
    with open_db(db_path, create=False) as db:
        if backtest:
            report = forecasts.backtest(db, idle_seconds(), level)
            return _say_backtest(report) if not as_json else terminal.print_json(report)
        kind, name = _resolve(db, target)
        if kind == "task":
            record = forecasts.task_forecast(db, name, idle_seconds(), level).record
        else:
            record = forecasts.phase_forecast(db, name, idle_seconds(), level, budget_defaults=budget_defaults())
    if as_json:
        terminal.print_json(record)
    elif kind == "task":
        terminal.info(f"{record['task_id']}:")
        terminal.fields(forecasts.task_lines(record))
    else:
        _say_phase(record, utc)


def _resolve(db, target: str | None) -> tuple[str, str]:
    """A task's ID, else a phase's; the current task when none is named."""
    if not target:
        current = tasks.current_task(db)
        if current is None:
            raise MeterError("no current task: name a task or a phase (`meter forecast P1-010`, `meter forecast P1`)")
        return "task", current.task_id
    name = target.strip()
    if db.execute("SELECT 1 FROM tasks WHERE id = ?", (name.upper(),)).fetchone():
        return "task", name.upper()
    if db.execute("SELECT 1 FROM phases WHERE id = ?", (name.upper(),)).fetchone():
        return "phase", name.upper()
    raise MeterError(f"no task or phase {name!r}: see `meter tasks` and `meter phases`")


def _say_phase(record: dict, utc: bool) -> None:
    from taskmeter.analytics import forecasts

    pairs = forecasts.phase_lines(record, lambda stored: terminal.moment(stored, utc, short=False))
    level = f"{record['level'] * 100:g}%"
    terminal.info(f"Phase {record['phase_id']}: {tasks.counted(len(record['open_tasks']), 'open task')}, {level} intervals")
    terminal.fields(pairs[1:])
    if record["tasks"]:
        terminal.table(
            [
                Column("Task", "id"),
                Column("Class", "text", drop=3),
                Column("Working", "text"),
                Column("Tokens", "text", drop=2),
                Column("Cost", "text", drop=1),
            ],
            [
                [
                    task["task_id"],
                    forecasts.class_name(task),
                    forecasts.spread(task["working_seconds"], "working_seconds"),
                    forecasts.spread(task["tokens"], "tokens"),
                    forecasts.spread(task["cost_usd"], "cost_usd"),
                ]
                for task in record["tasks"]
            ],
        )


def _say_backtest(report: dict) -> None:
    from taskmeter.analytics import forecasts
    from taskmeter.analytics.forecast import minimum_tasks

    level = f"{report['level'] * 100:g}%"
    terminal.info(f"Backtest over {report['tasks']} approved tasks, each forecast from those approved before it ({level}):")
    rows = []
    for name, label in (("working_seconds", "Working time"), ("tokens", "Tokens"), ("cost_usd", "Cost")):
        figures = report[name]
        for who, scores in (
            ("forecast", figures),
            ("raw estimate", figures["baselines"]["raw_estimate"]),
            ("phase median", figures["baselines"]["phase_median"]),
        ):
            if not scores.get("n"):
                continue
            say = forecasts.SAY[name]
            rows.append(
                [
                    label,
                    who,
                    scores["n"],
                    f"{scores['coverage'] * 100:.0f}%",
                    say(scores["median_width"]),
                    f"{scores['median_abs_log_error']:.2f}",
                    say(scores["winkler"]),
                ]
            )
    if not rows:
        needed = minimum_tasks(report["level"])
        terminal.info(f"No task could be forecast yet: an interval needs {needed} comparable approved tasks before it.")
        return
    terminal.table(
        [
            Column("Quantity", "text"),
            Column("Forecaster", "text"),
            Column("Tasks", "count"),
            Column("Coverage", "figure"),
            Column("Median width", "figure", drop=2),
            Column("Median |ln error|", "figure"),
            Column("Winkler", "figure", drop=1),
        ],
        rows,
    )
    terminal.note(
        f"Coverage: the share of results inside the interval (aim: {level}). |ln error|: |ln(actual/point)|."
        " Winkler: the width plus a penalty for each result outside; lower is better."
    )
