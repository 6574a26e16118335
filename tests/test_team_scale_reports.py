"""Team reports that read no more as the store grows, on a real PostgreSQL with real
proxies and SDK calls: each developer's share of a phase or task is computed in one
pass from the rows the team report read, and equals that developer's own report; the
overview and the usage reports read the server's rollups (usage_quarters, t004), which
count every call exactly once through resends, retags, flags and unflags."""

import sqlite3
from datetime import UTC, datetime, timedelta

import anthropic
import psycopg
import pytest

from tests.fake_upstream import Scenario
from tests.pg_server import pg_server, team_database  # noqa: F401  (fixtures)
from tests.team_harness import Developer
from tests.test_team_sync import MESSAGES, ask_anthropic, ask_openai, team, upstream  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e

# The figures of a developer's share, and the phase's and the task's field each one is.
PHASE_SHARE = {
    "ai_interactions": "ai_interactions_total",
    "tokens": "total_tokens_used",
    "cost_usd": "cost_usd",
    "working_seconds": "actual_total",
    "hallucination_count": "hallucination_count_total",
    "failed_calls": "failed_calls",
}
TASK_SHARE = {**PHASE_SHARE, "ai_interactions": "ai_interactions", "tokens": "token_count_used"}
TASK_SHARE.update(working_seconds="actual_duration", hallucination_count="hallucination_count")


def assert_share(share: dict, own: dict, fields: dict[str, str]) -> None:
    """A developer's share is their own record's figures; cost to the last bit aside (the
    server's is an exact decimal sum, the meter's a REAL sum in the order its calls came)."""
    assert {key: share[key] for key in fields if key != "cost_usd"} == {
        key: own[field] for key, field in fields.items() if key != "cost_usd"
    }
    assert share["cost_usd"] == pytest.approx(own["cost_usd"], rel=1e-12)


def sync(developer: Developer) -> None:
    done = developer.meter("team", "sync", "--once")
    assert done.returncode == 0, done.stderr


def fail_one_call(upstream, origin: str) -> None:  # noqa: F811
    """One Messages call the upstream answers 500: a failed call."""
    upstream.routes[MESSAGES], kept = Scenario(status=500, body=b'{"type": "error"}'), upstream.routes[MESSAGES]
    try:
        with pytest.raises(anthropic.InternalServerError):
            claude = anthropic.Anthropic(base_url=f"{origin}/anthropic", api_key="sk-test", max_retries=0)
            claude.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    finally:
        upstream.routes[MESSAGES] = kept


def test_each_developers_share_of_a_phase_and_a_task_is_that_developers_own_report(pg_server, team, upstream):  # noqa: F811
    database, (alice, bob) = team
    alice.ok("set-task", "P1-001", "--estimate", "1h")
    proxy = alice.start_proxy()
    ask_openai(proxy.origin, 3)
    calls = proxy.rows(wait_for=3)
    alice.ok("mark", "initial")
    alice.ok("set-task", "P1-002", "--estimate", "2h")
    ask_anthropic(proxy.origin, 2)
    proxy.rows(wait_for=5)
    proxy.stop()
    alice.ok("flag", calls[1]["id"])
    for task in ("P1-001", "P1-002"):
        alice.ok("mark", "approved", task, "--force")
    bob.ok("set-task", "P1-003", "--estimate", "30m")
    proxy = bob.start_proxy()
    ask_openai(proxy.origin, 2)
    fail_one_call(upstream, proxy.origin)
    theirs = proxy.rows(wait_for=3)
    bob.ok("iteration", "--note", "again")
    ask_anthropic(proxy.origin, 1)
    proxy.rows(wait_for=4)
    proxy.stop()
    bob.ok("flag", theirs[0]["id"])
    bob.ok("mark", "approved", "P1-003", "--force")
    for developer in (alice, bob):
        developer.join(database)
        sync(developer)

    phase = alice.json("report", "phase", "P1", "--team")
    shares = {share["developer"]: share for share in phase["developers"]}
    assert sorted(shares) == sorted([alice.name, bob.name])
    for developer in (alice, bob):
        assert_share(shares[developer.name], developer.json("report", "phase", "P1"), PHASE_SHARE)
    assert shares[bob.name]["failed_calls"] == 1 and shares[alice.name]["hallucination_count"] == 1
    assert shares[alice.name]["working_seconds"] > 0 and shares[bob.name]["working_seconds"] > 0
    for key, field in PHASE_SHARE.items():
        if key not in ("working_seconds", "cost_usd"):
            assert phase[field] == sum(share[key] for share in shares.values()), key

    # One developer's task: the split has that developer alone, and it is their own task report.
    task = bob.json("report", "task", "P1-003", "--team")
    own = bob.json("report", "task", "P1-003")
    assert [share["developer"] for share in task["developers"]] == [bob.name]
    assert_share(task["developers"][0], own, TASK_SHARE)
    # --developer keeps one developer's rows, and their share alone.
    only = alice.json("report", "phase", "P1", "--team", "--developer", alice.name)
    assert [share["developer"] for share in only["developers"]] == [alice.name]
    assert only["ai_interactions_total"] == alice.json("report", "phase", "P1")["ai_interactions_total"] == 5


