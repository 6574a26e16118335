"""The calls: status, log, show, flag, unflag, retag, purge."""

import sqlite3
import time

import click

from taskmeter import terminal
from taskmeter.cli.common import (
    INTERACTION,
    MOMENT,
    TASK,
    budget_defaults,
    cli,
    db_option,
    idle_seconds,
    json_option,
    open_db,
    utc_option,
)
from taskmeter.errors import MeterError
from taskmeter.store import connection, proxies, tasks
from taskmeter.terminal import Column
from taskmeter.timefmt import format_duration, format_seconds, now_stored, seconds_between
from taskmeter.tokens import AGENT_LOG, ESTIMATED, PARTIAL, REPORTED, total_tokens

TYPE_CHECKING = False
if TYPE_CHECKING:  # for the type checker: each command imports what it uses (cli.common.COMMAND_MODULES)
    from taskmeter.analytics.records import StatusReport
    from taskmeter.store.interactions import CallFilter, LastCall

# How often `meter log --follow` looks for new calls: a short read transaction.
FOLLOW_POLL_SECONDS = 0.25


@cli.command("status")
@json_option
@utc_option
@db_option
def status_cmd(as_json: bool, utc: bool, db_path: str | None) -> None:
    """The current task, its time, tokens and cost so far, and whether a proxy is metering."""
    from taskmeter import lifecycle
    from taskmeter.analytics.budgets import WARN_AT, describe
    from taskmeter.analytics.reports import task_report
    from taskmeter.analytics.snapshot import current_state, last_call_at
    from taskmeter.handover import callfiles
    from taskmeter.store import dashboards
    from taskmeter.telemetry import PROBLEM_LABEL, export_problems, read_state

    if not connection.resolve_path(db_path).exists():
        _status_without_database(connection.resolve_path(db_path), as_json)
        return
    with open_db(db_path, create=False) as db:
        now = current_state(db, budget_defaults())
        view = task_report(db, now["task_id"], idle_seconds=idle_seconds()) if now["task_id"] else None
        latest = last_call_at(db)
        dashboard = dashboards.running(db)
    database = connection.resolve_path(db_path)
    note, budget, running = now["current_note"], now["budget"], now["proxies"]
    state: StatusReport = {
        "database": str(database),
        "database_exists": True,
        "task_id": now["task_id"],
        "current_since": now["current_since"],
        "current_for_seconds": seconds_between(now["current_since"], now_stored()) if now["task_id"] else None,
        "current_note": note,
        "task": view,
        "proxies": [{"proxy_id": proxy.pop("id"), **proxy} for proxy in running],
        "dashboard": dashboard,
        "budget": budget,
        "alerts": [{"alert_id": alert.pop("id"), **alert, "blocks": bool(alert["blocks"])} for alert in now["alerts"]],
        "last_interaction_at": latest,
        # Calls not in the database: waiting in the spool, or kept apart for a person.
        "spooled_calls": callfiles.count_lines(callfiles.spool_path(database)),
        "quarantined_calls": callfiles.count_lines(callfiles.quarantine_path(database)),
        "quarantine": str(callfiles.quarantine_path(database)),
        # Set when `meter start` runs the proxy in the background.
        "pidfile": str(lifecycle.pid_path(database)) if lifecycle.pid_path(database).exists() else None,
        "log": str(lifecycle.log_path(database)) if lifecycle.pid_path(database).exists() else None,
        # OpenTelemetry export of the running recorder: endpoints failing, calls not exported.
        "telemetry": read_state(database),
        "service": _service_state(database, running),
    }
    if as_json:
        terminal.print_json(state)
        return
    if view is None:
        why = f" ({note})" if note else ""
        terminal.info(f"No current task{why}: AI calls are recorded as unassigned. Start one with `meter set-task ID`.")
    else:
        cost = terminal.money(view["cost_usd"])
        if view["unpriced_interactions"]:
            cost += f" ({view['unpriced_interactions']} calls with no known price not included)"
        if view["cost_api_equivalent_usd"]:
            cost += f" (of which {terminal.money(view['cost_api_equivalent_usd'])} API-equivalent: subscription calls)"
        terminal.fields(
            [
                ("Current task", f"{view['task_id']}" + (f" — {view['title']}" if view["title"] else "")),
                ("Current for", format_duration(state["current_for_seconds"] or 0) + (f" (since {note})" if note else "")),
                ("Working time", format_duration(view["actual_duration"])),
                ("Elapsed (wall)", format_duration(view["wall_duration"])),
                ("Estimate", format_duration(view["estimated_duration"])),
                ("Tokens so far", terminal.number(view["token_count_used"])),
                ("Cost so far", cost),
                ("AI interactions", view["ai_interactions"]),
                ("Failed calls", view["failed_calls"]),
                ("Hallucinations", view["hallucination_count"]),
            ]
        )
        if budget:
            line = describe(budget)
            if budget["blocks"]:
                terminal.warn(f"BUDGET SPENT, new calls are refused: {line}")
            elif budget["used_share"] >= WARN_AT[0]:
                terminal.warn(f"budget {budget['used_share'] * 100:.0f}% used: {line}")
            else:
                terminal.info(f"Budget: {line}")
        after = view["after_approval"]  # set once it is approved
        if view["final_approval_timestamp"] and after is not None:
            terminal.warn(
                f"{view['task_id']} was approved at {terminal.moment(view['final_approval_timestamp'], utc, short=False)}: "
                f"calls now count as after approval ({after['ai_interactions']} so far); `meter set-task` another task"
            )
    if running:
        for proxy in state["proxies"]:
            terminal.info(
                f"Proxy running: pid {proxy['pid']} on {proxy['listen']} since {terminal.moment(proxy['started_at'], utc)}"
            )
            if state["log"]:
                terminal.info(f"  in the background (`meter stop`); pidfile {state['pidfile']}, log {state['log']}")
            if proxy["recording"] != proxies.RECORDING:
                terminal.warn(f"NOT RECORDING: {proxy['recording']}")
            if proxy["held_calls"]:
                terminal.warn(f"{proxy['held_calls']} calls are held in the recorder's memory until the database can be written")
            if proxy["dropped_calls"]:
                terminal.warn(f"{proxy['dropped_calls']} calls were lost: neither the database nor the spool could take them")
    else:
        terminal.info(f"No proxy is running on this database: {lifecycle.START_ADVICE}.")
    terminal.info(f"Service: {state['service']['detail']}")
    if state["spooled_calls"]:
        terminal.info(f"{state['spooled_calls']} calls wait in the spool until the database can take them")
    if state["quarantined_calls"]:
        terminal.warn(f"{state['quarantined_calls']} calls could not be stored and are kept in {state['quarantine']}")
    for problem in export_problems(state["telemetry"], lambda at: terminal.moment(at, utc)):
        terminal.warn(f"{PROBLEM_LABEL}: {problem}")
    for alert in state["alerts"]:
        terminal.warn(f"ALERT {alert['alert_id']}: {alert['message']} (`meter alerts clear {alert['alert_id']}`)")
    if dashboard:
        terminal.info(f"Dashboard: {dashboard}")
    terminal.info(f"Database: {state['database']}")


