"""The team store on a real PostgreSQL: developers' meters with real proxies and
SDK calls sync into one store, exactly once, across a SIGKILL between the
server's COMMIT and the local mark and across a server restart; row-level
security keeps each developer to their own rows; team reports add up."""

import json
import os
import signal
import sqlite3
import subprocess

import anthropic
import openai
import psycopg
import pytest

from tests.fake_upstream import FakeUpstream, Scenario
from tests.pg_server import pg_server, team_database  # noqa: F401  (fixtures)
from tests.proxy_harness import VENV_BIN
from tests.team_harness import Developer, setup_team, team_calls, wait_for

pytestmark = pytest.mark.e2e

CHAT, MESSAGES = "/v1/chat/completions", "/v1/messages"
CHAT_ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "an answer"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 70, "completion_tokens": 8},
    }
).encode()
MESSAGE_ANSWER = json.dumps(
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [{"type": "text", "text": "an answer"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 120, "output_tokens": 30},
    }
).encode()


@pytest.fixture
def upstream():
    with FakeUpstream() as fake:
        fake.routes[CHAT] = Scenario(body=CHAT_ANSWER)
        fake.routes[MESSAGES] = Scenario(body=MESSAGE_ANSWER)
        yield fake


@pytest.fixture
def team(tmp_path, pg_server, team_database, upstream):  # noqa: F811
    """Two developers, alice and bob (with this test's suffix), set up on a fresh team database."""
    database, suffix = team_database
    names = [f"alice_{suffix}", f"bob_{suffix}"]
    setup_team(pg_server, database, names)
    developers = [Developer(tmp_path / name, name, pg_server, upstream.port) for name in names]
    yield database, developers
    for developer in developers:
        if developer.proxy is not None:
            developer.proxy.stop()


def ask_openai(origin: str, count: int) -> None:
    chat = openai.OpenAI(base_url=f"{origin}/openai/v1", api_key="sk-test", max_retries=0)
    for n in range(count):
        chat.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"question {n}"}])


def ask_anthropic(origin: str, count: int) -> None:
    claude = anthropic.Anthropic(base_url=f"{origin}/anthropic", api_key="sk-test", max_retries=0)
    for n in range(count):
        claude.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": f"question {n}"}])


def expected_ids(developer: Developer) -> set[str]:
    device = developer.device()
    return {f"{device}:{call_id}" for call_id in developer.local_call_ids()}


def test_two_developers_meters_sync_into_one_store_and_team_reports_add_up(pg_server, team):  # noqa: F811
    database, (alice, bob) = team
    alice.ok("set-task", "P1-001", "--estimate", "1h")
    bob.ok("set-task", "P1-002", "--estimate", "2h")
    for developer in (alice, bob):
        assert "rows to send" in developer.join(database)
        developer.start_proxy()
    ask_openai(alice.proxy.origin, 3)
    ask_anthropic(alice.proxy.origin, 1)
    ask_anthropic(bob.proxy.origin, 2)
    alice.proxy.rows(wait_for=4)
    bob.proxy.rows(wait_for=2)
    bob.ok("set-task", "P1-001", "--create")  # bob joins alice's task, shared by the team:
    bob.ok("task", "P1-001", "--estimate", "3h")  # the latest writer of a field wins
    wanted = expected_ids(alice) | expected_ids(bob)
    assert len(wanted) == 6
    wait_for(lambda: {row[0] for row in team_calls(pg_server, database)} == wanted, what="both meters' calls")
    stored = team_calls(pg_server, database)
    assert len(stored) == 6, "every call exactly once"
    by_developer = {
        developer.name: {f"{developer.device()}:{i}" for i in developer.local_call_ids()} for developer in (alice, bob)
    }
    assert {call_id for call_id, name, _ in stored if name == alice.name} == by_developer[alice.name]
    assert {call_id for call_id, name, _ in stored if name == bob.name} == by_developer[bob.name]

    def estimate_in_team():
        with psycopg.connect(pg_server.admin_url(database)) as conn:
            row = conn.execute(
                "SELECT value, developer FROM taskmeter.fields WHERE id = 'task:P1-001:estimate_seconds'"
            ).fetchone()
        return row

    wait_for(lambda: estimate_in_team() == (10800, bob.name), what="bob's estimate of the shared task")

    local = [developer.json("report") for developer in (alice, bob)]
    teamwide = alice.json("report", "--team")
    for key in ("ai_interactions_total", "total_tokens_used"):
        assert teamwide["phases"][0][key] == sum(report["phases"][0][key] for report in local), key
    assert teamwide["phases"][0]["cost_usd"] == pytest.approx(sum(report["phases"][0]["cost_usd"] for report in local))
    daily = alice.json("report", "daily", "--team")
    assert daily["totals"]["ai_interactions"] == 6
    assert daily["totals"]["tokens"]["total"] == sum(d.json("report", "daily")["totals"]["tokens"]["total"] for d in (alice, bob))
    only_bob = alice.json("report", "models", "--team", "--developer", bob.name)
    assert [(model["model"], model["ai_interactions"]) for model in only_bob["models"]] == [("claude-sonnet-4-6", 2)]

    phase = alice.json("report", "phase", "P1", "--team")
    split = {share["developer"]: share for share in phase["developers"]}
    assert split[alice.name]["ai_interactions"] == 4 and split[bob.name]["ai_interactions"] == 2
    assert split[alice.name]["tokens"] + split[bob.name]["tokens"] == phase["total_tokens_used"]
    task = alice.json("report", "task", "P1-001", "--team")
    assert task["estimated_duration"] == 3600, "the first estimate stays ESTIMATED_DURATION"
    assert task["estimate_latest"] == 10800, "bob's later estimate is the task's latest"
    assert [share["developer"] for share in task["developers"]] == sorted([alice.name, bob.name])
    shown = alice.ok("report", "task", "P1-001", "--team")
    assert f"{alice.name}: 4 calls" in shown
    with psycopg.connect(pg_server.admin_url(database)) as conn:
        kinds = dict(conn.execute("SELECT kind, count(*) FROM taskmeter.records GROUP BY kind").fetchall())
    assert "call_text" not in kinds, "what calls said stays on the machine without [team] share_text"


