"""Bad input for the team store, each one clear line and nothing lost locally: a
wrong URL, a refused password, a store with an older or a newer schema than
this meter knows, a full disk under the outbox."""

import sqlite3
import subprocess

import psycopg
import pytest

from taskmeter.team import schema
from tests.pg_server import pg_server, team_database  # noqa: F401  (fixtures)
from tests.team_harness import Developer, setup_team, team_calls

pytestmark = pytest.mark.e2e


@pytest.fixture
def alice(tmp_path, pg_server, team_database):  # noqa: F811
    database, suffix = team_database
    name = f"alice_{suffix}"
    setup_team(pg_server, database, [name])
    developer = Developer(tmp_path / "alice", name, pg_server, upstream_port=9)
    developer.ok("set-task", "P1-001", "--estimate", "1h")
    return database, developer


def error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def outbox_rows(developer: Developer) -> int:
    db = sqlite3.connect(developer.db_path)
    try:
        return db.execute("SELECT count(*) FROM team_outbox").fetchone()[0]
    finally:
        db.close()


def test_urls_that_cannot_be_a_team_store_are_refused_in_one_line(pg_server, alice):  # noqa: F811
    database, developer = alice
    assert error_line(developer.meter("team", "join", "mysql://db/x")) == (
        "meter: error: 'mysql://db/x' is not a postgresql:// URL (postgresql://ROLE@HOST[:PORT]/DATABASE)"
    )
    assert "must not hold a password" in error_line(developer.meter("team", "join", "postgresql://a:secret@db/x"))
    unreachable = f"postgresql://{developer.name}@127.0.0.1:1/{database}"
    assert error_line(developer.meter("team", "join", unreachable)) == (
        f"meter: error: cannot reach the team store at {developer.name}@127.0.0.1:1/{database}"
        " (is the server running, and the URL right?)"
    )
    no_database = pg_server.url(developer.name, "no_such_database")
    assert "has no such database" in error_line(developer.meter("team", "join", no_database))
    assert not developer.config.read_text().count("[team]"), "a failed join changes no setting"
    status = developer.meter("team", "status")
    assert error_line(status) == "meter: error: this meter is in no team: `meter team join URL`"


def test_a_refused_password_is_one_line_and_the_outbox_waits(pg_server, alice):  # noqa: F811
    database, developer = alice
    developer.join(database)
    pending = outbox_rows(developer)
    right = pg_server.passwords[developer.name]
    pg_server.add_password(developer.name, "not-the-password")
    try:
        expected = (
            f"meter: error: the team store at {developer.name}@127.0.0.1:{pg_server.port}/{database}"
            " refused the password (check PGPASSFILE or ~/.pgpass)"
        )
        assert error_line(developer.meter("team", "status")) == expected
        assert error_line(developer.meter("team", "sync", "--once")) == expected
        assert outbox_rows(developer) == pending > 0
    finally:
        pg_server.add_password(developer.name, right)
    assert developer.meter("team", "sync", "--once").returncode == 0
    assert outbox_rows(developer) == 0


def test_a_store_newer_than_this_meter_is_refused_and_nothing_is_sent(pg_server, alice):  # noqa: F811
    database, developer = alice
    developer.join(database)
    pending = outbox_rows(developer)
    with psycopg.connect(pg_server.admin_url(database), autocommit=True) as admin:
        admin.execute("INSERT INTO taskmeter.migrations (name, applied_at) VALUES ('t999_from_the_future', now())")
    expected = (
        f"meter: error: the team store at {developer.name}@127.0.0.1:{pg_server.port}/{database}"
        " has a newer schema (t999_from_the_future) than this meter knows: upgrade taskmeter"
    )
    assert error_line(developer.meter("team", "status")) == expected
    assert error_line(developer.meter("team", "sync", "--once")) == expected
    assert error_line(developer.meter("report", "--team")) == expected
    assert outbox_rows(developer) == pending and team_calls(pg_server, database) == []


