"""The `meter` command line: parse arguments, call the domain code, terminal.

Every failure a user can cause ends as one line on stderr and exit status 1.
"""

import contextlib
import ipaddress
import json
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator

import click

from taskmeter import __version__, terminal
from taskmeter.errors import MeterError
from taskmeter.store import db as store_db
from taskmeter.store import interactions, proxies, tasks
from taskmeter.timefmt import display, format_duration, now, parse_duration, parse_user_timestamp, seconds_between, to_stored


class DurationType(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_duration(value)
        except MeterError as exc:
            self.fail(str(exc), param, ctx)


class TimestampType(click.ParamType):
    name = "ISO8601"

    def convert(self, value, param, ctx):
        try:
            return parse_user_timestamp(value)
        except MeterError as exc:
            self.fail(str(exc), param, ctx)


class PercentType(click.ParamType):
    name = "PERCENT"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        text = str(value).strip().removesuffix("%")
        try:
            number = float(text)
        except ValueError:
            self.fail(f"{value!r} is not a percentage such as 87 or 87%", param, ctx)
        if not 0 <= number <= 100:
            self.fail(f"{value!r} is outside 0-100%", param, ctx)
        return number


DURATION, TIMESTAMP, PERCENT = DurationType(), TimestampType(), PercentType()
YES_NO = click.Choice(["yes", "no"], case_sensitive=False)

db_option = click.option(
    "--db",
    "db_path",
    envvar=store_db.ENV_VAR,
    type=click.Path(dir_okay=False),
    help=f"Database file (default: ${store_db.ENV_VAR}, else {store_db.default_path()}).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@contextlib.contextmanager
def open_db(path: str | None) -> Iterator[sqlite3.Connection]:
    connection = store_db.connect(path)
    try:
        yield connection
    except sqlite3.Error as exc:
        raise store_db.describe_sqlite_error(exc, store_db.resolve_path(path)) from None
    finally:
        connection.close()


# How often `meter log --follow` looks for new calls: a short read transaction.
FOLLOW_POLL_SECONDS = 0.25


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="meter")
def cli() -> None:
    """Meter AI calls per task: tokens, cost, context switches and hallucinations.

    \b
    Typical flow:
      meter set-task P1-010 --estimate 1h30m   # what you are working on
      meter mark initial                        # milestones as they happen
      meter log                                 # recent AI calls with their IDs
      meter flag last --note "invented API"     # a hallucination

    The database is one SQLite file; --db or $METER_DB choose another.
    """


# ---------------------------------------------------------------- tasks


@cli.command("set-task")
@click.argument("task_id", required=False)
@click.option("--title", help="A short title for the task.")
@click.option("--estimate", type=DURATION, help="Estimated duration, e.g. 1h30m, 90m, 1.5h.")
@click.option("--phase", help="Phase ID (default: the part before the first dash, P1 for P1-010).")
@click.option("--none", "clear", is_flag=True, help="Clear the current task; calls go to 'unassigned'.")
@db_option
def set_task_cmd(task_id, title, estimate, phase, clear, db_path):
    """Make TASK_ID the current task; AI calls are attributed to it from the next call on.

    The task (and its phase) is created on first use and its BEGIN_TIMESTAMP recorded.
    Switching from another task records a context switch.
    """
    if clear == bool(task_id):
        raise click.UsageError("give a task ID, or --none to clear the current task")
    if clear and (title or estimate or phase):
        raise click.UsageError("--none takes no other options")
    with open_db(db_path) as db:
        if clear:
            previous = tasks.clear_task(db)
            terminal.info(f"No current task (was {previous})." if previous else "No current task.")
            return
        result = tasks.set_task(db, task_id, title=title, estimate_seconds=estimate, phase_id=phase)
        task = tasks.get_task(db, result.task_id)
    if result.unchanged:
        terminal.info(f"{result.task_id} is already the current task.")
        return
    details = ["created" if result.created else None, f"began {display(task['begin_at'])}" if result.began else None]
    details = [d for d in details if d]
    line = f"Current task: {result.task_id}"
    if details:
        line += f" ({', '.join(details)})"
    if result.previous:
        line += f"; switched from {result.previous}"
    terminal.info(line + ".")


# Options of `meter task` and the columns they edit.
_TASK_OPTIONS = {
    "title": "title",
    "estimate": "estimate_seconds",
    "projected": "projected_outcome",
    "actual": "actual_outcome",
    "projection_met": "projection_met",
    "success": "success",
    "coverage_target": "coverage_target",
    "coverage_actual": "coverage_actual",
    "perf_target": "performance_target",
    "perf_actual": "performance_actual",
    "perf_met": "performance_met",
    "docs": "doc_completeness",
    "blockers": "blockers",
    "lessons": "lessons",
}


def _option_name(key: str) -> str:
    return key.replace("_", "-")


def _edits(options: dict, columns: dict, unset: tuple[str, ...]) -> dict:
    values = {}
    for key, column in columns.items():
        value = options.get(key)
        if value is None:
            continue
        if key.endswith("_met"):
            value = 1 if value.lower() == "yes" else 0
        values[column] = value
    names = {_option_name(key): column for key, column in columns.items()}
    for name in unset:
        if name not in names:
            raise MeterError(f"cannot unset {name!r}: use one of {', '.join(names)}")
        if names[name] in values:
            raise MeterError(f"--{name} and --unset {name} contradict each other")
        values[names[name]] = None
    return values


@cli.command("task")
@click.argument("task_id")
@click.option("--title", help="Task title.")
@click.option("--phase", help="Move the task to this phase.")
@click.option("--estimate", type=DURATION, help="ESTIMATED_DURATION, e.g. 1h30m.")
@click.option("--projected", help="PROJECTED_OUTCOME: the expected deliverable.")
@click.option("--actual", help="ACTUAL_OUTCOME: what was delivered.")
@click.option("--projection-met", type=YES_NO, help="Did the projected outcome materialise (THEORY_ACCURACY)?")
@click.option("--success", type=click.Choice(tasks.SUCCESS_VALUES), help="SUCCESS_CRITERIA: pass, pending or fail.")
@click.option("--coverage-target", type=PERCENT, help="TEST_COVERAGE_TARGET in %.")
@click.option("--coverage-actual", type=PERCENT, help="TEST_COVERAGE_ACTUAL in %.")
@click.option("--perf-target", help="PERFORMANCE_TARGET, e.g. '<50ms pattern match'.")
@click.option("--perf-actual", help="PERFORMANCE_ACTUAL, e.g. '47.2ms'.")
@click.option("--perf-met", type=YES_NO, help="Was the performance target met?")
@click.option("--docs", type=PERCENT, help="DOC_COMPLETENESS in %.")
@click.option("--blockers", help="BLOCKERS_ENCOUNTERED.")
@click.option("--lessons", help="LESSONS_LEARNED.")
@click.option("--unset", multiple=True, metavar="FIELD", help="Clear a field (option name, e.g. --unset estimate).")
@json_option
@db_option
def task_cmd(task_id, phase, unset, as_json, db_path, **options):
    """View TASK_ID's execution log, or edit the Level 1 fields that are not measured automatically."""
    from taskmeter.analytics import formats
    from taskmeter.analytics.reports import task_report

    values = _edits(options, _TASK_OPTIONS, unset)
    with open_db(db_path) as db:
        task = tasks.get_task(db, task_id.strip())
        if values or phase:
            tasks.update_task(db, task["id"], values, phase_id=phase)
        report = task_report(db, task["id"])
    if as_json:
        terminal.print_json(report)
        return
    click.echo(formats.task_text(report), nl=False)


@cli.command("mark")
@click.argument("milestone", type=click.Choice(["initial", "tests", "validated", "approved"]))
@click.argument("task_id", required=False)
@click.option("--at", type=TIMESTAMP, help="When it happened (ISO 8601 with zone); default now.")
@click.option("--force", is_flag=True, help="Record even if out of order or already recorded.")
@click.option("--note", help="A note kept with the milestone.")
@db_option
def mark_cmd(milestone, task_id, at, force, note, db_path):
    """Record a milestone of TASK_ID (default: the current task).

    \b
    initial    INITIAL_COMPLETION_TIMESTAMP  first version done
    tests      TESTS_COMPLETION_TIMESTAMP    tests pass
    validated  VALIDATION_TIMESTAMP          validation complete
    approved   FINAL_APPROVAL_TIMESTAMP      approved for merge
    """
    with open_db(db_path) as db:
        recorded_task, stamp = tasks.mark(db, task_id, milestone, at=at, force=force, note=note)
    terminal.info(f"{recorded_task}: {milestone} at {display(stamp)}.")


@cli.command("iteration")
@click.argument("task_id", required=False)
@click.option("--note", help="What had to be redone.")
@click.option("--at", type=TIMESTAMP, help="When (ISO 8601 with zone); default now.")
@db_option
def iteration_cmd(task_id, note, at, db_path):
    """Record a retry or rework of TASK_ID (default: the current task)."""
    with open_db(db_path) as db:
        recorded_task, count = tasks.add_iteration(db, task_id, at=at, note=note)
    terminal.info(f"{recorded_task}: iteration {count} recorded.")


@cli.command("tasks")
@click.option("--phase", help="Only this phase's tasks.")
@json_option
@db_option
def tasks_cmd(phase, as_json, db_path):
    """List tasks with their measured totals."""
    with open_db(db_path) as db:
        rows = tasks.list_tasks(db, phase)
        current = tasks.current_task(db)
    if as_json:
        terminal.print_json(rows)
        return
    if not rows:
        terminal.info("No tasks yet: start one with `meter set-task P1-001`.")
        return
    current_id = current.task_id.lower() if current else None
    terminal.table(
        ["", "Task", "Phase", "Title", "Began", "Estimate", "Status", "Iter", "Calls", "Tokens", "Flags"],
        [
            (
                "*" if row["id"].lower() == current_id else "",
                row["id"],
                row["phase_id"],
                row["title"],
                display(row["begin_at"]),
                format_duration(row["estimate_seconds"]),
                "approved" if row["final_approval_at"] else "open",
                row["iterations"],
                row["interactions"] or 0,
                terminal.number(row["tokens"]),
                row["flagged"] or 0,
            )
            for row in rows
        ],
    )


# ---------------------------------------------------------------- phases

_PHASE_OPTIONS = {
    "title": "title",
    "deliverables": "projected_deliverables",
    "completed": "deliverables_completed",
    "blockers": "critical_blockers",
    "patterns": "patterns_extracted",
    "debt": "technical_debt",
    "surprise": "biggest_surprise",
    "win": "biggest_win",
    "challenge": "biggest_challenge",
    "improvements": "theory_improvements",
}


@cli.command("phase")
@click.argument("phase_id")
@click.option("--title", help="Phase title.")
@click.option("--deliverables", help="PROJECTED_DELIVERABLES.")
@click.option("--completed", help="DELIVERABLES_COMPLETED.")
@click.option("--blockers", help="CRITICAL_BLOCKERS.")
@click.option("--patterns", help="PATTERNS_EXTRACTED.")
@click.option("--debt", help="TECHNICAL_DEBT_INCURRED.")
@click.option("--surprise", help="BIGGEST_SURPRISE.")
@click.option("--win", help="BIGGEST_WIN.")
@click.option("--challenge", help="BIGGEST_CHALLENGE.")
@click.option("--improvements", help="THEORY_IMPROVEMENTS.")
@click.option(
    "--mark",
    "milestone",
    type=click.Choice(list(tasks.PHASE_MILESTONES)),
    help="Record a phase timestamp (PHASE_BEGIN ... PHASE_FINAL_APPROVAL).",
)
@click.option("--at", type=TIMESTAMP, help="With --mark: when (ISO 8601 with zone); default now.")
@click.option("--force", is_flag=True, help="With --mark: record even if out of order.")
@click.option("--unset", multiple=True, metavar="FIELD", help="Clear a field (option name, e.g. --unset debt).")
@json_option
@db_option
def phase_cmd(phase_id, milestone, at, force, unset, as_json, db_path, **options):
    """View PHASE_ID's execution log, or edit its Level 2 inputs and meta-learning fields."""
    from taskmeter.analytics import formats
    from taskmeter.analytics.reports import phase_report

    if (at or force) and not milestone:
        raise click.UsageError("--at and --force go with --mark")
    values = _edits(options, _PHASE_OPTIONS, unset)
    with open_db(db_path) as db:
        phase = tasks.get_phase(db, phase_id.strip())
        if values:
            tasks.update_phase(db, phase["id"], values)
        if milestone:
            tasks.mark_phase(db, phase["id"], milestone, at=at, force=force)
        report = phase_report(db, phase["id"])
    if as_json:
        terminal.print_json(report)
        return
    click.echo(formats.phase_text(report), nl=False)


@cli.command("phases")
@json_option
@db_option
def phases_cmd(as_json, db_path):
    """List phases."""
    with open_db(db_path) as db:
        rows = tasks.list_phases(db)
        counts = {row["id"]: 0 for row in rows}
        for row in tasks.list_tasks(db):
            counts[row["phase_id"]] = counts.get(row["phase_id"], 0) + 1
    if as_json:
        terminal.print_json([{**row, "task_count": counts[row["id"]]} for row in rows])
        return
    terminal.table(
        ["Phase", "Title", "Tasks", "Began", "Approved"],
        [(r["id"], r["title"], counts[r["id"]], display(r["begin_at"]), display(r["final_approval_at"])) for r in rows],
    )


# ---------------------------------------------------------------- status, log, flags


@cli.command("status")
@json_option
@db_option
def status_cmd(as_json, db_path):
    """The current task, its time and tokens so far, and whether a proxy is metering."""
    from taskmeter import lifecycle
    from taskmeter.analytics.reports import task_report
    from taskmeter.handover import callfile

    with open_db(db_path) as db:
        current = tasks.current_task(db)
        view = task_report(db, current.task_id) if current else None
        running = proxies.running(db)
        latest = interactions.recent(db, limit=1)
    database = store_db.resolve_path(db_path)
    state = {
        "database": str(database),
        "current_task": current.task_id if current else None,
        "current_since": current.since if current else None,
        "current_for_seconds": seconds_between(current.since, to_stored(now())) if current else None,
        "task": view,
        "proxies": running,
        "last_interaction_at": latest[0]["started_at"] if latest else None,
        # Calls not in the database: waiting in the spool, or kept apart for a person.
        "spooled_calls": callfile.count_lines(callfile.spool_path(database)),
        "quarantined_calls": callfile.count_lines(callfile.quarantine_path(database)),
        "quarantine": str(callfile.quarantine_path(database)),
        # Set when `meter start` runs the proxy in the background.
        "pidfile": str(lifecycle.pid_path(database)) if lifecycle.pid_path(database).exists() else None,
        "log": str(lifecycle.log_path(database)) if lifecycle.pid_path(database).exists() else None,
    }
    if as_json:
        terminal.print_json(state)
        return
    if current is None:
        terminal.info("No current task: AI calls are recorded as unassigned. Start one with `meter set-task ID`.")
    else:
        terminal.fields(
            [
                ("Current task", f"{view['task_id']}" + (f" — {view['title']}" if view["title"] else "")),
                ("Current for", format_duration(state["current_for_seconds"])),
                ("Elapsed since begin", format_duration(view["actual_duration"])),
                ("Estimate", format_duration(view["estimated_duration"])),
                ("Tokens so far", terminal.number(view["token_count_used"])),
                ("AI interactions", view["ai_interactions"]),
                ("Hallucinations", view["hallucination_count"]),
            ]
        )
    if running:
        for proxy in running:
            terminal.info(f"Proxy running: pid {proxy['pid']} on {proxy['listen']} since {display(proxy['started_at'])}")
            if state["log"]:
                terminal.info(f"  in the background (`meter stop`); pidfile {state['pidfile']}, log {state['log']}")
            if proxy["recording"] != proxies.RECORDING:
                terminal.warn(f"NOT RECORDING: {proxy['recording']}")
            if proxy["dropped_calls"]:
                terminal.warn(f"{proxy['dropped_calls']} calls were lost: neither the database nor the spool could take them")
    else:
        terminal.info("No proxy is running on this database: start one with `meter proxy`.")
    if state["spooled_calls"]:
        terminal.info(f"{state['spooled_calls']} calls wait in the spool until the database can take them")
    if state["quarantined_calls"]:
        terminal.warn(f"{state['quarantined_calls']} calls could not be stored and are kept in {state['quarantine']}")
    terminal.info(f"Database: {state['database']}")


@cli.command("log")
@click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(min=1), help="How many calls.")
@click.option("--task", "task_id", help="Only this task's calls.")
@click.option("-f", "--follow", is_flag=True, help="Then print a line for each call as it is recorded, until Ctrl-C.")
@json_option
@db_option
def log_cmd(limit, task_id, follow, as_json, db_path):
    """Recent AI calls, newest first, with IDs to use with `meter flag`."""
    if follow and as_json:
        raise click.UsageError("--follow prints lines; use it without --json")
    with open_db(db_path) as db:
        if task_id:
            task_id = tasks.get_task(db, task_id.strip())["id"]
        if follow:
            _follow(db, limit, task_id)
            return
        rows = interactions.recent(db, limit=limit, task_id=task_id)
    if as_json:
        terminal.print_json(rows)
        return
    if not rows:
        terminal.info("No AI calls recorded yet.")
        return
    terminal.table(
        ["ID", "Started", "Task", "Model", "In", "Cache R", "Cache W", "Out", "Reason", "Source", "Status", "Flag"],
        [
            (
                row["id"],
                display(row["started_at"]),
                row["task_id"] or "unassigned",
                row["model"],
                terminal.number(row["input_total"]),
                terminal.number(row["cache_read"]),
                terminal.number(row["cache_write"]),
                terminal.number(row["output_total"]),
                terminal.number(row["reasoning"]),
                row["usage_source"],
                _status_cell(row),
                "⚑" if row["flagged_at"] else "",
            )
            for row in rows
        ],
    )