def test_what_calls_said_is_shared_only_with_share_text(pg_server, team):  # noqa: F811
    database, (alice, _) = team
    alice.ok("set-task", "P1-001")
    alice.config.write_text(alice.config.read_text() + "[team]\nshare_text = true\n")
    alice.join(database)
    alice.start_proxy()
    ask_openai(alice.proxy.origin, 2)
    alice.proxy.rows(wait_for=2)

    def shared_texts():
        with psycopg.connect(pg_server.admin_url(database)) as conn:
            return conn.execute("SELECT row->>'response' FROM taskmeter.records WHERE kind = 'call_text'").fetchall()

    wait_for(lambda: len(shared_texts()) == 2, what="the calls' texts")
    assert shared_texts() == [("an answer",), ("an answer",)]


def test_a_meter_killed_between_the_servers_commit_and_the_local_mark_sends_each_call_once(pg_server, team):  # noqa: F811
    database, (alice, _) = team
    alice.ok("set-task", "P1-001")
    alice.join(database)
    alice.start_proxy()
    ask_openai(alice.proxy.origin, 5)
    alice.proxy.rows(wait_for=5)
    wait_for(lambda: len(team_calls(pg_server, database)) == 5, what="the proxy's syncer")
    # Five more calls while the syncer is stopped; then the local write lock is held, so that the
    # syncer commits their batch on the server and waits to mark it: it is killed there.
    local = sqlite3.connect(alice.db_path, isolation_level=None)
    os.kill(_syncer_pid(alice), signal.SIGSTOP)
    ask_openai(alice.proxy.origin, 5)
    alice.proxy.rows(wait_for=10)
    local.execute("BEGIN IMMEDIATE")
    os.kill(_syncer_pid(alice), signal.SIGCONT)
    wait_for(lambda: len(team_calls(pg_server, database)) == 10, what="the batch committed on the server")
    revisions = {call_id: rev for call_id, _, rev in team_calls(pg_server, database)}
    os.kill(_syncer_pid(alice), signal.SIGKILL)
    local.execute("ROLLBACK")
    pending = local.execute("SELECT count(*) FROM team_outbox WHERE kind = 'call'").fetchone()[0]
    assert pending == 5, "the killed syncer never marked its committed batch"
    local.close()
    alice.proxy.stop()
    done = alice.meter("team", "sync", "--once")
    assert done.returncode == 0, done.stderr
    stored = team_calls(pg_server, database)
    assert {call_id for call_id, _, _ in stored} == expected_ids(alice) and len(stored) == 10
    assert {call_id: rev for call_id, _, rev in stored} == revisions, "the resend was a no-op"
    assert alice.json("team", "status")["pending_rows"] == 0


def _syncer_pid(developer: Developer) -> int:
    from taskmeter.team.process import syncer_pid

    found = []
    wait_for(lambda: found.append(syncer_pid(developer.db_path)) or found[-1] is not None, what="the syncer")
    return found[-1]


