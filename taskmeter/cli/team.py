"""`meter team`: set up a team store on PostgreSQL, join it, see how syncing goes (docs/team.md)."""

import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import click

from taskmeter import terminal
from taskmeter.cli.common import cli, config_option, db_option, json_option, open_db
from taskmeter.errors import MeterError
from taskmeter.store import connection

# Below this much free space beside the database, the outbox (and every call) cannot be written.
FULL_DISK_BYTES = 1 << 20


@cli.group("team")
def team_cmd():
    """The team store: every developer's meter syncs its rows to one PostgreSQL.

    \b
      meter team setup --admin-url URL --developer alice@example.com --developer bob@example.com
      meter team join postgresql://alice%40example.com@db.example.com/taskmeter
      meter team status
      meter report --team phase P1
    Passwords come from PGPASSFILE (~/.pgpass) or a libpq service, never from the config.
    """


@team_cmd.command("setup")
@click.option("--admin-url", required=True, help="postgresql:// URL of a role that may create schemas and roles.")
@click.option("--developer", "developers", multiple=True, help="A developer's login role to create (repeatable).")
def setup_cmd(admin_url, developers):
    """Create or upgrade the team store: schema, row-level security, the reporting role and one login role
    per developer. Prints every grant, and the password of each role it creates (give it to its developer)."""
    from taskmeter.team import address, schema

    url = address.checked_url(admin_url)
    for developer in developers:
        if not developer.strip() or len(developer) > 63:
            raise MeterError(f"--developer {developer!r}: a role name of 1 to 63 characters")
    conn = address.connect(url)
    try:
        lines = _store_errors(lambda: schema.setup(conn, list(developers)), url)
    finally:
        conn.close()
    for line in lines:
        terminal.info(line)


@team_cmd.command("join")
@click.argument("url")
@config_option
@db_option
def join_cmd(url, config_path, db_path):
    """Sync this meter's rows to the team store at URL: its history once, then every change.

    URL names the developer's role (postgresql://ROLE@HOST/DATABASE; without one, [team] developer or
    `git config user.email`); the password comes from PGPASSFILE or a libpq service. `meter proxy`
    then syncs continuously (or run `meter team sync`)."""
    from taskmeter.config.files import config_path as settings_path
    from taskmeter.store import outbox, proxies
    from taskmeter.team import address
    from taskmeter.timefmt import now_stored

    url = _with_developer(address.checked_url(url), config_path)
    conn = address.connect(url)
    try:
        role = _store_errors(lambda: _checked_role(conn, url), url)
    finally:
        conn.close()
    with open_db(db_path) as db:
        listed = outbox.join(db, now_stored())
        pending = outbox.pending_count(db)
        proxy_running = bool(proxies.running(db))
    path = settings_path(config_path)
    _save_team_url(path, url)
    terminal.info(f"joined the team store at {address.describe(url)} as {role}; [team] url saved in {path}")
    terminal.info(
        f"{pending} rows to send ({listed} of them this meter's history, sent once); "
        + (
            "the running proxy started without a team store: restart it (`meter stop; meter start`) to sync, or run `meter team sync`"
            if proxy_running
            else "`meter proxy` syncs them and every change, or run `meter team sync`"
        )
    )


@team_cmd.command("leave")
@click.option("--force", is_flag=True, help="Leave even with rows not sent yet (they are not sent).")
@config_option
@db_option
def leave_cmd(force, config_path, db_path):
    """Stop syncing to the team store: [team] url is removed and the outbox emptied. Rows already
    sent stay in the team store."""
    from taskmeter.config.files import config_path as settings_path
    from taskmeter.store import outbox

    with open_db(db_path, create=False) as db:
        pending = outbox.pending_count(db)
        if pending and not force:
            raise MeterError(f"{pending} rows are not sent yet: `meter team sync --once` first, or leave with --force")
        dropped = outbox.leave(db)
    path = settings_path(config_path)
    if path.exists():
        _save_team_url(path, None)
    terminal.info(
        f"left the team store; [team] url removed from {path}" + (f", {dropped} unsent rows dropped" if dropped else "")
    )


def _checked_role(conn, url: str) -> str:
    from taskmeter.team import address, schema

    schema.check(conn, address.describe(url))
    return conn.execute("SELECT current_user").fetchone()[0]


@team_cmd.command("sync")
@click.option("--once", is_flag=True, help="Send what is pending, then exit (exit 1 if the store cannot take it).")
@click.option("--parent", type=int, hidden=True, help="Exit when this process is gone (`meter proxy` starts us).")
@config_option
@db_option
def sync_cmd(once, parent, config_path, db_path):
    """Send the outbox to the team store, continuously (as `meter proxy` does), or --once."""
    from taskmeter import logs
    from taskmeter.config import load_settings
    from taskmeter.team import process, sync

    settings = load_settings(config_path)
    if not settings.team.url:
        raise MeterError("this meter is in no team: `meter team join URL` first")
    path = connection.resolve_path(db_path)
    lock = process.take_lock(path)
    if lock is None:
        if parent is not None:
            return  # another proxy's syncer already sends this database
        raise MeterError(f"a syncer already runs for {path} (pid {process.syncer_pid(path)})")
    logs.configure_logging()
    sent = sync.run(path, settings.team.url, settings.team.share_text, once=once, parent=parent)
    if once:
        terminal.info(f"sent {sent} rows to the team store")