def _follow(db: sqlite3.Connection, limit: int, task_id: str | None) -> None:
    """The last `limit` calls, oldest first, then each new one as the recorder
    stores it: the proxy's live view, from any terminal."""
    from taskmeter.callline import call_line

    db.execute("BEGIN")  # one snapshot for both: no call missed or shown twice
    seen = db.execute("SELECT coalesce(max(rowid), 0) FROM interactions").fetchone()[0]
    earlier = interactions.recent(db, limit=limit, task_id=task_id)
    db.execute("COMMIT")
    for row in reversed(earlier):
        click.echo(call_line(row))
    try:
        while True:
            time.sleep(FOLLOW_POLL_SECONDS)
            for row in interactions.stored_after(db, seen, task_id):
                seen = row["rowid"]
                click.echo(call_line(row))
    except KeyboardInterrupt:
        return


def _status_cell(row: dict) -> str:
    status = str(row["http_status"]) if row["http_status"] is not None else ""
    if row["outcome"] and row["outcome"] != "complete":
        status = f"{status} {row['outcome']}".strip()
    return status


@cli.command("flag")
@click.argument("interaction")
@click.option("--note", help="What was hallucinated, e.g. 'invented API'.")
@db_option
def flag_cmd(interaction, note, db_path):
    """Flag an AI call as a hallucination, by ID, unique ID prefix, or `last`."""
    with open_db(db_path) as db:
        interaction_id, already = interactions.flag(db, interaction, note)
    if already:
        terminal.info(f"{interaction_id} was already flagged" + ("; note updated." if note is not None else "."))
    else:
        terminal.info(f"Flagged {interaction_id} as a hallucination.")