def _terminal_columns() -> int:
    import shutil  # only on a terminal: piped, `meter log` starts without it

    return shutil.get_terminal_size().columns


def _status_without_database(database, as_json: bool) -> None:
    """`meter status` where there is no database: it says so, makes none, and
    still says whether a proxy records there (its health file tells)."""
    from taskmeter.lifecycle import START_ADVICE

    health = proxies.read_health(database)
    service = _service_state(database, [health] if health else [])
    if as_json:
        proxies_now = [health] if health else []
        terminal.print_json({"database": str(database), "database_exists": False, "proxies": proxies_now, "service": service})
        return
    terminal.info(f"No database at {database}: nothing was recorded there (`meter proxy` creates it).")
    if health:
        terminal.info(f"Proxy running: pid {health['pid']}; it makes the database again with its next call")
    else:
        terminal.info(f"No proxy is running on this database: {START_ADVICE}.")
    terminal.info(f"Service: {service['detail']}")


def _service_state(database, running: list[dict]) -> dict:
    """The user service (`meter service`), read from its file: no process is started."""
    from taskmeter import service

    ok, detail = service.describe(database.absolute(), running[0]["pid"] if running else None)
    installed = service.installed_for(database.absolute())
    return {"installed": installed is not None, "ok": ok, "detail": detail, "path": str(installed.path) if installed else None}


