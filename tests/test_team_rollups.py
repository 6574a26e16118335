"""The team store's rollups (team migration t003): sums per task and developer and
the minutes with a call, kept on the server from the rows by statement triggers,
which team task and phase reports read in place of the calls. They stay exactly
each developer's own local rollups through retags (a newer revision of a call,
moved between tasks), flags and unflags; and a store made by the schema before
gets them from the rows it holds when `meter team setup` upgrades it."""

import os
import sqlite3

import anthropic
import psycopg
import pytest

from taskmeter.analytics.reports import phase_report, task_report
from taskmeter.store import connection
from taskmeter.team import reports as team_reports
from taskmeter.team import schema
from taskmeter.team.address import TeamStoreError
from taskmeter.timefmt import now_stored
from tests.pg_server import pg_server, team_database  # noqa: F401  (fixtures)
from tests.team_harness import Developer, setup_team
from tests.test_team_sync import ask_anthropic, ask_openai, team, upstream  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e

_COUNTS = [column for column in schema.USAGE_COLUMNS if not column.endswith("usd")]
_MONEY = [column for column in schema.USAGE_COLUMNS if column.endswith("usd")]


def team_usage(admin_url: str, developer: str) -> dict[str, dict]:
    """The team store's rollup of one developer, per task key."""
    with psycopg.connect(admin_url) as conn:
        rows = conn.execute(
            f"SELECT task_key, {', '.join(schema.USAGE_COLUMNS)} FROM taskmeter.task_usage WHERE developer = %s", (developer,)
        ).fetchall()
    return {row[0]: dict(zip(schema.USAGE_COLUMNS, row[1:], strict=True)) for row in rows}


def local_usage(developer: Developer) -> dict[str, dict]:
    """The developer's own task_usage rows, but those that count nothing (a task whose calls all moved away)."""
    db = sqlite3.connect(developer.db_path)
    db.row_factory = sqlite3.Row
    try:
        rows = [dict(row) for row in db.execute(f"SELECT task_key, {', '.join(schema.USAGE_COLUMNS)} FROM task_usage")]
    finally:
        db.close()
    return {row.pop("task_key"): row for row in rows if row["interactions"] or row["failed_calls"]}


def assert_rollups_equal_the_local_ones(admin_url: str, developer: Developer) -> None:
    teams, own = team_usage(admin_url, developer.name), local_usage(developer)
    assert sorted(teams) == sorted(own)
    for task_key, usage in own.items():
        assert {column: teams[task_key][column] for column in _COUNTS} == {column: usage[column] for column in _COUNTS}, task_key
        for column in _MONEY:  # exact decimal sums on the server; the local REAL sum may differ in its last bit
            assert float(teams[task_key][column]) == pytest.approx(usage[column], rel=1e-12, abs=1e-15), (task_key, column)
    with psycopg.connect(admin_url) as conn:
        minutes = set(
            conn.execute("SELECT task_id, minute FROM taskmeter.task_minutes WHERE developer = %s", (developer.name,)).fetchall()
        )
        runs = conn.execute(
            'SELECT task_id, start, "end" FROM taskmeter.task_activity_runs WHERE developer = %s ORDER BY 1, 2', (developer.name,)
        ).fetchall()
        rework = conn.execute(
            "SELECT task_id, session_key, flagged_at, split_part(flagged_id, ':', 2), calls, tokens, cost_usd"
            " FROM taskmeter.session_rework WHERE developer = %s ORDER BY 1, 2",
            (developer.name,),
        ).fetchall()
    db = sqlite3.connect(developer.db_path)
    try:
        assert minutes == set(db.execute("SELECT task_id, minute FROM task_activity").fetchall())
        assert runs == db.execute("SELECT task_id, start, end FROM task_activity_runs ORDER BY 1, 2").fetchall()
        own_rework = db.execute("SELECT * FROM session_rework ORDER BY 1, 2").fetchall()
    finally:
        db.close()
    assert [row[:6] for row in rework] == [row[:6] for row in own_rework]
    assert [float(row[6]) for row in rework] == pytest.approx([row[6] for row in own_rework], rel=1e-12)