@cli.command("unflag")
@click.argument("interaction")
@db_option
def unflag_cmd(interaction, db_path):
    """Remove the hallucination flag from an AI call."""
    with open_db(db_path) as db:
        interaction_id = interactions.unflag(db, interaction)
    terminal.info(f"Unflagged {interaction_id}.")


# ---------------------------------------------------------------- reports

FORMAT = click.Choice(["table", "markdown", "json", "csv"])
format_option = click.option(
    "--format",
    "output_format",
    type=FORMAT,
    default="table",
    show_default=True,
    help="markdown reproduces the seed's execution-log blocks; json uses its field names.",
)


@cli.group("report", invoke_without_command=True)
@format_option
@db_option
@click.pass_context
def report_cmd(ctx, output_format, db_path):
    """Execution reports: `meter report` gives one line per phase with the trend;
    `meter report task ID` and `meter report phase ID` give the seed's Level 1 and 2 logs."""
    if ctx.invoked_subcommand is not None:
        return
    from taskmeter.analytics import formats
    from taskmeter.analytics.reports import overview_report

    with open_db(db_path) as db:
        report = overview_report(db)

    def table(overview: dict) -> str:
        terminal.table(
            ["Phase", "Tasks", "Tokens", "Tokens/task", "Trend", "Calls", "Halluc. rate", "Cost", "Complete"],
            formats.overview_rows(overview),
        )
        return ""

    csv_rows = [*report["phases"], {"phase_id": "unassigned", **report["unassigned"]}]
    _emit(report, output_format, formats.overview_markdown, table, csv_rows)