# The log's columns; the narrower the terminal, the more of the high `drop` ones go.
LOG_COLUMNS = [
    Column("ID", "id"),
    Column("Started", "time"),
    Column("Task", "id", drop=3),
    Column("Model", shrink=True),
    Column("In", "count"),
    Column("Cache R", "count", drop=7),
    Column("Cache W", "count", drop=8),
    Column("Out", "count"),
    Column("Reason", "count", drop=6),
    Column("Cost", "money", drop=2),
    Column("1st tok", "figure", drop=11),  # seconds to the answer's first byte
    Column("Time", "figure", drop=10),  # seconds to its end
    Column("Source", drop=9),
    Column("Status", drop=5),
    Column("⚑", drop=1),  # flagged as a hallucination
]
# Below this terminal width the log shows no preview unless asked with --preview.
PREVIEW_MIN_COLUMNS = 130
# The columns a preview takes the place of (`--no-preview` and --json show them).
BESIDE_PREVIEW = {"Cache R", "Cache W", "Reason", "1st tok", "Source"}


def _log_row(row: dict) -> list:
    from taskmeter.analytics.listings import latency

    first, total = latency(row)
    return [
        row["id"],
        row["started_at"],
        row["task_id"] or "unassigned",
        row["model"],
        row["input_total"],
        row["cache_read"],
        row["cache_write"],
        row["output_total"],
        row["reasoning"],
        row["cost_usd"],
        format_seconds(first),
        format_seconds(total),
        row["usage_source"],
        _status_cell(row),
        "⚑" if row["flagged_at"] else "",
    ]


