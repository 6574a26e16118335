"""Tasks and phases: set-task, task, mark, iteration, tasks, phase, phases."""

import click

from taskmeter import terminal
from taskmeter.cli.budgets import apply_budget, budget_options
from taskmeter.cli.common import (
    DURATION,
    PERCENT,
    TAG,
    TASK,
    TIMESTAMP,
    YES_NO,
    cli,
    db_option,
    idle_seconds,
    json_option,
    open_db,
    utc_option,
)
from taskmeter.errors import MeterError
from taskmeter.store import tasks
from taskmeter.store.connection import write_transaction
from taskmeter.terminal import Column
from taskmeter.timefmt import display, format_duration

# How each kind of field (store/tasks.py Field.kind) is typed on the command line.
_TYPES = {
    "text": None,
    "duration": DURATION,
    "percent": PERCENT,
    "yes-no": YES_NO,
    "success": click.Choice(tasks.SUCCESS_VALUES),
    "tag": TAG,
}


def _parameter(field: tasks.Field) -> str:
    """The option's value in the command's keyword arguments (click's name for it)."""
    return field.option.replace("-", "_")


def _field_option(field: tasks.Field):
    return click.option(f"--{field.option}", type=_TYPES[field.kind], help=f"{field.seed.upper()}: {field.about}")


def _field_options(fields: tuple[tasks.Field, ...]):
    """An option per field of the table, in its order, and --unset naming them."""
    names = ", ".join(field.option for field in fields)

    def decorate(command):
        command = click.option(
            "--unset", multiple=True, metavar="FIELD", help=f"Clear a field by its option's name: {names} or budget."
        )(command)
        for field in reversed(fields):
            command = _field_option(field)(command)
        return command

    return decorate


_TASK_FIELD = {field.option: field for field in tasks.TASK_FIELDS}


@cli.command("set-task")
@click.argument("task_id", type=TASK, required=False)
@_field_option(_TASK_FIELD["title"])
@_field_option(_TASK_FIELD["estimate"])
@click.option("--phase", help="Phase ID (default: the part before the first dash, P1 for P1-010).")
@click.option("--none", "clear", is_flag=True, help="Clear the current task; calls go to 'unassigned'.")
@click.option("--create", is_flag=True, help="Create the task even though its ID looks like a typo of another.")
@db_option
def set_task_cmd(task_id, title, estimate, phase, clear, create, db_path):
    """Make TASK_ID the current task; AI calls are attributed to it from the next call on.

    The task (and its phase) is created on first use and its BEGIN_TIMESTAMP recorded.
    A new ID within one edit of an existing one (P1-01O beside P1-010), or in a new
    phase that does not follow the phase naming (LOGIN beside P1, P2), needs --create.
    Switching back to a task after another one was current makes its next AI call a context switch.
    """
    if clear == bool(task_id):
        raise click.UsageError("give a task ID, or --none to clear the current task")
    if clear and (title or estimate or phase or create):
        raise click.UsageError("--none takes no other options")
    with open_db(db_path) as db:
        if clear:
            previous = tasks.clear_task(db)
            terminal.info(f"No current task (was {previous})." if previous else "No current task.")
            return
        result = tasks.set_task(db, task_id, title=title, estimate_seconds=estimate, phase_id=phase, create=create)
        task = tasks.get_task(db, result.task_id)
        forecast = _forecast_line(db, result.task_id) if estimate is not None else None
    if result.unchanged:
        terminal.info(f"{result.task_id} is already the current task.")
        if forecast:
            terminal.info(forecast)
        return
    details = ["created" if result.created else None, f"began {display(task['begin_at'])}" if result.began else None]
    details = [d for d in details if d]
    line = f"Current task: {result.task_id}"
    if details:
        line += f" ({', '.join(details)})"
    if result.previous:
        line += f"; switched from {result.previous}"
    terminal.info(line + ".")
    if forecast:
        terminal.info(forecast)


