"""What each team report reads, on a real PostgreSQL with real proxies and SDK calls:
`sessions` and `blocks` read only the calls they cover (their window, task or
provider), and equal a one-developer team's own reports, in every window; two
developers' add up to their own. Every cost a team report shows is the
developer's own to the last digit shown, in every report."""

from datetime import UTC, datetime, timedelta

import pytest

from taskmeter.money import usd
from tests.pg_server import pg_server, team_database  # noqa: F401  (fixtures)
from tests.proxy_harness import claude_code_turn
from tests.team_harness import Developer
from tests.test_team_sync import ask_anthropic, ask_openai, team, upstream  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e


def sync(developer: Developer) -> None:
    done = developer.meter("team", "sync", "--once")
    assert done.returncode == 0, done.stderr


def shown_costs(report) -> list[str]:
    """Every cost in a report (any field ending in usd), as a table shows it."""
    if isinstance(report, dict):
        return [
            shown
            for key, value in report.items()
            for shown in ([usd(value)] if key.endswith("usd") and isinstance(value, float) else shown_costs(value))
        ]
    if isinstance(report, list):
        return [shown for value in report for shown in shown_costs(value)]
    return []


def settled(report: dict) -> dict:
    """A report without what depends on the moment it ran: an active block's time left and projection."""
    blocks = [
        {**block, "time_left_seconds": block["time_left_seconds"] is not None, "projected": block["projected"] is not None}
        for block in report.get("blocks", [])
    ]
    return {**report, **({"blocks": blocks} if "blocks" in report else {})}


def moment(stored: str, **shift: float) -> str:
    return (datetime.fromisoformat(stored) + timedelta(**shift)).astimezone(UTC).isoformat()


def work(developer: Developer, session: str) -> list[dict]:
    """Calls on two tasks: an agent session's (Claude Code) on each, and plain SDK calls."""
    developer.ok("set-task", "P1-001", "--estimate", "1h")
    proxy = developer.start_proxy()
    claude_code_turn(proxy, "first", session)
    ask_openai(proxy.origin, 2)
    rows = proxy.rows(wait_for=3)
    developer.ok("set-task", "P1-002", "--estimate", "2h")
    claude_code_turn(proxy, "second", session)
    ask_anthropic(proxy.origin, 1)
    rows = proxy.rows(wait_for=5)
    proxy.stop()
    developer.ok("flag", rows[0]["id"])
    return rows


def test_a_one_developer_teams_sessions_and_blocks_and_every_cost_shown_are_the_developers_own(pg_server, team):  # noqa: F811
    database, (solo, _) = team
    rows = work(solo, "5e1c0d2a-team-paths-solo")
    solo.join(database)
    sync(solo)

    first = min(row["started_at"] for row in rows)
    windows = [
        [],
        ["--since", moment(first, seconds=1)],  # not on a quarter hour: the window's calls
        ["--until", moment(first, seconds=1)],
        ["--since", moment(first, days=1)],  # nothing in it
    ]
    for window in windows:
        for report in (["sessions"], ["blocks"], ["blocks", "--provider", "anthropic"], ["sessions", "--task", "p1-002"]):
            own = settled(solo.json("report", *report, *window))
            assert settled(solo.json("report", *report, *window, "--team")) == own, (report, window)
            assert settled(solo.json("report", *report, *window, "--team", "--developer", solo.name)) == own, (report, window)
    sessions = solo.json("report", "sessions", "--team")["sessions"]
    assert [session["ai_interactions"] for session in sessions] == [2], "the agent's session, never the plain SDK calls"
    assert solo.json("report", "sessions", "--task", "P1-002", "--team")["totals"]["ai_interactions"] == 1
    assert solo.json("report", "blocks", "--team", "--provider", "openai")["blocks"][0]["ai_interactions"] == 2

    # Every cost a team report shows is the developer's own, to the last digit shown.
    for report in (
        [],
        ["task", "P1-001"],
        ["task", "P1-002"],
        ["phase", "P1"],
        ["daily"],
        ["hourly"],
        ["monthly"],
        ["models"],
        ["daily", "--task", "P1-001"],
        ["sessions"],
        ["blocks"],
    ):
        own = shown_costs(settled(solo.json("report", *report)))
        assert own, report
        teams = settled(solo.json("report", *report, "--team"))
        teams.pop("developers", None)
        assert shown_costs(teams) == own, report


def test_two_developers_sessions_and_blocks_are_the_sum_of_their_own(pg_server, team):  # noqa: F811
    database, developers = team
    for developer in developers:
        work(developer, f"7a2b-{developer.name}")
        developer.join(database)
        sync(developer)
    alice = developers[0]

    own = [developer.json("report", "sessions") for developer in developers]
    teams = alice.json("report", "sessions", "--team")
    assert sorted(session["session_id"] for session in teams["sessions"]) == sorted(
        session["session_id"] for report in own for session in report["sessions"]
    )
    for key in ("ai_interactions", "failed_calls", "hallucination_count"):
        assert teams["totals"][key] == sum(report["totals"][key] for report in own), key
    assert teams["totals"]["tokens"]["total"] == sum(report["totals"]["tokens"]["total"] for report in own)
    assert teams["totals"]["cost_usd"] == pytest.approx(sum(report["totals"]["cost_usd"] for report in own), rel=1e-12)

    blocks = [block for block in alice.json("report", "blocks", "--team")["blocks"] if not block["gap"]]
    own_blocks = [block for developer in developers for block in developer.json("report", "blocks")["blocks"] if not block["gap"]]
    assert sum(block["ai_interactions"] for block in blocks) == sum(block["ai_interactions"] for block in own_blocks) == 10
    assert sum(block["tokens"]["total"] for block in blocks) == sum(block["tokens"]["total"] for block in own_blocks)
    for developer in developers:  # one developer's rows: their own report
        assert settled(alice.json("report", "blocks", "--team", "--developer", developer.name)) == settled(
            developer.json("report", "blocks")
        )