def team_quarters(admin_url: str, name: str) -> dict[tuple, dict]:
    with psycopg.connect(admin_url) as conn:
        cursor = conn.execute("SELECT * FROM taskmeter.usage_quarters WHERE developer = %s", (name,))
        columns = [column.name for column in cursor.description or []]
        rows = [dict(zip(columns, row, strict=True)) for row in cursor]
    for row in rows:
        del row["developer"]
    return {(row.pop("quarter"), row.pop("model"), row.pop("task_key")): row for row in rows}


def local_quarters(developer: Developer) -> dict[tuple, dict]:
    db = sqlite3.connect(developer.db_path)
    db.row_factory = sqlite3.Row
    try:
        rows = [dict(row) for row in db.execute("SELECT * FROM usage_quarters WHERE ai_interactions + failed_calls > 0")]
    finally:
        db.close()
    return {(row.pop("quarter"), row.pop("model"), row.pop("task_key")): row for row in rows}


def assert_quarters_equal_the_local_ones(admin_url: str, developer: Developer) -> None:
    """The server's usage_quarters of one developer are the meter's own, row for row (cost to
    the last bit aside: the server's is an exact decimal sum)."""
    teams, own = team_quarters(admin_url, developer.name), local_quarters(developer)
    assert sorted(teams) == sorted(own), developer.name
    for key, row in own.items():
        cost = row.pop("cost_usd")
        assert {column: teams[key][column] for column in row} == row, key
        assert float(teams[key]["cost_usd"]) == pytest.approx(cost, rel=1e-12, abs=1e-15), key


def totals(report: dict) -> tuple:
    stats = report["totals"]
    return stats["ai_interactions"], stats["failed_calls"], stats["tokens"]["total"], stats["hallucination_count"]


def test_usage_rollups_count_each_call_once_through_resends_retags_and_flags(pg_server, team, upstream):  # noqa: F811
    database, (alice, bob) = team
    admin_url = pg_server.admin_url(database)
    alice.ok("set-task", "P1-001", "--estimate", "1h")
    proxy = alice.start_proxy()
    ask_openai(proxy.origin, 3)
    ask_anthropic(proxy.origin, 1)
    ours = proxy.rows(wait_for=4)
    proxy.stop()
    alice.ok("flag", ours[0]["id"])
    bob.ok("set-task", "P1-002", "--estimate", "2h")
    proxy = bob.start_proxy()
    ask_anthropic(proxy.origin, 2)
    fail_one_call(upstream, proxy.origin)
    theirs = proxy.rows(wait_for=3)
    proxy.stop()
    bob.ok("flag", theirs[1]["id"])
    for developer in (alice, bob):
        developer.join(database)
        sync(developer)

    def assert_team_is_the_sum_of_the_meters() -> None:
        for developer in (alice, bob):
            assert_quarters_equal_the_local_ones(admin_url, developer)
        for period in ("daily", "monthly", "models"):
            teams = alice.json("report", period, "--team")
            own = [developer.json("report", period) for developer in (alice, bob)]
            assert totals(teams) == tuple(map(sum, zip(*(totals(report) for report in own), strict=True))), period
            assert teams["totals"]["cost_usd"] == pytest.approx(sum(report["totals"]["cost_usd"] for report in own))
            for developer, report in zip((alice, bob), own, strict=True):  # one developer's rows: their own report
                assert alice.json("report", period, "--team", "--developer", developer.name) == report, period
        overview = alice.json("report", "--team")
        own = [developer.json("report") for developer in (alice, bob)]
        for key in ("ai_interactions_total", "total_tokens_used"):
            assert overview["phases"][0][key] == sum(report["phases"][0][key] for report in own), key
        assert overview["phases"][0]["cost_usd"] == pytest.approx(sum(report["phases"][0]["cost_usd"] for report in own))
        assert overview["unassigned"]["ai_interactions"] == 0

    assert_team_is_the_sum_of_the_meters()
    # A resend: the whole history again, as newer revisions of the same rows, changes no sum.
    for developer in (alice, bob):
        developer.ok("team", "leave", "--force")
        developer.join(database)
        sync(developer)
        sync(developer)
    assert_team_is_the_sum_of_the_meters()
    # Newer revisions: a call moved to another task, a flag taken back, another added.
    alice.ok("retag", ours[1]["id"], "--to", "P1-003", "--create")
    alice.ok("unflag", ours[0]["id"])
    alice.ok("flag", ours[3]["id"])
    bob.ok("retag", theirs[1]["id"], "--to", "P1-001", "--create")  # his flagged call, onto alice's task
    for developer in (alice, bob):
        sync(developer)
    assert_team_is_the_sum_of_the_meters()
    moved = alice.json("report", "daily", "--team", "--task", "P1-003")
    assert totals(moved)[:2] == (1, 0)
    assert alice.json("report", "daily", "--team", "--task", "P1-001", "--developer", alice.name) == alice.json(
        "report", "daily", "--task", "P1-001"
    )

    # A window that does not start on a quarter hour reads the window's calls: still each meter's own.
    first = min(row["started_at"] for row in ours)
    since = (datetime.fromisoformat(first) - timedelta(minutes=7, seconds=3)).astimezone(UTC).isoformat()
    for period in ("daily", "models"):
        assert alice.json("report", period, "--team", "--developer", alice.name, "--since", since) == alice.json(
            "report", period, "--since", since
        ), period