def _forecast_line(db, task_id: str) -> str | None:
    """What similar tasks took, said when an estimate is given (analytics/forecasts.py);
    nothing before the first approved task: there is no history to speak of yet."""
    from taskmeter.analytics import forecasts

    if db.execute("SELECT 1 FROM tasks WHERE final_approval_at IS NOT NULL LIMIT 1").fetchone() is None:
        return None
    record = forecasts.task_forecast(db, task_id, idle_seconds()).record
    line = forecasts.similar_line(record)
    latest = tasks.get_task(db, task_id)["estimate_seconds"]
    if record["working_seconds"].get("high") is not None and latest != record["estimate_seconds"]:
        line += f" (From its first estimate, {format_duration(record['estimate_seconds'])}, as the reports use.)"
    return line


def _edits(options: dict, fields: tuple[tasks.Field, ...], unset: tuple[str, ...]) -> dict:
    """The columns an edit sets, from the field options given, and those --unset clears
    (None); `--unset budget` is apply_budget's."""
    values = {}
    for field in fields:
        value = options.get(_parameter(field))
        if value is None:
            continue
        values[field.column] = int(value.lower() == "yes") if field.kind == "yes-no" else value
    by_option = {field.option: field.column for field in fields}
    for name in unset:
        if name == "budget":
            continue
        if name not in by_option:
            raise MeterError(f"cannot unset {name!r}: use one of {', '.join(['budget', *by_option])}")
        if by_option[name] in values:
            raise MeterError(f"--{name} and --unset {name} contradict each other")
        values[by_option[name]] = None
    return values


def _changes(values: dict, fields: tuple[tasks.Field, ...]) -> list[str]:
    """What an edit changed, one phrase per field, for the confirmation line."""
    by_column = {field.column: field for field in fields}
    phrases = []
    for column, value in values.items():
        field = by_column[column]
        if value is None:
            said = "cleared"
        elif field.kind == "duration":
            said = format_duration(value)
        elif field.kind == "percent":
            said = f"{value:g}%"
        elif field.kind == "yes-no":
            said = "yes" if value else "no"
        else:
            said = repr(value)
        phrases.append(f"{field.option} {said}")
    return phrases


def _say_edit(record_id: str, changes: list[str], report: dict | None, as_json: bool, as_text) -> None:
    """An edit's one line of what changed, then the record when there is one to show;
    with --json the record alone: what a script reads."""
    if as_json:
        terminal.print_json(report)
        return
    if changes:
        terminal.info(f"{record_id}: {'; '.join(changes)}.")
    if report is not None:
        terminal.text(as_text(report))


# An edit prints one line; --show prints the record after it too.
_show_option = click.option("--show", is_flag=True, help="After an edit, print the whole record too.")