def assert_same(teams, own, where: str = "report") -> None:
    """Equal, but sums of money to the last bit: the server's are exact decimal sums of the
    calls' costs, the local ones REAL sums in the order the calls came."""
    if isinstance(own, float) and isinstance(teams, float):
        assert teams == pytest.approx(own, rel=1e-12), where
    elif isinstance(own, dict) and isinstance(teams, dict):
        assert sorted(teams) == sorted(own), where
        for key in own:
            assert_same(teams[key], own[key], f"{where}.{key}")
    elif isinstance(own, list) and isinstance(teams, list):
        assert len(teams) == len(own), where
        for n, (one, other) in enumerate(zip(teams, own, strict=True)):
            assert_same(one, other, f"{where}[{n}]")
    else:
        assert teams == own, where


def ask_in_session(origin: str, count: int, session: str) -> None:
    headers = {"x-claude-code-session-id": session}
    claude = anthropic.Anthropic(base_url=f"{origin}/anthropic", api_key="sk-test", max_retries=0, default_headers=headers)
    for n in range(count):
        claude.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": f"step {n}"}])


def sync(developer: Developer) -> None:
    done = developer.meter("team", "sync", "--once")
    assert done.returncode == 0, done.stderr


def test_rollups_follow_retags_flags_and_unflags_and_team_reports_stay_each_developers_own(
    tmp_path,
    pg_server,  # noqa: F811
    team,  # noqa: F811
):
    database, (alice, bob) = team
    alice.ok("set-task", "P1-001", "--estimate", "1h")
    alice.ok("phase", "P1", "--surprise", "retags")
    proxy = alice.start_proxy()
    ask_openai(proxy.origin, 3)
    proxy.rows(wait_for=3)
    alice.ok("set-task", "P1-002", "--estimate", "2h")
    ask_in_session(proxy.origin, 4, "review-1")  # ours[3:7]: the calls after a flagged one are its rework
    ours = proxy.rows(wait_for=7)
    proxy.stop()
    alice.ok("flag", ours[0]["id"], "--note", "invented an API")
    alice.ok("flag", ours[4]["id"])
    alice.ok("mark", "approved", "P1-001", "--force")
    proxy = bob.start_proxy()
    bob.ok("set-task", "P2-001", "--create")  # a phase of his own: P1's fields stay alice's
    ask_openai(proxy.origin, 2)
    theirs = proxy.rows(wait_for=2)
    proxy.stop()
    bob.ok("flag", theirs[1]["id"])
    for developer in (alice, bob):
        developer.join(database)
        sync(developer)
    admin_url = pg_server.admin_url(database)
    for developer in (alice, bob):
        assert_rollups_equal_the_local_ones(admin_url, developer)

    # Newer revisions of synced calls: moved between tasks (a flagged one too), flags taken back and added.
    alice.ok("retag", ours[1]["id"], "--to", "P1-002")
    alice.ok("retag", ours[4]["id"], "--to", "P1-001")  # the session's flagged call
    alice.ok("retag", ours[6]["id"], "--to", "P1-001")  # and a call after it
    alice.ok("unflag", ours[0]["id"])
    alice.ok("flag", ours[2]["id"])
    alice.ok("flag", ours[3]["id"])  # the session's first call, on P1-002
    bob.ok("retag", theirs[0]["id"], "--to", "P2-002", "--create")
    bob.ok("flag", theirs[0]["id"])
    for developer in (alice, bob):
        sync(developer)
        sync(developer)  # a resend changes nothing
        assert_rollups_equal_the_local_ones(admin_url, developer)
    with psycopg.connect(admin_url) as conn:
        moved = conn.execute(
            "SELECT task_key, flagged FROM taskmeter.task_usage WHERE developer = %s ORDER BY task_key", (alice.name,)
        ).fetchall()
        rework = conn.execute(
            "SELECT task_id, calls FROM taskmeter.session_rework WHERE developer = %s ORDER BY 1, 2", (alice.name,)
        ).fetchall()
    assert moved == [("P1-001", 2), ("P1-002", 1)], "alice's flags: the call moved to P1-001, the new ones"
    assert rework == [("P1-001", 0), ("P1-001", 1), ("P1-002", 1)], (
        "ours[2] alone; after ours[4]: ours[6]; after ours[3]: ours[5]"
    )

    # Alice's share of the team's phase, read from the rollups, is her own phase report
    # (bob's switches would end her tasks' time as current in the team's: docs/team.md).
    now = now_stored()
    os.environ["PGPASSFILE"] = str(pg_server.passfile)
    try:
        url = pg_server.url(alice.name, database)
        with team_reports.team_database(url, phases=["P1"], developer=alice.name) as db:
            alices_share = phase_report(db, "P1", now=now)
        with team_reports.team_database(url, tasks=["P1-001"], developer=alice.name) as db:
            alices_task = task_report(db, "P1-001", now=now)
        with team_reports.team_database(url, phases=["P1"]) as db:
            teams = phase_report(db, "P1", now=now)
    finally:
        del os.environ["PGPASSFILE"]
    local = connection.connect(alice.db_path, create=False)
    try:
        assert_same(alices_share, phase_report(local, "P1", now=now))
        assert_same(alices_task, task_report(local, "P1-001", now=now))
    finally:
        local.close()
    assert alices_task["after_approval"]["ai_interactions"] == 0
    assert teams["ai_interactions_total"] == 7 and teams["hallucination_count_total"] == 3
    split = bob.json("report", "phase", "P2", "--team")["developers"]
    assert [(share["developer"], share["ai_interactions"], share["hallucination_count"]) for share in split] == [(bob.name, 2, 2)]
    assert bob.json("report", "task", "P2-002", "--team")["ai_interactions"] == 1