@report_cmd.command("task")
@click.argument("task_id")
@format_option
@db_option
def report_task_cmd(task_id, output_format, db_path):
    """The seed's Level 1 execution log of TASK_ID, with cost and token detail."""
    from taskmeter.analytics import formats
    from taskmeter.analytics.reports import task_report

    with open_db(db_path) as db:
        report = task_report(db, task_id.strip())
    _emit(report, output_format, formats.task_markdown, formats.task_text)


@report_cmd.command("phase")
@click.argument("phase_id")
@format_option
@db_option
def report_phase_cmd(phase_id, output_format, db_path):
    """The seed's Level 2 aggregate of PHASE_ID, with the pattern-effectiveness targets."""
    from taskmeter.analytics import formats
    from taskmeter.analytics.reports import phase_report

    with open_db(db_path) as db:
        report = phase_report(db, phase_id.strip())
    _emit(report, output_format, formats.phase_markdown, formats.phase_text)


def _emit(report: dict, output_format: str, markdown, text, csv_rows: list[dict] | None = None) -> None:
    """One report in the chosen format; CSV has one row per report unless rows are given."""
    from taskmeter.analytics import formats

    if output_format == "json":
        click.echo(formats.as_json(report), nl=False)
    elif output_format == "csv":
        click.echo(formats.as_csv(csv_rows or [report]), nl=False)
    elif output_format == "markdown":
        click.echo(markdown(report), nl=False)
    else:
        click.echo(text(report), nl=False)