@cli.command("task")
@click.argument("task_id", type=TASK)
@click.option("--phase", help="Move the task to this phase.")
@click.option("--create", is_flag=True, help="With --phase: a new phase that does not follow the phase naming.")
@_field_options(tasks.TASK_FIELDS)
@budget_options
@_show_option
@click.option("--delete", is_flag=True, help="Delete the task; refused while it has calls, unless --move-calls-to.")
@click.option("--move-calls-to", "move_calls_to", type=TASK, metavar="TASK", help="With --delete: its calls go to TASK.")
@click.option("--merge-into", "merge_into", type=TASK, metavar="TASK", help="Merge the task into TASK, then delete it.")
@click.option("--reopen", is_flag=True, help="Withdraw its approval: working time resumes; the approval stays in history.")
@json_option
@db_option
def task_cmd(task_id, phase, create, budget_amounts, on_exceeded, also, unset, show, as_json, db_path, **options):
    """View TASK_ID's execution log, or edit the Level 1 fields that are not measured automatically.

    An edit prints one line saying what changed (--show: the record too); it
    changes everything asked or, when anything is wrong, nothing.
    """
    from taskmeter.analytics import formats
    from taskmeter.analytics.reports import task_report

    lifecycle = {name: options.pop(name) for name in ("delete", "move_calls_to", "merge_into", "reopen")}
    if any(lifecycle.values()):
        edits = (
            phase
            or create
            or budget_amounts
            or on_exceeded
            or also
            or unset
            or any(value is not None for value in options.values())
        )
        _task_lifecycle(task_id, **lifecycle, edits=edits, as_json=as_json, db_path=db_path)
        return
    if create and not phase:
        raise click.UsageError("--create goes with --phase")
    with open_db(db_path, create=False) as db:
        task = tasks.get_task(db, task_id.strip())
        values = _edits(options, tasks.TASK_FIELDS, unset)
        changes = _changes(values, tasks.TASK_FIELDS)
        with write_transaction(db):
            budget = apply_budget(db, "task", task["id"], budget_amounts, on_exceeded, also, "budget" in unset)
            if values or phase:
                tasks.update_task(db, task["id"], values, phase_id=phase, create=create)
        if phase:
            changes.insert(0, f"phase {tasks.get_task(db, task['id'])['phase_id']}")
        if budget:
            changes.insert(0, budget)
        report = task_report(db, task["id"], idle_seconds=idle_seconds()) if as_json or show or not changes else None
        estimated = values.get("estimate_seconds") is not None and not as_json
        forecast = _forecast_line(db, task["id"]) if estimated else None
    _say_edit(task["id"], changes, report, as_json, formats.task_text)
    if forecast:
        terminal.info(forecast)


def _task_lifecycle(task_id, delete, move_calls_to, merge_into, reopen, edits, as_json, db_path) -> None:
    """`meter task ID --delete [--move-calls-to OTHER]`, `--merge-into OTHER`, `--reopen`:
    one at a time, never with an edit, each in one transaction."""
    if sum(map(bool, (delete, merge_into, reopen))) != 1 or (move_calls_to and not delete) or edits:
        raise click.UsageError("--delete (with --move-calls-to), --merge-into and --reopen go alone")
    with open_db(db_path, create=False) as db:
        if reopen:
            reopening = tasks.reopen(db, task_id)
            line = (
                f"{reopening.task_id} reopened: its approval of {display(reopening.approval)} is kept in its history;"
                " working time resumes."
            )
            if reopening.integration_withdrawn:
                line += f" Phase {reopening.integration_withdrawn} is no longer integration complete."
            result = {
                "task_id": reopening.task_id,
                "reopened": True,
                "approval_withdrawn": reopening.approval,
                "integration_withdrawn": reopening.integration_withdrawn,
            }
        else:
            removal = tasks.merge_task(db, task_id, merge_into) if merge_into else tasks.delete_task(db, task_id, move_calls_to)
            line = _removal_line(removal, merged=bool(merge_into))
            result = {"deleted": removal.task_id, "into": removal.into, "merged": bool(merge_into), **_moved(removal)}
    if as_json:
        terminal.print_json(result)
        return
    terminal.info(line)


def _moved(removal: tasks.Removal) -> dict:
    return {
        "calls": removal.calls,
        "commits": removal.commits,
        "test_runs": removal.test_runs,
        "events": removal.events,
        "milestones_taken": removal.milestones,
        "phase_deleted": removal.phase_deleted,
        "was_current": removal.was_current,
    }


def _removal_line(removal: tasks.Removal, merged: bool) -> str:
    parts = [f"{removal.task_id} {f'merged into {removal.into}' if merged else 'deleted'}"]
    moved = [
        tasks.counted(n, noun)
        for noun, n in (("call", removal.calls), ("commit", removal.commits), ("test run", removal.test_runs))
        if n
    ]
    if removal.into and moved:
        parts.append(f"{', '.join(moved)} moved to {removal.into}")
    if removal.events:
        parts.append(f"{tasks.counted(removal.events, 'milestone and iteration event')} moved")
    if removal.milestones:
        parts.append(f"{removal.into} took its {', '.join(removal.milestones)}")
    if removal.was_current:
        parts.append(f"{removal.into} is the current task now" if removal.into else "no task is current now")
    if removal.phase_deleted:
        parts.append(f"phase {removal.phase_deleted} had no other task and was deleted")
    return "; ".join(parts) + "."


