"""Reports: the overview, a task, a phase, usage by hour, day, week, month or model,
agent sessions and 5-hour blocks.

`meter report` and its subcommands take the same output options, in either
place: `meter report --json daily` and `meter report daily --json` are one command.
"""

from collections.abc import Callable
from functools import partial

import click

from taskmeter import terminal
from taskmeter.cli.common import MOMENT, TASK, cli, db_option, idle_seconds, utc_option
from taskmeter.team.reports import CallWindow, UsageWindow, report_source, split_text, with_developers
from taskmeter.terminal import Column
from taskmeter.timefmt import format_duration, seconds_between

TYPE_CHECKING = False
if TYPE_CHECKING:  # the report types are for the type checker: importing them costs each report's start-up
    from taskmeter.analytics.records import OverviewReport

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
            click.option(
                "--team", is_flag=True, expose_value=False, callback=_remember, help="From the team store (docs/team.md)."
            ),
            click.option("--developer", expose_value=False, callback=_remember, help="With --team: one developer's rows."),
        ]
    ):
        command = option(command)
    return command


def _remember(ctx: click.Context, param: click.Parameter, value) -> None:
    """--team and --developer, given to `meter report` or a subcommand: kept in ctx.meta, which both share."""
    if value:
        ctx.meta[param.name] = value


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
      meter report models          the same per model, dearest first, with latency
      meter report sessions        a line per agent session (Claude Code, Codex, Gemini CLI)
      meter report blocks          the 5-hour windows subscription plans count in
    Times and days are local, hours labelled with their zone (a repeated hour is two rows), unless --utc;
    --task narrows usage reports to one task. Output options go before or after the subcommand.
    """
    if ctx.invoked_subcommand is not None:
        return
    from taskmeter.analytics import formats
    from taskmeter.analytics.reports import overview_report

    output_format, _, db_path = _chosen(ctx, output_format, as_json, utc, db_path)
    with report_source(ctx.meta, db_path, reads="rollups") as db:
        report = overview_report(db)

    def table(overview: "OverviewReport") -> str:
        terminal.table(
            [
                Column("Phase", shrink=True),
                Column("Tasks", drop=5),
                Column("Tokens", "figure"),
                Column("Tokens/task", "figure", drop=3),
                # The token trend is the Level 2 headline: the last to go but the calls.
                Column("Trend", "figure", drop=1),
                Column("Calls", "figure", drop=2),
                Column("Halluc. rate", "figure", drop=4),
                Column("Cost", "figure"),
                Column("From logs", "figure", drop=7),
                Column("Complete", "figure", drop=6),
            ],
            formats.overview_rows(overview),
        )
        return ""

    def csv_rows() -> list[dict]:
        return [*report["phases"], {"phase_id": "unassigned", **report["unassigned"]}]

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
    task_id, idle = task_id.strip(), idle_seconds()
    with report_source(ctx.meta, db_path, tasks=[task_id.upper()]) as db:
        report = task_report(db, task_id, idle_seconds=idle)
        block = _forecast_block(ctx.meta, db, "task", report["task_id"], output_format, utc)
        report = with_developers(ctx.meta, report, db, idle, task_id=report["task_id"])
    _emit(
        report,
        output_format,
        _followed(partial(formats.task_markdown, utc=utc), block, fenced=True),
        split_text(_followed(partial(formats.task_text, utc=utc), block)),
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
    phase_id, idle = phase_id.strip(), idle_seconds()
    with report_source(ctx.meta, db_path, phases=[phase_id]) as db:
        report = phase_report(db, phase_id, idle_seconds=idle)
        block = _forecast_block(ctx.meta, db, "phase", report["phase_id"], output_format, utc)
        report = with_developers(ctx.meta, report, db, idle, phase_id=report["phase_id"])
    _emit(
        report,
        output_format,
        _followed(partial(formats.phase_markdown, utc=utc), block, fenced=True),
        split_text(_followed(partial(formats.phase_text, utc=utc), block)),
    )


def _forecast_block(meta: dict, db, scope: str, record_id: str, output_format: str, utc: bool) -> list[str]:
    """The forecast block the task and phase reports show next to the seed's fields
    (docs/forecasts.md); JSON and CSV keep the seed's record: `meter forecast --json` has it.
    A team report has none: forecasts are made from this meter's own approved tasks."""
    if output_format not in ("table", "markdown") or meta.get("team"):
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
    Column("Input", "count", drop=6),
    Column("Cache R", "count", drop=4),
    Column("Cache W", "count", drop=7),
    Column("Output", "count", drop=8),
    Column("Reason", "count", drop=5),
    Column("Total", "count"),
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
        tokens["cache_write"],
        tokens["output_total"],
        tokens["reasoning"],
        tokens["total"],
        stats["cost_usd"],
        stats["hallucination_count"],
    ]