@cli.command("log")
@click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(min=1), help="How many calls.")
@click.option("--task", "task_id", type=TASK, help="Only this task's calls (`unassigned`: calls of no task).")
@click.option("--unassigned", is_flag=True, help="Only calls of no task (retag them with `meter retag ID --to TASK`).")
@click.option("--since", type=MOMENT, help="Only calls from this time on: today, yesterday, 6h, 7d, 2026-11-20, ISO 8601.")
@click.option("--until", type=MOMENT, help="Only calls before this time (same forms as --since).")
@click.option("--model", help="Only calls of models whose name contains this.")
@click.option("--flagged", is_flag=True, help="Only calls flagged as hallucinations.")
@click.option("--failed", is_flag=True, help="Only calls that got no model answer (no response, HTTP 4xx or 5xx).")
@click.option("--search", metavar="TEXT", help="Only calls whose stored text, model or error contains TEXT; shows where.")
@click.option(
    "--session",
    metavar="ID",
    help="Only the calls of this session: its ID as a loop alert or `meter report sessions` names it (6+ characters).",
)
@click.option(
    "--preview/--no-preview",
    default=None,
    help=f"A column with each response's first line (default: on in a terminal of {PREVIEW_MIN_COLUMNS}+ columns).",
)
@click.option("-f", "--follow", is_flag=True, help="Then print a line for each call as it is recorded, until Ctrl-C.")
@json_option
@utc_option
@db_option
def log_cmd(
    limit, task_id, unassigned, since, until, model, flagged, failed, search, session, preview, follow, as_json, utc, db_path
):
    """Recent AI calls, newest first, with IDs to use with `meter show` and `meter flag`."""
    from taskmeter.analytics.listings import call_record, search_match
    from taskmeter.analytics.listings import preview as call_preview
    from taskmeter.store import interactions
    from taskmeter.store import texts as call_texts

    if follow and as_json:
        raise click.UsageError("--follow prints lines; use it without --json")
    if task_id and task_id.strip().lower() == "unassigned":  # the name listings show for no task
        task_id, unassigned = None, True
    if task_id and unassigned:
        raise click.UsageError("--task and --unassigned contradict each other")
    with open_db(db_path, create=False) as db:
        if task_id:
            task_id = tasks.get_task(db, task_id.strip())["id"]
        if session is not None:
            session = interactions.resolve_session(db, session)
        calls = interactions.CallFilter(task_id, unassigned, since, until, model, flagged, failed, search, session)
        if follow:
            _follow(db, limit, calls)
            return
        rows = interactions.recent(db, limit=limit, calls=calls)
        if preview is None:
            preview = not terminal.to_pipe() and _terminal_columns() >= PREVIEW_MIN_COLUMNS
        said = call_texts.of_calls(db, [row["id"] for row in rows]) if rows and (preview or search or as_json) else {}
    matches = {row["id"]: search_match(said.get(row["id"]), row, search) for row in rows} if search else {}
    if as_json:
        listed = []
        for row in rows:
            record = {**call_record(row), "preview": call_preview(said.get(row["id"]))}
            listed.append({**record, "match": matches[row["id"]]} if search else record)
        terminal.print_json(listed)
        return
    if not rows:
        terminal.info("No AI calls match." if calls != interactions.CallFilter() else "No AI calls recorded yet.")
        return
    columns, cells = LOG_COLUMNS, [_log_row(row) for row in rows]
    if search or preview:  # a search shows where TEXT is, whatever --preview says: why each call is listed
        header, texts = (
            ("Match", [_match_text(matches[row["id"]]) for row in rows])
            if search
            else ("Preview", [call_preview(said.get(row["id"])) for row in rows])
        )
        kept = [i for i, column in enumerate(columns) if column.header not in BESIDE_PREVIEW]
        columns = [*(columns[i] for i in kept), Column(header, shrink=True)]
        cells = [[*(line[i] for i in kept), text] for line, text in zip(cells, texts, strict=True)]
    terminal.table(columns, cells, utc=utc)


def _match_text(match: dict | None) -> str | None:
    return f"{match['field']}: {match['snippet']}" if match else None


def _follow(db: sqlite3.Connection, limit: int, calls: "CallFilter") -> None:
    """The last `limit` calls, oldest first, then each new one as the recorder
    stores it: the proxy's live view, from any terminal."""
    from taskmeter.callline import call_line
    from taskmeter.store import interactions

    db.execute("BEGIN")  # one snapshot for both: no call missed or shown twice
    seen = db.execute("SELECT coalesce(max(rowid), 0) FROM interactions").fetchone()[0]
    earlier = interactions.recent(db, limit=limit, calls=calls)
    db.execute("COMMIT")
    for row in reversed(earlier):
        terminal.info(call_line(row))  # wrapped to the terminal
    while True:  # until Ctrl-C, which ends it as it ends any command (status 130)
        time.sleep(FOLLOW_POLL_SECONDS)
        for row in interactions.stored_after(db, seen, calls):
            seen = row["rowid"]
            terminal.info(call_line(row))  # wrapped to the terminal


def _status_cell(row: dict) -> str:
    status = str(row["http_status"]) if row["http_status"] is not None else ""
    if row["usage_source"] == AGENT_LOG:  # the agent logged an answer; the meter saw no status
        status = "in agent log"
    if row["outcome"] and row["outcome"] != "complete":
        status = f"{status} {row['outcome']}".strip()
    return status


def _tokens_text(row: dict) -> str:
    total = total_tokens(row)
    return "no usage" if total is None else f"{total:,} tokens"


# The option of every command that takes a call by ID or `last`.
any_option = click.option("--any", "any_task", is_flag=True, help="With `last`: the last call of any task, not the current one.")


def _is_last(reference: str) -> bool:
    return reference.strip().lower() == "last"