@cli.command("mark")
@click.argument("milestone", type=click.Choice([name for name in tasks.MILESTONES if name != "begin"]))
@click.argument("task_id", type=TASK, required=False)
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

    Marking one the meter set (a commit, a test run), without --at, confirms its time.
    """
    with open_db(db_path, create=False) as db:
        next_task = _branch_task() if milestone == "approved" else None
        marked = tasks.mark(db, task_id, milestone, at=at, force=force, note=note, next_task=next_task)
    line = f"{marked.task_id}: {milestone} at {display(marked.stamp)}"
    if marked.confirmed:
        line += f" (confirmed: {marked.confirmed})"
    if marked.released:
        line += (
            f"; {marked.now_current} (this branch's task) is current now" if marked.now_current else "; no task is current now"
        )
    terminal.info(line + ".")


def _branch_task() -> str | None:
    """The task this directory's branch names, where the git hooks are installed: the next current task on approval."""
    import subprocess
    from pathlib import Path

    from taskmeter.automation import git
    from taskmeter.config import load_settings

    try:
        if not git.installed(Path.cwd()):
            return None
        return git.task_of_branch(git.current_branch(Path.cwd()), load_settings().automation.branch_pattern)
    except (MeterError, OSError, subprocess.SubprocessError):
        return None


@cli.command("iteration")
@click.argument("task_id", type=TASK, required=False)
@click.option("--note", help="What had to be redone.")
@click.option("--at", type=TIMESTAMP, help="When (ISO 8601 with zone); default now.")
@db_option
def iteration_cmd(task_id, note, at, db_path):
    """Record a retry or rework of TASK_ID (default: the current task)."""
    with open_db(db_path) as db:
        recorded_task, count = tasks.add_iteration(db, task_id, at=at, note=note)
    terminal.info(f"{recorded_task}: iteration {count} recorded.")


TASK_COLUMNS = [
    Column("", drop=0),
    Column("Task", "id"),
    Column("Phase", "id", drop=6),
    Column("Title", shrink=True, drop=3),
    Column("Began", "time", drop=5),
    Column("Working", "figure", drop=4),
    Column("Estimate", "figure", drop=7),
    Column("Status"),
    Column("Iter", "count", drop=8),
    Column("AI calls", "count", drop=2),
    Column("Failed", "count", drop=9),
    Column("Tokens", "count"),
    Column("Cost", "money"),
    Column("Flags", "count", drop=1),
]


@cli.command("tasks")
@click.option("--phase", help="Only this phase's tasks.")
@json_option
@utc_option
@db_option
def tasks_cmd(phase, as_json, utc, db_path):
    """List tasks with their measured totals (the current one starred).

    Working is the working time (ACTUAL_DURATION, so far for an open task), not the time since
    it began; AI calls are the calls that reached a model (AI_INTERACTIONS), Failed those that
    never did (docs/metrics.md), which are not in AI calls.
    """
    from taskmeter.analytics.listings import task_records

    with open_db(db_path, create=False) as db:
        records = task_records(
            db, phase.strip() if phase else None, idle_seconds=idle_seconds(), intervals=as_json, keep_settled=True
        )
    if as_json:
        terminal.print_json(records)
        return
    if not records:
        terminal.info("No tasks yet: start one with `meter set-task P1-001`.")
        return
    terminal.table(
        TASK_COLUMNS,
        [
            (
                "*" if task["current"] else "",
                task["task_id"],
                task["phase_id"],
                task["title"],
                task["begin_timestamp"],
                format_duration(task["actual_duration"]),
                format_duration(task["estimated_duration"]),
                task["status"],
                task["iterations_count"],
                task["ai_interactions"],
                task["failed_calls"],
                task["token_count_used"],
                task["cost_usd"],
                task["hallucination_count"],
            )
            for task in records
        ],
        utc=utc,
    )