def test_setup_upgrades_a_store_of_the_schema_before_with_rollups_from_its_rows(
    tmp_path,
    pg_server,  # noqa: F811
    team_database,  # noqa: F811
    upstream,  # noqa: F811
):
    database, suffix = team_database
    name = f"olga_{suffix}"
    setup_team(pg_server, database, [name])
    olga = Developer(tmp_path / "olga", name, pg_server, upstream.port)
    olga.ok("set-task", "P1-001", "--estimate", "1h")
    proxy = olga.start_proxy()
    ask_openai(proxy.origin, 2)
    ask_anthropic(proxy.origin, 1)
    rows = proxy.rows(wait_for=3)
    proxy.stop()
    olga.ok("flag", rows[1]["id"])
    olga.join(database)
    sync(olga)

    # The same rows in a store made by the schema before t003, as a meter of then sent them.
    older = f"{database}_older"
    with psycopg.connect(pg_server.admin_url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {older}")
    with psycopg.connect(pg_server.admin_url(older)) as admin:
        schema.setup(admin, [name], upto=schema.KNOWN.index("t003_rollups"))
    with psycopg.connect(pg_server.admin_url(database)) as source, psycopg.connect(pg_server.admin_url(older)) as target:
        for table in ("calls", "records", "fields"):
            with (
                source.cursor().copy(f"COPY taskmeter.{table} TO STDOUT") as out,
                target.cursor().copy(f"COPY taskmeter.{table} FROM STDIN") as into,
            ):
                for block in out:
                    into.write(block)
    os.environ["PGPASSFILE"] = str(pg_server.passfile)
    try:
        with pytest.raises(TeamStoreError, match=r"has an older schema \(without t003_rollups\)"):
            with team_reports.team_database(pg_server.url(name, older), phases=["P1"]):
                pass
    finally:
        del os.environ["PGPASSFILE"]
    upgrade = setup_team(pg_server, older, [])
    assert "applied t003_rollups" in upgrade
    with psycopg.connect(pg_server.admin_url(database)) as first, psycopg.connect(pg_server.admin_url(older)) as upgraded:
        for query in (
            f"SELECT task_key, developer, calls, {', '.join(schema.USAGE_COLUMNS)} FROM taskmeter.task_usage ORDER BY 1, 2",
            "SELECT task_id, developer, minute, calls FROM taskmeter.task_minutes ORDER BY 1, 2, 3",
        ):
            kept = first.execute(query).fetchall()
            assert kept and upgraded.execute(query).fetchall() == kept, "the rollups the rows make, kept or rebuilt"
    os.environ["PGPASSFILE"] = str(pg_server.passfile)
    try:
        with team_reports.team_database(pg_server.url(name, older), phases=["P1"]) as db:
            upgraded_report = phase_report(db, "P1", now="2030-01-01T00:00:00.000000Z")
        with team_reports.team_database(pg_server.url(name, database), phases=["P1"]) as db:
            assert upgraded_report == phase_report(db, "P1", now="2030-01-01T00:00:00.000000Z")
    finally:
        del os.environ["PGPASSFILE"]
    assert upgraded_report["ai_interactions_total"] == 3 and upgraded_report["hallucination_count_total"] == 1