def _stored_task_id(db, given: str) -> str:
    """A task's ID as stored (IDs are case-insensitive); NotFound for an unknown one."""
    from taskmeter.store.tasks import get_task  # here: only a report of one task needs it

    return get_task(db, given.strip())["id"]


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
        window = UsageWindow(since, until, task_id.strip() if task_id else None, period == "models")
        with report_source(ctx.meta, db_path, reads=window) as db:
            if task_id:
                task_id = _stored_task_id(db, task_id)
            report = usage_report(db, period, since, until, utc, task_id)

        def table(report) -> str:
            _usage_table(report, period, label, since or until, utc)
            return ""

        def markdown(report) -> str:
            from taskmeter.analytics import formats

            return formats.usage_markdown(report, label=label)

        def csv_rows() -> list[dict]:
            from taskmeter.analytics import formats

            return formats.usage_lines(report)

        _emit(report, output_format, markdown, table, csv_rows)

    return command


def _usage_table(report: dict, period: str, label: str, window: bool, utc: bool) -> None:
    groups = report["models"] if period == "models" else report["periods"]
    if not groups:
        terminal.info("No AI calls in this time." if window else "No AI calls recorded yet.")
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
    if period == "models":
        _latency_lines(groups)
    unpriced = report["totals"]["unpriced_interactions"]
    if unpriced:
        terminal.note(
            f"{unpriced} call{' has' if unpriced == 1 else 's have'} no known price and {'is' if unpriced == 1 else 'are'} not in the cost."
        )


def _latency_lines(models: list[dict]) -> None:
    """A line per model timed: its p50 and p95 to the first token and to the end."""
    from taskmeter.printable import clip
    from taskmeter.timefmt import format_seconds as seconds

    timed = [model for model in models if model["latency"]["timed_calls"]]
    if not timed:
        return
    terminal.note("Latency p50 / p95: first token; whole answer")
    width = min(LATENCY_MODEL_WIDTH, max(len(model["model"]) for model in timed))
    for model in timed:
        latency, calls = model["latency"], model["latency"]["timed_calls"]
        terminal.note(
            f"  {clip(model['model'], width):<{width}}  {seconds(latency['first_token_p50_seconds'])} / "
            f"{seconds(latency['first_token_p95_seconds'])}; {seconds(latency['total_p50_seconds'])} / "
            f"{seconds(latency['total_p95_seconds'])}  ({calls:,} call{'s' if calls != 1 else ''})"
        )


# A latency line keeps this much of a model's name: it fits 80 columns.
LATENCY_MODEL_WIDTH = 30


_usage_command("hourly", "Hour", "Tokens, cost, calls, failed calls and flags per hour, with a line per model.")
_usage_command("daily", "Day", "Tokens, cost, calls, failed calls and flags per day, with a line per model.")
_usage_command("weekly", "Week of", "The daily report per week (weeks start on Monday).")
_usage_command("monthly", "Month", "The daily report per month.")
_usage_command("models", "Model", "Tokens, cost, calls, failed calls and flags per model, dearest first, with latency.")


@report_cmd.command("sessions")
@click.option("--task", "task_id", type=TASK, help="Only the sessions that worked on this task, and only those calls.")
@click.option("--since", type=MOMENT, help="From this time on: today, yesterday, 7d, 2026-11-01, ISO 8601.")
@click.option("--until", type=MOMENT, help="Before this time (same forms).")
@report_options
@click.pass_context
def report_sessions_cmd(ctx, task_id, since, until, output_format, as_json, utc, db_path):
    """A line per agent session (Claude Code, Codex, Gemini CLI): its tasks, time, calls, tokens and cost.

    A session's ID goes to `meter log --session ID`.
    """
    from taskmeter.analytics.windows import session_report

    output_format, utc, db_path = _chosen(ctx, output_format, as_json, utc, db_path)
    with report_source(ctx.meta, db_path, reads=CallWindow(since, until, task_id and task_id.strip(), None, True)) as db:
        if task_id:
            task_id = _stored_task_id(db, task_id)
        report = session_report(db, since, until, task_id)

    def table(report) -> str:
        if not report["sessions"]:
            terminal.info("No agent sessions in this time." if since or until or task_id else "No agent sessions recorded yet.")
            return ""
        piped = terminal.to_pipe()
        rows = [
            [
                session["session_id"] if piped else session["session_id"][:SESSION_SHOWN],
                session["agent"],
                ", ".join(task or "unassigned" for task in session["task_ids"]),
                session["first_call_at"],
                format_duration(session["duration_seconds"]) or "0s",
                session["ai_interactions"],
                session["failed_calls"],
                session["tokens"]["total"],
                session["cost_usd"],
            ]
            for session in report["sessions"]
        ]
        totals = report["totals"]
        rows.append(["Total", "", "", None, "", totals["ai_interactions"], totals["failed_calls"], totals["tokens"]["total"], totals["cost_usd"]])  # fmt: skip
        columns = [
            Column("Session", "id"),
            Column("Agent", drop=4),
            Column("Tasks", shrink=True),
            Column("Started", "time"),
            Column("Span", "figure", drop=3),
            Column("Calls", "count"),
            Column("Failed", "count", drop=2),
            Column("Tokens", "count"),
            Column("Cost", "money"),
        ]
        terminal.table(columns, rows, utc=utc)
        return ""

    def csv_rows() -> list[dict]:
        from taskmeter.analytics import formats

        return formats.session_lines(report)

    _emit(report, output_format, partial(_lines_markdown, lines=csv_rows, title="Agent sessions", utc=utc), table, csv_rows)


