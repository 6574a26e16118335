"""Reports: the overview, a task, a phase, and usage by day, week, month or model.

`meter report` and its subcommands take the same output options, in either
place: `meter report --json daily` and `meter report daily --json` are one command.
"""

from functools import partial

import click

from taskmeter import terminal
from taskmeter.cli.common import MOMENT, TASK, cli, db_option, idle_seconds, open_db, utc_option
from taskmeter.store import tasks
from taskmeter.terminal import Column

FORMAT = click.Choice(["table", "markdown", "json", "csv"])


def report_options(command):
    """The options every report takes, on the group and on each subcommand."""
    for option in reversed(
        [
            click.option(
                "--format",
                "output_format",
                type=FORMAT,
                help="table (default), markdown (the seed's execution-log blocks), json or csv.",
            ),
            click.option("--json", "as_json", is_flag=True, help="The same as --format json."),
            utc_option,
            db_option,
        ]
    ):
        command = option(command)
    return command


def _chosen(ctx: click.Context, output_format, as_json, utc, db_path) -> tuple[str, bool, str | None]:
    """The output options given here or to `meter report`; given twice, they must agree."""
    outer = ctx.parent.params if ctx.parent is not None else {}
    formats = {f for f in (output_format, outer.get("output_format"), "json" if as_json or outer.get("as_json") else None) if f}
    if len(formats) > 1:
        raise click.UsageError(f"conflicting output formats: {', '.join(sorted(formats))}")
    return (formats.pop() if formats else "table"), utc or bool(outer.get("utc")), db_path or outer.get("db_path")


@cli.group("report", invoke_without_command=True)
@report_options
@click.pass_context
def report_cmd(ctx, output_format, as_json, utc, db_path):
    """Execution reports and usage by period.

    \b
      meter report                 one line per phase, with the token trend
      meter report task P1-010     the seed's Level 1 execution log
      meter report phase P1        the seed's Level 2 aggregate
      meter report daily           tokens, cost, calls, failed calls, flags per day
      meter report hourly|weekly|monthly  the same per hour, week (from Monday) or month
      meter report models          the same per model
    Times and days are local, hours labelled with their zone (a repeated hour is two rows), unless --utc;
    --task narrows usage reports to one task. Output options go before or after the subcommand.
    """
    if ctx.invoked_subcommand is not None:
        return
    from taskmeter.analytics import formats
    from taskmeter.analytics.records import OverviewReport
    from taskmeter.analytics.reports import overview_report

    output_format, _, db_path = _chosen(ctx, output_format, as_json, utc, db_path)
    with open_db(db_path, create=False) as db:
        report = overview_report(db)

    def table(overview: OverviewReport) -> str:
        terminal.table(
            [
                Column("Phase", shrink=True),
                Column("Tasks", drop=4),
                Column("Tokens", "figure"),
                Column("Tokens/task", "figure", drop=3),
                Column("Trend", "figure", drop=5),
                Column("Calls", "figure", drop=2),
                Column("Halluc. rate", "figure", drop=1),
                Column("Cost", "figure"),
                Column("From logs", "figure", drop=7),
                Column("Complete", "figure", drop=6),
            ],
            formats.overview_rows(overview),
        )
        return ""

    csv_rows = [*report["phases"], {"phase_id": "unassigned", **report["unassigned"]}]
    _emit(report, output_format, formats.overview_markdown, table, csv_rows)


@report_cmd.command("task")
@click.argument("task_id", type=TASK)
@report_options
@click.pass_context
def report_task_cmd(ctx, task_id, output_format, as_json, utc, db_path):
    """The seed's Level 1 execution log of TASK_ID, with cost and token detail."""
    from taskmeter.analytics import formats
    from taskmeter.analytics.reports import task_report

    output_format, utc, db_path = _chosen(ctx, output_format, as_json, utc, db_path)
    with open_db(db_path, create=False) as db:
        report = task_report(db, task_id.strip(), idle_seconds=idle_seconds())
        block = _forecast_block(db, "task", report["task_id"], output_format, utc)
    _emit(
        report,
        output_format,
        _followed(partial(formats.task_markdown, utc=utc), block, fenced=True),
        _followed(partial(formats.task_text, utc=utc), block),
    )


@report_cmd.command("phase")
@click.argument("phase_id")
@report_options
@click.pass_context
def report_phase_cmd(ctx, phase_id, output_format, as_json, utc, db_path):
    """The seed's Level 2 aggregate of PHASE_ID, with the pattern-effectiveness targets."""
    from taskmeter.analytics import formats
    from taskmeter.analytics.reports import phase_report

    output_format, utc, db_path = _chosen(ctx, output_format, as_json, utc, db_path)
    with open_db(db_path, create=False) as db:
        report = phase_report(db, phase_id.strip(), idle_seconds=idle_seconds())
        block = _forecast_block(db, "phase", report["phase_id"], output_format, utc)
    _emit(
        report,
        output_format,
        _followed(partial(formats.phase_markdown, utc=utc), block, fenced=True),
        _followed(partial(formats.phase_text, utc=utc), block),
    )