def test_a_server_stopped_and_restarted_loses_nothing_and_doubles_nothing(pg_server, team):  # noqa: F811
    database, (alice, _) = team
    alice.ok("set-task", "P1-001")
    alice.join(database)
    alice.start_proxy()
    ask_openai(alice.proxy.origin, 3)
    alice.proxy.rows(wait_for=3)
    wait_for(lambda: len(team_calls(pg_server, database)) == 3, what="the first calls")
    pg_server.stop()
    try:
        ask_openai(alice.proxy.origin, 4)
        ask_anthropic(alice.proxy.origin, 2)
        alice.proxy.rows(wait_for=9)
        wait_for(lambda: "team sync paused" in alice.proxy.stderr(), what="the syncer saying the store is gone")
        status = alice.meter("team", "status")
        assert status.returncode == 1
        assert status.stderr.strip().splitlines() == [
            f"meter: error: cannot reach the team store at {alice.name}@127.0.0.1:{pg_server.port}/{database}"
            " (is the server running, and the URL right?)"
        ]
        assert "pending: " in status.stdout
        local = sqlite3.connect(alice.db_path)
        assert local.execute("SELECT count(*) FROM team_outbox WHERE kind = 'call'").fetchone() == (6,)
        local.close()
    finally:
        pg_server.start()
    wait_for(lambda: len(team_calls(pg_server, database)) == 9, timeout=60, what="the calls made while it was down")
    stored = team_calls(pg_server, database)
    assert {call_id for call_id, _, _ in stored} == expected_ids(alice) and len(stored) == 9
    wait_for(lambda: "reachable again" in alice.proxy.stderr(), what="the syncer saying the store is back")
    assert alice.proxy.stderr().count("team sync paused") == 1, "said once, not every retry"
    assert alice.meter("team", "status").returncode == 0


def test_one_developers_role_cannot_change_anothers_rows(pg_server, team):  # noqa: F811
    database, (alice, bob) = team
    alice.ok("set-task", "P1-001")
    alice.join(database)
    alice.start_proxy()
    ask_openai(alice.proxy.origin, 2)
    alice.proxy.rows(wait_for=2)
    wait_for(lambda: len(team_calls(pg_server, database)) == 2, what="alice's calls")
    call_id = team_calls(pg_server, database)[0][0]
    bob_url = f"postgresql://{bob.name}@127.0.0.1:{pg_server.port}/{database}"
    os.environ["PGPASSFILE"] = str(pg_server.passfile)
    try:
        with psycopg.connect(bob_url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM taskmeter.calls").fetchone()[0] == 2, "bob reads the team's rows"
            changed = conn.execute("UPDATE taskmeter.calls SET cost_usd = 0 WHERE id = %s", (call_id,))
            assert changed.rowcount == 0, "alice's row is not bob's to update"
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                conn.execute(
                    "INSERT INTO taskmeter.calls (id, device, rev, row) VALUES (%s, 'x', 999999, '{}')"
                    " ON CONFLICT (id) DO UPDATE SET rev = EXCLUDED.rev, row = EXCLUDED.row",
                    (call_id,),
                )
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                conn.execute(
                    "INSERT INTO taskmeter.calls (id, developer, device, rev, row) VALUES ('forged', %s, 'x', 1, '{}')",
                    (alice.name,),
                )
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM taskmeter.calls WHERE id = %s", (call_id,))
    finally:
        del os.environ["PGPASSFILE"]
    with psycopg.connect(pg_server.admin_url(database)) as conn:
        assert conn.execute("SELECT rev > 0, row <> '{}' FROM taskmeter.calls WHERE id = %s", (call_id,)).fetchone() == (
            True,
            True,
        )


def test_the_reporting_role_reads_everything_and_writes_nothing(pg_server, team_database):  # noqa: F811
    database, suffix = team_database
    output = setup_team(pg_server, database, [f"carol_{suffix}"])
    assert "GRANT taskmeter_developer TO" in output and "taskmeter_reporting" in output
    with psycopg.connect(pg_server.admin_url(database), autocommit=True) as admin:
        admin.execute("ALTER ROLE taskmeter_reporting PASSWORD 'reporting-password'")
    pg_server.add_password("taskmeter_reporting", "reporting-password")
    os.environ["PGPASSFILE"] = str(pg_server.passfile)
    try:
        with psycopg.connect(pg_server.url("taskmeter_reporting", database), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM taskmeter.task_usage_by_developer").fetchone() == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute("INSERT INTO taskmeter.calls (id, device, rev, row) VALUES ('x', 'x', 1, '{}')")
    finally:
        del os.environ["PGPASSFILE"]


def test_meter_team_sync_alone_refuses_a_second_syncer_for_one_database(pg_server, team):  # noqa: F811
    database, (alice, _) = team
    alice.join(database)
    first = subprocess.Popen(
        [str(VENV_BIN / "meter"), "team", "sync", "--db", str(alice.db_path)],
        env={**alice.env, "METER_CONFIG": str(alice.config)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: alice.json("team", "status")["syncer_pid"] == first.pid, what="the first syncer")
        second = alice.meter("team", "sync")
        assert second.returncode == 1
        assert second.stderr.strip() == f"meter: error: a syncer already runs for {alice.db_path} (pid {first.pid})"
    finally:
        first.kill()
        first.wait()