@cli.command("retag")
@click.argument("interactions_", metavar="[ID]...", nargs=-1)
@click.option("--to", "to_task", help="The task to move them to.")
@click.option("--unassign", is_flag=True, help="Move them to the unassigned bucket instead.")
@click.option("--between", nargs=2, metavar="ID ID", help="Every interaction from the first ID to the second, inclusive.")
@click.option("--since", type=TIMESTAMP, help="Every interaction started at or after this time ...")
@click.option("--until", type=TIMESTAMP, help="... and before this one (ISO 8601 with zone).")
@db_option
def retag_cmd(interactions_, to_task, unassign, between, since, until, db_path):
    """Move AI calls to another task (or unassign them); reports follow at once.

    \b
      meter retag 05j6e2pw21jh 05j6e2q0 --to P1-011
      meter retag --between 05j6e2pw 05j6e3aa --to P1-011
      meter retag --since 2025-10-04T09:00:00Z --until 2025-10-04T10:00:00Z --to P1-011
    """
    from taskmeter.store.calls import retag

    if bool(to_task) == unassign:
        raise click.UsageError("give --to TASK, or --unassign")
    chosen = [bool(interactions_), bool(between), bool(since or until)]
    if sum(chosen) != 1:
        raise click.UsageError("choose the interactions one way: IDs, --between, or --since/--until")
    if (since is None) != (until is None):
        raise click.UsageError("--since and --until go together")
    if to_task:
        to_task = tasks.validate_task_id(to_task)
    window = (to_stored(since), to_stored(until)) if since else None
    with open_db(db_path) as db:
        with store_db.write_transaction(db):
            ids = interactions.select_ids(db, list(interactions_), between, window)
            if not ids:
                raise MeterError("no interactions match")
            moved = retag(db, ids, to_task)
    terminal.info(f"Moved {moved} interaction{'s' if moved != 1 else ''} to {to_task or 'unassigned'}.")