def _forecast_block(db, scope: str, record_id: str, output_format: str, utc: bool) -> list[str]:
    """The forecast block the task and phase reports show next to the seed's fields
    (docs/forecasts.md); JSON and CSV keep the seed's record: `meter forecast --json` has it."""
    if output_format not in ("table", "markdown"):
        return []
    from taskmeter.analytics import forecasts
    from taskmeter.cli.common import budget_defaults

    if scope == "task":
        return forecasts.task_block(forecasts.task_forecast(db, record_id, idle_seconds()).record)
    record = forecasts.phase_forecast(db, record_id, idle_seconds(), budget_defaults=budget_defaults())
    return forecasts.phase_block(record, lambda stored: terminal.moment(stored, utc, short=False))


def _followed(render, block: list[str], fenced: bool = False):
    """A report's text, then the forecast block (in a Markdown code block when `fenced`)."""
    if not block:
        return render
    lines = ["", "**Forecast:**", "```", *block, "```"] if fenced else ["", *block]
    return lambda report: render(report) + "\n".join(lines) + "\n"


USAGE_COLUMNS = [
    Column("Calls", "count"),
    Column("Failed", "count", drop=3),
    Column("Input", "count"),
    Column("Cache R", "count", drop=4),
    Column("Output", "count"),
    Column("Reason", "count", drop=5),
    Column("Cost", "money"),
    Column("Flags", "count", drop=2),
]


def _usage_cells(stats: dict) -> list:
    tokens = stats["tokens"]
    return [
        stats["ai_interactions"],
        stats["failed_calls"],
        tokens["input_total"],
        tokens["cache_read"],
        tokens["output_total"],
        tokens["reasoning"],
        stats["cost_usd"],
        stats["hallucination_count"],
    ]


def _usage_command(period: str, label: str, help_text: str):
    @report_cmd.command(period, help=help_text)
    @click.option("--since", type=MOMENT, help="From this time on: today, yesterday, 7d, 2026-11-01, ISO 8601.")
    @click.option("--until", type=MOMENT, help="Before this time (same forms).")
    @click.option("--task", "task_id", type=TASK, help="Only this task's calls.")
    @report_options
    @click.pass_context
    def command(ctx, since, until, task_id, output_format, as_json, utc, db_path):
        from taskmeter.analytics.periods import usage_report

        output_format, utc, db_path = _chosen(ctx, output_format, as_json, utc, db_path)
        if output_format in ("csv", "markdown"):
            raise click.UsageError(f"usage reports come as a table or JSON, not {output_format}")
        with open_db(db_path, create=False) as db:
            if task_id:
                task_id = tasks.get_task(db, task_id.strip())["id"]
            report = usage_report(db, period, since, until, utc, task_id)
        if output_format == "json":
            terminal.print_json(report)
            return
        groups = report["models"] if period == "models" else report["periods"]
        if not groups:
            terminal.info("No AI calls in this time." if since or until else "No AI calls recorded yet.")
            return
        piped = terminal.to_pipe()
        rows = []
        if period == "models":
            rows = [[model["model"], *_usage_cells(model)] for model in groups]
            columns = [Column("Model", shrink=True), *USAGE_COLUMNS]
        else:
            columns = [Column(label, "id"), Column("Model", shrink=True, drop=1), *USAGE_COLUMNS]
            for group in groups:
                rows.append([group["period"], "all" if piped else "", *_usage_cells(group)])
                for model in group["models"]:
                    # In a terminal each period shows once, its models indented; piped, every row is whole.
                    period_cell, model_cell = (group["period"], model["model"]) if piped else ("", "  " + model["model"])
                    rows.append([period_cell, model_cell, *_usage_cells(model)])
        rows.append(["Total", *([""] if period != "models" else []), *_usage_cells(report["totals"])])
        terminal.table(columns, rows, utc=utc)
        unpriced = report["totals"]["unpriced_interactions"]
        if unpriced:
            terminal.note(
                f"{unpriced} call{' has' if unpriced == 1 else 's have'} no known price and {'is' if unpriced == 1 else 'are'} not in the cost."
            )

    return command


_usage_command("hourly", "Hour", "Tokens, cost, calls, failed calls and flags per hour, with a line per model.")
_usage_command("daily", "Day", "Tokens, cost, calls, failed calls and flags per day, with a line per model.")
_usage_command("weekly", "Week of", "The daily report per week (weeks start on Monday).")
_usage_command("monthly", "Month", "The daily report per month.")
_usage_command("models", "Model", "Tokens, cost, calls, failed calls and flags per model.")


def _emit(report: dict, output_format: str, markdown, text, csv_rows: list[dict] | None = None) -> None:
    """One report in the chosen format; CSV has one row per report unless rows are given."""
    from taskmeter.analytics import formats

    if output_format == "json":
        terminal.print_json(report)
    elif output_format == "csv":
        terminal.text(formats.as_csv(csv_rows or [report]))
    elif output_format == "markdown":
        terminal.text(markdown(report))
    else:
        terminal.text(text(report))