def test_a_store_older_than_this_meter_needs_is_refused_until_setup_runs_again(pg_server, team_database, tmp_path):  # noqa: F811
    database, suffix = team_database
    with psycopg.connect(pg_server.admin_url(database)) as admin:
        schema.setup(admin, [f"dana_{suffix}"], upto=1)  # as a meter that knew only the first migration made it
    developer = Developer(tmp_path / "dana", f"dana_{suffix}", pg_server, upstream_port=9)
    with psycopg.connect(pg_server.admin_url(database), autocommit=True) as admin:
        admin.execute(f"ALTER ROLE dana_{suffix} PASSWORD 'dana-password'")
    pg_server.add_password(f"dana_{suffix}", "dana-password")
    developer.ok("set-task", "P1-001")
    assert error_line(developer.meter("team", "join", pg_server.url(developer.name, database))) == (
        f"meter: error: the team store at {developer.name}@127.0.0.1:{pg_server.port}/{database}"
        f" has an older schema (without {schema.KNOWN[1]}): the admin runs `meter team setup` again"
    )
    setup_team(pg_server, database, [])
    developer.join(database)
    assert developer.meter("team", "sync", "--once").returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB filesystem of its own (tests run as root), unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_a_full_disk_under_the_outbox_is_one_line_and_loses_nothing(pg_server, team_database, small_disk):  # noqa: F811
    database, suffix = team_database
    name = f"erin_{suffix}"
    setup_team(pg_server, database, [name])
    developer = Developer(small_disk / "erin", name, pg_server, upstream_port=9)
    developer.ok("set-task", "P1-001", "--estimate", "1h")
    developer.join(database)
    filler = small_disk / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    try:
        status = developer.meter("team", "status")
        assert error_line(status) == (
            f"meter: error: the disk of {developer.db_path} is full: the outbox cannot list new rows"
            " and calls wait in the spool; free some space"
        )
        refused = developer.meter("mark", "initial")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
    finally:
        filler.unlink()
    assert developer.meter("team", "sync", "--once").returncode == 0
    developer.ok("mark", "initial")
    assert developer.meter("team", "sync", "--once").returncode == 0
    with psycopg.connect(pg_server.admin_url(database)) as admin:
        fields = dict(
            admin.execute("SELECT field, value FROM taskmeter.fields WHERE entity = 'task' AND entity_id = 'P1-001'").fetchall()
        )
        events = admin.execute("SELECT count(*) FROM taskmeter.records WHERE kind = 'task_event'").fetchone()[0]
    assert fields["estimate_seconds"] == 3600 and fields["initial_completion_at"] is not None
    local = sqlite3.connect(developer.db_path)
    try:
        assert local.execute("SELECT count(*) FROM task_events").fetchone()[0] == events, "every event, once"
    finally:
        local.close()


def test_team_reports_need_a_team_store_and_developer_needs_team(tmp_path):
    developer = Developer.__new__(Developer)  # no server: nothing here reaches one
    developer.db_path, developer.config = tmp_path / "meter.db", tmp_path / "config.toml"
    developer.config.write_text("")
    developer.env = {}
    developer.ok("set-task", "P1-001")
    assert error_line(developer.meter("report", "--team")) == "meter: error: no team store: `meter team join URL` sets [team] url"
    assert error_line(developer.meter("report", "daily", "--developer", "bob")) == (
        "meter: error: --developer filters a team report: add --team"
    )
    assert error_line(developer.meter("team", "sync", "--once")) == (
        "meter: error: this meter is in no team: `meter team join URL` first"
    )


def test_a_url_without_a_role_joins_as_the_configured_developer(pg_server, team_database, tmp_path):  # noqa: F811
    database, suffix = team_database
    name = f"frank_{suffix}"
    setup_team(pg_server, database, [name])
    developer = Developer(tmp_path / "frank", name, pg_server, upstream_port=9)
    developer.config.write_text(developer.config.read_text() + f'[team]\ndeveloper = "{name}"\n')
    developer.ok("set-task", "P1-001")
    joined = developer.ok("team", "join", f"postgresql://127.0.0.1:{pg_server.port}/{database}")
    assert f"as {name};" in joined
    status = developer.json("team", "status")
    assert status["developer"] == name and status["url"] == f"{name}@127.0.0.1:{pg_server.port}/{database}"
    assert developer.meter("team", "sync", "--once").returncode == 0
    with psycopg.connect(pg_server.admin_url(database)) as admin:
        assert admin.execute("SELECT DISTINCT developer FROM taskmeter.records").fetchall() == [(name,)]


def test_leaving_keeps_unsent_rows_unless_forced_and_stops_listing(pg_server, alice):  # noqa: F811
    database, developer = alice
    developer.join(database)
    pending = outbox_rows(developer)
    assert error_line(developer.meter("team", "leave")) == (
        f"meter: error: {pending} rows are not sent yet: `meter team sync --once` first, or leave with --force"
    )
    assert developer.meter("team", "sync", "--once").returncode == 0
    assert "left the team store" in developer.ok("team", "leave")
    assert "url" not in developer.config.read_text()
    developer.ok("mark", "initial")
    assert outbox_rows(developer) == 0, "nothing is listed after leaving"
    assert error_line(developer.meter("team", "status")) == "meter: error: this meter is in no team: `meter team join URL`"
    developer.join(database)
    assert outbox_rows(developer) > 0, "joining again lists the history again"
    assert developer.meter("team", "sync", "--once").returncode == 0
    with psycopg.connect(pg_server.admin_url(database)) as admin:
        initial = admin.execute(
            "SELECT value IS NOT NULL FROM taskmeter.fields WHERE id = 'task:P1-001:initial_completion_at'"
        ).fetchone()
    assert initial == (True,), "the mark made while out of the team is sent on joining again"


def test_a_nul_character_postgresql_cannot_hold_never_blocks_the_outbox(pg_server, alice):  # noqa: F811
    database, developer = alice
    developer.join(database)
    local = sqlite3.connect(developer.db_path)
    local.execute(
        "INSERT INTO interactions (id, task_id, started_at, operation, model, error) VALUES"
        " ('0000000000nul', 'P1-001', '2026-01-01T00:00:00.000000Z', 'generate', 'gpt-4o-mini', ?)",
        ("bad\x00byte",),
    )
    local.commit()
    local.close()
    assert developer.meter("team", "sync", "--once").returncode == 0
    with psycopg.connect(pg_server.admin_url(database)) as admin:
        stored = admin.execute("SELECT row->>'error' FROM taskmeter.calls").fetchall()
    assert stored == [("badbyte",)] and outbox_rows(developer) == 0