# ---------------------------------------------------------------- the proxy

config_option = click.option(
    "--config",
    "config_path",
    envvar="METER_CONFIG",
    type=click.Path(dir_okay=False),
    help="Settings file (default: $METER_CONFIG, else the user config folder's config.toml).",
)


@cli.command("proxy")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (default from config: 8877; 0 picks a free one).")
@click.option("--host", help="Address to listen on (default 127.0.0.1; anything else exposes the meter to your network).")
@click.option(
    "--allow-from",
    "allow_from",
    multiple=True,
    metavar="CIDR",
    help="Clients beyond loopback that may also use HTTPS-proxy mode (default: the gateway only). Repeatable.",
)
@click.option("--quiet", is_flag=True, help="No line per call (and no summary at the end) on standard output.")
@config_option
@db_option
def proxy_cmd(port, host, allow_from, quiet, config_path, db_path):
    """Run the metering proxy in the foreground until Ctrl-C.

    \b
    One port serves two ways:
      base-URL gateway   OPENAI_BASE_URL=http://127.0.0.1:8877/openai/v1, /anthropic, /gemini, ...
                         with /t/TASK/ in front to attribute a client's calls to TASK
      HTTPS proxy        HTTPS_PROXY=http://127.0.0.1:8877 plus the meter's CA
    `eval "$(meter env)"` sets both for a shell; `meter run -- CMD` for one command.
    """
    from taskmeter.config import load_settings
    from taskmeter.proxy.runner import run_proxy

    def proxy_settings():
        """The config file's settings with this command line's overrides: at start, and on reload."""
        settings = load_settings(config_path)
        if allow_from:
            settings = settings.model_copy(update={"proxy": settings.proxy.model_copy(update={"allow_from": list(allow_from)})})
            settings.trusted_networks()  # a malformed CIDR fails here
        return settings

    settings = proxy_settings()
    path = store_db.resolve_path(db_path)
    with open_db(path) as db:  # a bad database fails here, before listening
        running = proxies.running(db)
    if running:
        other = running[0]
        raise MeterError(
            f"a meter proxy already records to {path} (pid {other['pid']} on {other['listen']}): "
            "point clients at it (`meter env`), stop it first, or give this one another --db"
        )
    listen_host = host or settings.proxy.listen_host
    listen_port = settings.proxy.port if port is None else port
    if not ipaddress.ip_address(socket.gethostbyname(listen_host)).is_loopback and not settings.proxy.allow_from:
        click.echo(
            f"meter: warning: listening on {listen_host}: clients not on loopback may use only the gateway to your "
            "upstreams (no HTTPS_PROXY, no other hosts); --allow-from CIDR lets a network do more",
            err=True,
        )

    def ready(bound_host: str, bound_port: int) -> None:
        origin = f"http://{bound_host}:{bound_port}"
        terminal.info(f"taskmeter proxy listening on {bound_host}:{bound_port}, recording to {path}")
        terminal.info(f"  gateway: {origin}/openai/v1  {origin}/anthropic  {origin}/gemini  (see `meter env`)")
        terminal.info(f"  proxy:   HTTPS_PROXY={origin} with the CA in {settings.confdir}")
        sys.stdout.flush()

    run_proxy(settings, path, listen_host, listen_port, ready, quiet, reload_settings=proxy_settings)