@team_cmd.command("status")
@json_option
@config_option
@db_option
def status_cmd(as_json, config_path, db_path):
    """What is pending, the last sync, and any error (exit 1 with the error as one line)."""
    from taskmeter.config import load_settings
    from taskmeter.store import outbox
    from taskmeter.team import address, process, sync

    settings = load_settings(config_path)
    path = connection.resolve_path(db_path)
    full = _full_disk(path)
    try:
        with open_db(path, create=False) as db:
            joined_at, pending, oldest = outbox.joined(db), outbox.pending_count(db), outbox.oldest_pending(db)
            device = outbox.device_id(db)
    except MeterError:
        if full:  # SQLite could not even open it: the full disk is why
            raise MeterError(full) from None
        raise
    state = sync.SyncState.read(path)
    error = _current_error(settings.team.url, joined_at, path)
    report = {
        "url": address.describe(settings.team.url) if settings.team.url else None,
        # The role the URL names is who the team store records; else the one join would use.
        "developer": (urlsplit(settings.team.url).username if settings.team.url else None)
        or settings.team.developer
        or address.default_developer(),
        "device_id": device,
        "joined_at": joined_at,
        "pending_rows": pending,
        "oldest_pending_at": oldest,
        "last_sync_at": state.last_sync_at if state else None,
        "sent_rows": state.sent_rows if state else 0,
        "syncer_pid": process.syncer_pid(path),
        "syncer_error": state.error if state else None,
        "error": error,
    }
    if as_json:
        terminal.print_json(report)
    else:
        terminal.info(f"team store: {report['url'] or 'none'} (joined {joined_at or 'never'}), device {device}")
        terminal.info(f"pending: {pending} rows" + (f", oldest changed {oldest}" if oldest else ""))
        terminal.info(f"last sync: {report['last_sync_at'] or 'never'}, {report['sent_rows']} rows sent by this meter")
        terminal.info(
            f"syncer: pid {report['syncer_pid']}" if report["syncer_pid"] else "syncer: not running (`meter proxy` starts it)"
        )
        if report["syncer_error"] and not error:
            terminal.info(f"the syncer's last error (since {state.error_since if state else '?'}): {report['syncer_error']}")
    if error:
        raise MeterError(error)


def _current_error(url: str | None, joined_at: str | None, path: Path) -> str | None:
    """The one line that says what keeps rows from the team store now, or None."""
    if not url or joined_at is None:
        return "this meter is in no team: `meter team join URL`"
    import psycopg  # only now: in no team, status answers without the driver

    from taskmeter.team import address, schema

    full = _full_disk(path)
    if full:
        return full
    try:
        conn = address.connect(url)
    except MeterError as exc:
        return str(exc)
    try:
        schema.check(conn, address.describe(url))
    except MeterError as exc:
        return str(exc)
    except psycopg.Error as exc:
        return address.connection_failure(exc, url)
    finally:
        conn.close()
    return None


def _full_disk(path: Path) -> str | None:
    free = os.statvfs(path.parent)
    if free.f_bavail * free.f_frsize >= FULL_DISK_BYTES:
        return None
    return f"the disk of {path} is full: the outbox cannot list new rows and calls wait in the spool; free some space"


def _store_errors(action, url: str):
    """Run `action` on the team store; a server error becomes one line."""
    import psycopg

    from taskmeter.team import address

    try:
        return action()
    except psycopg.Error as exc:
        raise MeterError(address.connection_failure(exc, url)) from None


def _with_developer(url: str, config_path: str | None) -> str:
    """The URL with the developer's role in it, when it names none and no libpq service."""
    from taskmeter.config.files import TEXT, read_values
    from taskmeter.team import address

    parts = urlsplit(url)
    if parts.username or "service=" in parts.query:
        return url
    developer = read_values(config_path).get("team.developer", TEXT) or address.default_developer()
    if not developer:
        raise MeterError("the URL names no role, and neither [team] developer nor `git config user.email` is set")
    from urllib.parse import quote

    return urlunsplit(parts._replace(netloc=f"{quote(developer, safe='')}@{parts.netloc}"))


def _save_team_url(path: Path, url: str | None) -> None:
    """Set `url` in the config file's [team] table (None: remove it), leaving every other line as it is."""
    line = f"url = {json.dumps(url)}"
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines()
    header = next((i for i, each in enumerate(lines) if re.match(r"^\s*\[team\]\s*(#.*)?$", each)), None)
    if header is None:
        if url is not None:
            lines += (["", "[team]"] if lines else ["[team]"]) + [line]
    else:
        end = next((i for i in range(header + 1, len(lines)) if re.match(r"^\s*\[", lines[i])), len(lines))
        existing = next((i for i in range(header + 1, end) if re.match(r"^\s*url\s*=", lines[i])), None)
        if url is None:
            if existing is not None:
                del lines[existing]
        elif existing is None:
            lines.insert(header + 1, line)
        else:
            lines[existing] = line
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