# ---------------------------------------------------------------- phases


@cli.command("phase")
@click.argument("phase_id")
@_field_options(tasks.PHASE_FIELDS)
@click.option(
    "--mark",
    "milestone",
    type=click.Choice(list(tasks.PHASE_MILESTONES)),
    help="Record a phase timestamp (PHASE_BEGIN ... PHASE_FINAL_APPROVAL).",
)
@click.option("--at", type=TIMESTAMP, help="With --mark: when (ISO 8601 with zone); default now.")
@click.option("--force", is_flag=True, help="With --mark: record even if out of order.")
@budget_options
@_show_option
@json_option
@db_option
def phase_cmd(phase_id, milestone, at, force, budget_amounts, on_exceeded, also, unset, show, as_json, db_path, **options):
    """View PHASE_ID's execution log, or edit its Level 2 inputs and meta-learning fields.

    An edit prints one line saying what changed (--show: the record too); it
    changes everything asked or, when anything is wrong, nothing. Marking a
    milestone the meter derived or saw, without --at, confirms its time.
    """
    from taskmeter.analytics import formats
    from taskmeter.analytics.reports import phase_report

    if (at or force) and not milestone:
        raise click.UsageError("--at and --force go with --mark")
    with open_db(db_path) as db:
        phase = tasks.get_phase(db, phase_id.strip())
        values = _edits(options, tasks.PHASE_FIELDS, unset)
        changes = _changes(values, tasks.PHASE_FIELDS)
        with write_transaction(db):
            budget = apply_budget(db, "phase", phase["id"], budget_amounts, on_exceeded, also, "budget" in unset)
            if values:
                tasks.update_phase(db, phase["id"], values)
            marked = tasks.mark_phase(db, phase["id"], milestone, at=at, force=force) if milestone else None
        if budget:
            changes.insert(0, budget)
        if marked:
            confirmed = f" (confirmed: {marked.confirmed})" if marked.confirmed else ""
            changes.append(f"{milestone} at {display(marked.stamp)}{confirmed}")
        report = phase_report(db, phase["id"], idle_seconds=idle_seconds()) if as_json or show or not changes else None
    _say_edit(phase["id"], changes, report, as_json, formats.phase_text)


@cli.command("phases")
@json_option
@utc_option
@db_option
def phases_cmd(as_json, utc, db_path):
    """List phases with their measured totals."""
    from taskmeter.analytics.reports import phase_reports

    with open_db(db_path, create=False) as db:
        # The table shows no duration: only JSON needs the working time.
        phases = phase_reports(db, idle_seconds=idle_seconds(), working_time=as_json)
    if as_json:
        terminal.print_json(phases)
        return
    if not phases:
        terminal.info("No phases yet: `meter set-task P1-001` makes phase P1.")
        return
    terminal.table(
        [
            Column("Phase", "id"),
            Column("Title", shrink=True, drop=3),
            Column("Tasks", "count"),
            Column("Done", "count", drop=4),
            Column("Began", "time", drop=2),
            Column("Approved", "time", drop=5),
            Column("Tokens", "count"),
            Column("Cost", "money"),
            Column("Flags", "count", drop=1),
        ],
        [
            (
                phase["phase_id"],
                phase["title"],
                phase["tasks_total"],
                phase["tasks_completed"],
                phase["phase_begin"],
                phase["phase_final_approval"],
                phase["total_tokens_used"],
                phase["cost_usd"],
                phase["hallucination_count_total"],
            )
            for phase in phases
        ],
        utc=utc,
    )