@cli.command("start")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (default from config: 8877).")
@config_option
@db_option
def start_cmd(port, config_path, db_path):
    """Run the metering proxy in the background (log and pidfile in the user state folder)."""
    from taskmeter import lifecycle

    path = store_db.resolve_path(db_path)
    args = (["--port", str(port)] if port is not None else []) + (["--config", config_path] if config_path else [])
    proxy = lifecycle.start(path, args)
    terminal.info(f"meter proxy started: pid {proxy['pid']} on {proxy['listen']}, recording to {path}")
    terminal.info(f"log: {lifecycle.log_path(path)}   stop it with `meter stop`")


@cli.command("stop")
@config_option
@db_option
def stop_cmd(config_path, db_path):
    """Stop the proxy recording to the database, as Ctrl-C would: calls in flight may finish."""
    from taskmeter import lifecycle
    from taskmeter.config import load_settings

    path = store_db.resolve_path(db_path)
    pid = lifecycle.stop(path, timeout=load_settings(config_path).proxy.shutdown_grace_seconds + 5)
    terminal.info(f"meter proxy (pid {pid}) stopped" if pid else f"no meter proxy records to {path}")


@cli.command("doctor")
@config_option
@db_option
def doctor_cmd(config_path, db_path):
    """Check, one line each, that the meter can meter this shell's AI calls; exit 1 if not."""
    from taskmeter.doctor import run_checks

    checks = run_checks(store_db.resolve_path(db_path), config_path, dict(os.environ))
    for check in checks:
        terminal.info(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<9} {check.detail}")
    if not all(check.ok for check in checks):
        sys.exit(1)


def _listen_address(db_path, settings) -> str:
    with open_db(db_path) as db:
        running = proxies.running(db)
    if running:
        return running[-1]["listen"]
    terminal.err_console.print(
        f"# meter: no proxy is running on this database yet; using the configured port {settings.proxy.port}",
        markup=False,
    )
    return f"{settings.proxy.listen_host}:{settings.proxy.port}"


@cli.command("env")
@click.option("--shell", type=click.Choice(["sh", "fish", "powershell"]), default="sh", show_default=True)
@click.option("--task", "task_id", help="Attribute the calls of clients using these variables to TASK.")
@click.option(
    "--https-proxy",
    "https_proxy",
    is_flag=True,
    help="Also HTTPS_PROXY and the meter's CA bundle, for clients without a base URL setting (every client "
    "of the shell obeys them, and fails while the meter is down).",
)
@click.option("--unset", is_flag=True, help="Print the lines that undo `meter env` (with or without --https-proxy).")
@config_option
@db_option
def env_cmd(shell, task_id, https_proxy, unset, config_path, db_path):
    """Print the variables that point AI clients at the running proxy.

    \b
    Use: eval "$(meter env)"          (fish: meter env --shell fish | source)
    Undo: eval "$(meter env --unset)"
    By default only the base-URL variables (OPENAI_BASE_URL, ANTHROPIC_BASE_URL, ...),
    which AI clients alone read, so git, pip and curl never depend on the meter.
    """
    from taskmeter.proxy.environment import (
        BASE_URL_VARIABLES,
        PROXY_VARIABLES,
        client_environment,
        render_exports,
        render_unsets,
    )

    if unset:
        if task_id or https_proxy:
            raise click.UsageError("--unset goes alone (it undoes every variable `meter env` may set)")
        click.echo(render_unsets([*BASE_URL_VARIABLES, *PROXY_VARIABLES], shell))
        return
    from taskmeter.config import load_settings

    if task_id:
        task_id = tasks.validate_task_id(task_id)
    settings = load_settings(config_path)
    env = client_environment(settings, _listen_address(db_path, settings), task_id, https_proxy=https_proxy)
    click.echo(render_exports(env, shell))