# A session's ID as a terminal shows it: enough for `meter log --session`, which takes a unique beginning.
SESSION_SHOWN = 8


@report_cmd.command("blocks")
@click.option("--since", type=MOMENT, help="From this time on: today, yesterday, 7d, 2026-11-01, ISO 8601.")
@click.option("--until", type=MOMENT, help="Before this time (same forms).")
@click.option("--provider", help="Only this provider's calls (anthropic, openai, ...): a plan counts its own.")
@report_options
@click.pass_context
def report_blocks_cmd(ctx, since, until, provider, output_format, as_json, utc, db_path):
    """The 5-hour usage windows subscription plans count in, as ccusage finds them.

    Each block's calls, tokens and cost; the active one's time left, burn rate and
    projection. A block starts at its first call's UTC hour; a call more than 5 hours
    after its start, or after the call before it, starts the next.
    """
    from taskmeter.analytics.windows import block_report

    output_format, utc, db_path = _chosen(ctx, output_format, as_json, utc, db_path)
    provider = provider.strip().lower() if provider else None
    with report_source(ctx.meta, db_path, reads=CallWindow(since, until, None, provider, False)) as db:
        report = block_report(db, since, until, provider)

    def table(report) -> str:
        if not report["blocks"]:
            terminal.info("No AI calls in this time." if since or until or provider else "No AI calls recorded yet.")
            return ""
        rows = []
        for block in report["blocks"]:
            burn, projected = block["burn_rate"], block["projected"]
            if block["gap"]:
                state = f"gap of {format_duration(seconds_between(block['start'], block['end']))}"
            elif block["active"]:
                state = f"{format_duration(block['time_left_seconds'])} left"  # the active block
            else:
                state = "done"
            rows.append(
                [
                    block["start"],
                    state,
                    block["ai_interactions"] + block["failed_calls"] if not block["gap"] else None,
                    block["tokens"]["total"],
                    block["cost_usd"],
                    f"{terminal.money(burn['cost_per_hour_usd'])}/h" if burn else terminal.MISSING,
                    f"{burn['tokens_per_minute']:,.0f}" if burn else terminal.MISSING,
                    terminal.money(projected["cost_usd"]) if projected else terminal.MISSING,
                ]
            )
        columns = [
            Column("Block start", "time"),
            Column("State", shrink=True),
            Column("Calls", "count", drop=3),
            Column("Tokens", "count"),
            Column("Cost", "money"),
            Column("Burn", "figure", drop=1),
            Column("Tokens/min", "figure", drop=4),
            Column("Projected", "figure", drop=2),
        ]
        terminal.table(columns, rows, utc=utc)
        return ""

    def csv_rows() -> list[dict]:
        from taskmeter.analytics import formats

        return formats.block_lines(report)

    _emit(report, output_format, partial(_lines_markdown, lines=csv_rows, title="5-hour blocks", utc=utc), table, csv_rows)


def _lines_markdown(report: dict, lines: Callable[[], list[dict]], title: str, utc: bool) -> str:
    from taskmeter.analytics import formats

    return formats.lines_markdown(lines(), title, utc)


def _emit(report: dict, output_format: str, markdown, text, csv_rows: Callable[[], list[dict]] | None = None) -> None:
    """One report in the chosen format; CSV has one row per report unless `csv_rows` gives rows
    (made only for CSV: thousands of lines for an hourly report)."""
    if output_format == "json":
        terminal.print_json(report)
    elif output_format == "csv":
        from taskmeter.analytics import formats  # here: a table or JSON needs none of it

        terminal.text(formats.as_csv(csv_rows() if csv_rows else [report]))
    elif output_format == "markdown":
        terminal.text(markdown(report))
    else:
        terminal.text(text(report))