def _resolve(db: sqlite3.Connection, reference: str, any_task: bool) -> "LastCall":
    """The one reading of a call reference: `last` (see interactions.last_call: of
    the current task; of every task with --any or when no task is current) or an
    ID or prefix, which skips nothing."""
    from taskmeter.store import interactions

    if not _is_last(reference):
        return interactions.LastCall(interactions.resolve_id(db, reference), [])
    current = None if any_task else tasks.current_task(db)
    return interactions.last_call(db, current.task_id if current else None)


def _refuse_lone_any(references: list[str], any_task: bool) -> None:
    if any_task and not any(map(_is_last, references)):
        raise click.UsageError("--any goes with `last`")


# How many of the newer calls `last` passed over are named, newest first.
SKIPPED_NAMED = 3


def _skipped_lines(chosen: "LastCall") -> list[str]:
    """The newer calls `last` passed over, and why, a line each."""
    lines = [f"  skipped newer {interaction_id}, {why}" for interaction_id, why in chosen.skipped[:SKIPPED_NAMED]]
    more = len(chosen.skipped) - SKIPPED_NAMED
    if more > 0:
        lines.append(f"  and {more} more newer calls skipped (`meter log` lists them)")
    return lines


def _skipped_json(chosen: "LastCall") -> list[dict]:
    return [{"interaction_id": interaction_id, "why": why} for interaction_id, why in chosen.skipped]


@cli.command("show")
@click.argument("interaction", type=INTERACTION)
@any_option
@json_option
@utc_option
@db_option
def show_cmd(interaction, any_task, as_json, utc, db_path):
    """What one AI call said and cost: by ID, prefix (6+ characters) or `last`.

    Metadata, usage and where it came from, cost, flag and note, then the last
    message a person typed, the tool steps since (a line each) and the response.
    """
    from taskmeter.analytics.listings import show_record
    from taskmeter.store import interactions

    _refuse_lone_any([interaction], any_task)
    with open_db(db_path, create=False) as db:
        chosen = _resolve(db, interaction, any_task)
        row = interactions.one(db, chosen.interaction_id)
        record = show_record(db, row, skipped=_skipped_json(chosen))
    if as_json:
        terminal.print_json(record)
        return
    said, set_aside = record["text"], record["flag_set_aside"]
    tokens = record["tokens"]
    usage = "no usage stated"
    if tokens["total"] is not None:
        usage = (
            f"input {terminal.number(tokens['input_total'])} (cache read {terminal.number(tokens['cache_read'])}, "
            f"cache write {terminal.number(tokens['cache_write'])}), output {terminal.number(tokens['output_total'])} "
            f"(reasoning {terminal.number(tokens['reasoning'])}) = {terminal.number(tokens['total'])}"
        )
    source = {REPORTED: "stated by the provider", ESTIMATED: "estimated with tiktoken (the provider stated none)",
              PARTIAL: "the stream was cut: what it stated, or the delivered text counted",
              AGENT_LOG: "from the agent's own log (`meter reconcile --import`): the meter never saw this call"}.get(record["usage_source"], "")  # fmt: skip
    first, total = record["first_token_seconds"], record["total_seconds"]
    timing = (
        f"first {'token' if record['streamed'] else 'byte'} after {format_seconds(first)}, done after {format_seconds(total)}"
    )
    client = record["client_name"] or record["client"] or "not stated"
    if record["client_name"]:
        client += f" ({record['client']})"
    terminal.fields(
        [
            ("Call", record["interaction_id"]),
            ("Task", record["task_id"] or "unassigned"),
            ("Attributed", record["attribution_reason"]),
            ("When", terminal.moment(record["started_at"], utc, short=False)),
            ("Latency", timing if total is not None else "no answer recorded"),
            ("Model", f"{record['model'] or '?'} via {record['provider'] or '?'} ({record['endpoint'] or '?'})"),
            ("Client", client + (f", session {record['client_session']}" if record["client_session"] else "")),
            ("Status", (_status_cell(row) or "no response") + (f": {record['error']}" if record["error"] else "")),
            ("Tokens", usage),
            ("Usage source", f"{record['usage_source']}: {source}" if record["usage_source"] else None),
            ("Cost", terminal.money(record["cost_usd"]) + (f" ({record['price_source']})" if record["price_source"] else "")
             + (", API-equivalent: a subscription login paid for this call" if record["price_basis"] == "api-equivalent" else "")),
            ("Flag", f"hallucination, {terminal.moment(record['flagged_at'], utc, short=False)}" + (f": {record['flag_note']}" if record["flag_note"] else "") if record["flagged"] else _set_aside_text(set_aside, utc)),
            ("Notes", record["notes"]),
        ]
    )  # fmt: skip
    for line in _skipped_lines(chosen):
        terminal.info(line)
    if said is None:
        terminal.info('\nNo text kept for this call (store_bodies is "none", it was purged, or it said nothing).')
        return
    terminal.info("\n--- last message typed ---")
    terminal.info(said["prompt"] or "(none in this request)")
    if said["steps"]:
        terminal.info("\n--- since then ---")
        for step in said["steps"]:
            terminal.info(step)
    terminal.info("\n--- response ---")
    terminal.info(said["response"] or "(no text)")