@cli.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--task", "task_id", help="Attribute this command's AI calls to TASK (default: the current task).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@config_option
@db_option
def run_cmd(task_id, command, config_path, db_path):
    """Run COMMAND with its AI clients pointed at the proxy: meter run --task P1-010 -- claude

    The running proxy is used; when none runs, one is started for COMMAND and
    stopped when the last `meter run` using it ends (other terminals' runs
    keep it). Ctrl-C goes to COMMAND; its exit status is meter run's.
    """
    import shutil
    import signal
    import subprocess

    from taskmeter import lifecycle
    from taskmeter.config import load_settings
    from taskmeter.proxy.environment import client_environment

    if task_id:
        task_id = tasks.validate_task_id(task_id)
    settings = load_settings(config_path)
    program = shutil.which(command[0])
    if program is None:
        raise MeterError(f"command not found: {command[0]}")
    path = store_db.resolve_path(db_path)
    proxy = lifecycle.join(path, ["--config", config_path] if config_path else [])
    try:
        env = {**os.environ, **client_environment(settings, proxy["listen"], task_id)}
        sys.stdout.flush()
        # Ctrl-C is COMMAND's; we stay to clean up. (A handler, not SIG_IGN, which COMMAND would inherit.)
        signal.signal(signal.SIGINT, lambda *_: None)
        returncode = subprocess.run([program, *command[1:]], env=env).returncode
    finally:
        lifecycle.leave(path, timeout=settings.proxy.shutdown_grace_seconds + 5)
    sys.exit(returncode if returncode >= 0 else 128 - returncode)


@cli.group("config")
def config_group():
    """Where the settings live, what they are, and whether a file is valid."""


@config_group.command("path")
@config_option
def config_path_cmd(config_path):
    """Print the config file's path (whether or not it exists yet)."""
    from taskmeter.config import settings as config_settings

    path = config_settings.config_path(config_path)
    terminal.info(f"{path}" + ("" if path.exists() else "  (does not exist: defaults apply; `meter config init` writes one)"))


@config_group.command("show")
@json_option
@config_option
def config_show_cmd(as_json, config_path):
    """Print every effective setting and where it came from (default or the file)."""
    from taskmeter.config import settings as config_settings

    rows = config_settings.settings_with_sources(config_path)
    if as_json:
        terminal.print_json([{"setting": name, "value": value, "source": source} for name, value, source in rows])
        return
    terminal.table(["setting", "value", "source"], [[name, json.dumps(value), source] for name, value, source in rows])


@config_group.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@config_option
def config_check_cmd(file, config_path):
    """Validate FILE (default: the config file) without starting anything."""
    from taskmeter.config import settings as config_settings

    path = config_settings.config_path(file or config_path)
    if not path.exists():
        raise MeterError(f"config file {path} does not exist")
    config_settings.load_settings(path)
    terminal.info(f"{path}: valid")


@config_group.command("init")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@config_option
def config_init_cmd(force, config_path):
    """Write a commented starter config file with every setting and its default."""
    from taskmeter.config import settings as config_settings

    path = config_settings.config_path(config_path)
    if path.exists() and not force:
        raise MeterError(f"{path} exists; edit it, or use --force to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config_settings.starter_text())
    except OSError as exc:
        raise MeterError(f"cannot write {path}: {exc.strerror}") from None
    terminal.info(f"wrote {path}")


@cli.command("path")
@db_option
def path_cmd(db_path):
    """Print the database path (for sqlite3 or Datasette)."""
    terminal.info(str(store_db.resolve_path(db_path)))


def main() -> None:
    """Entry point: no traceback ever reaches the user."""
    try:
        cli.main(prog_name="meter", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        terminal.error("aborted")
        sys.exit(1)
    except click.ClickException as exc:
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see `{exc.ctx.command_path} --help`)"
        terminal.error(exc.format_message().replace("\n", " ") + hint)
        sys.exit(1)
    except MeterError as exc:
        terminal.error(str(exc))
        sys.exit(1)
    except sqlite3.Error as exc:
        terminal.error(str(store_db.describe_sqlite_error(exc, "the database")))
        sys.exit(1)
    except OSError as exc:
        terminal.error(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("METER_DEBUG"):
            raise
        terminal.error(f"internal error: {type(exc).__name__}: {exc} (set METER_DEBUG=1 for the traceback)")
        sys.exit(1)


if __name__ == "__main__":
    main()