def _set_aside_text(set_aside: dict | None, utc: bool) -> str:
    if set_aside is None:
        return "no"
    return (
        f"set aside, counted nowhere: flagged {terminal.moment(set_aside['flagged_at'], utc, short=False)}"
        + (f" ({set_aside['note']})" if set_aside["note"] else "")
        + ", but the call got no model answer (`meter unflag` removes it)"
    )


@cli.command("flag")
@click.argument("interaction", type=INTERACTION)
@click.option("--note", help="What was hallucinated, e.g. 'invented API'.")
@any_option
@json_option
@utc_option
@db_option
def flag_cmd(interaction, note, any_task, as_json, utc, db_path):
    """Flag an AI call as a hallucination, by ID, prefix (6+ characters) or `last`.

    `last` is the newest call of the main conversation of the session of the
    current task's newest answered call (of any task with --any, or when no task
    is current); the newer calls it skips are named, with why.
    A call that got no model answer (HTTP 4xx or 5xx, refused by the meter, no
    response) cannot be flagged.
    """
    from taskmeter.analytics.listings import call_record
    from taskmeter.printable import first_line
    from taskmeter.store import interactions

    _refuse_lone_any([interaction], any_task)
    with open_db(db_path, create=False) as db:
        chosen = _resolve(db, interaction, any_task)
        interaction_id = chosen.interaction_id
        already = interactions.flag(db, interaction_id, note)
        row = interactions.one(db, interaction_id)
    if as_json:
        terminal.print_json({**call_record(row), "already_flagged": already, "skipped": _skipped_json(chosen)})
        return
    what = (
        f"{interaction_id} was already flagged" + ("; note updated" if note is not None else "")
        if already
        else f"Flagged {interaction_id} as a hallucination"
    )
    terminal.info(what + ":")
    details = [
        row["task_id"] or "unassigned",
        row["model"] or "?",
        terminal.moment(row["started_at"], utc, short=False),
        _tokens_text(row),
    ]
    terminal.info("  " + "  ".join(details))
    terminal.info("  " + (first_line(row["response"]) or "(no response text kept)"))
    for line in _skipped_lines(chosen):
        terminal.info(line)


@cli.command("unflag")
@click.argument("interaction", type=INTERACTION)
@any_option
@db_option
def unflag_cmd(interaction, any_task, db_path):
    """Remove the hallucination flag from an AI call, by ID, prefix (6+ characters) or `last`.

    `last` is the call `meter flag last` names; the newer calls it skips are named, with why.
    """
    from taskmeter.store import interactions

    _refuse_lone_any([interaction], any_task)
    with open_db(db_path, create=False) as db:
        chosen = _resolve(db, interaction, any_task)
        interaction_id = interactions.unflag(db, chosen.interaction_id)
    terminal.info(f"Unflagged {interaction_id}.")
    for line in _skipped_lines(chosen):
        terminal.info(line)


@cli.command("purge")
@click.option("--before", type=MOMENT, help="Only calls started before this time (default: every call).")
@db_option
def purge_cmd(before, db_path):
    """Delete the stored text and bodies of calls; their usage, cost and flags stay.

    The recorder already deletes text older than `retention_days` (config).
    """
    from taskmeter.store import texts as call_texts

    with open_db(db_path, create=False) as db:
        purged = call_texts.purge(db, before)
    terminal.info(f"Deleted the stored text of {purged:,} call{'s' if purged != 1 else ''}; usage is kept.")


@cli.command("retag")
@click.argument("interactions_", metavar="[ID]...", nargs=-1, type=INTERACTION)
@click.option("--to", "to_task", type=TASK, help="The task to move them to (it must exist, unless --create).")
@click.option("--create", is_flag=True, help="With --to: create the task (and its phase) if it does not exist.")
@click.option("--unassign", is_flag=True, help="Move them to the unassigned bucket instead.")
@click.option(
    "--between", nargs=2, metavar="ID ID", type=INTERACTION, help="Every call from the first ID to the second, inclusive."
)
@click.option("--unassigned", "from_unassigned", is_flag=True, help="Every unassigned call (within --since/--until if given).")
@click.option("--since", type=MOMENT, help="Every call started at or after this time ...")
@click.option("--until", type=MOMENT, help="... and before this one (today, 6h, 2026-11-20, ISO 8601).")
@any_option
@db_option
def retag_cmd(interactions_, to_task, create, unassign, between, from_unassigned, since, until, any_task, db_path):
    """Move AI calls to another task (or unassign them); reports follow at once.

    Each ID is an ID, a prefix (6+ characters) or `last` (as `meter flag last`).

    \b
      meter retag 05j6e2pw21jh7 05j6e2q0 --to P1-011
      meter retag last --to P1-011
      meter retag --between 05j6e2pw 05j6e3aa --to P1-011
      meter retag --since 2025-10-04T09:00:00Z --until 2025-10-04T10:00:00Z --to P1-011
      meter retag --unassigned --since today --to P1-011
    """
    from taskmeter.store import interactions
    from taskmeter.store.calls import retag

    if bool(to_task) == unassign:
        raise click.UsageError("give --to TASK, or --unassign")
    if create and not to_task:
        raise click.UsageError("--create goes with --to")
    chosen = [bool(interactions_), bool(between), bool(since or until or from_unassigned)]
    if sum(chosen) != 1:
        raise click.UsageError("choose the calls one way: IDs, --between, --unassigned, or --since/--until")
    if not from_unassigned and (since is None) != (until is None):
        raise click.UsageError("--since and --until go together (or narrow --unassigned)")
    _refuse_lone_any([*interactions_, *(between or ())], any_task)
    if to_task:
        to_task = tasks.validate_task_id(to_task)
    chosen_calls: list[LastCall] = []
    with open_db(db_path, create=False) as db:
        with connection.write_transaction(db):
            if interactions_ or between:
                chosen_calls = [_resolve(db, reference, any_task) for reference in (*interactions_, *(between or ()))]
                named = [chosen.interaction_id for chosen in chosen_calls]
                ids = (
                    interactions.select_ids(db, named)
                    if interactions_
                    else interactions.select_ids(db, between=(named[0], named[1]))
                )
            else:
                window = interactions.CallFilter(unassigned=from_unassigned, since=since, until=until)
                ids = interactions.matching_ids(db, window)
            if not ids:
                raise MeterError("no interactions match")
            moved = retag(db, ids, to_task, create=create)
    terminal.info(f"Moved {moved} interaction{'s' if moved != 1 else ''} to {to_task or 'unassigned'}.")
    for chosen in chosen_calls:
        for line in _skipped_lines(chosen):
            terminal.info(line)
