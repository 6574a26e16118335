"""On a one-developer team, the team store's reports are the developer's own:
the phase's Level 2 record, a task's Level 1 log, the overview and the usage
reports, computed by the same code over the synced rows."""

import os
import re

import httpx
import pytest

from taskmeter.analytics.history import current_intervals
from taskmeter.analytics.reports import phase_report, task_report
from taskmeter.store import connection
from taskmeter.team import reports as team_reports
from taskmeter.timefmt import now_stored
from tests.pg_server import pg_server, team_database  # noqa: F401  (fixtures)
from tests.team_harness import Developer, setup_team
from tests.test_dashboard import RunningDashboard
from tests.test_team_sync import ask_anthropic, ask_openai, upstream  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e


def test_a_one_developer_teams_reports_equal_the_developers_own(tmp_path, pg_server, team_database, upstream):  # noqa: F811
    database, suffix = team_database
    name = f"solo_{suffix}"
    setup_team(pg_server, database, [name])
    solo = Developer(tmp_path / "solo", name, pg_server, upstream.port)
    solo.ok("set-task", "P1-001", "--estimate", "30m", "--title", "login form")
    solo.ok("phase", "P1", "--surprise", "tokens went down")
    proxy = solo.start_proxy()
    ask_openai(proxy.origin, 3)
    rows = proxy.rows(wait_for=3)
    solo.ok("flag", rows[1]["id"], "--note", "invented an API")
    solo.ok("mark", "initial")
    solo.ok("iteration", "--note", "the form again")
    solo.ok("task", "P1-001", "--estimate", "45m", "--success", "pass", "--coverage-actual", "91")
    solo.ok("mark", "tests")
    solo.ok("mark", "validated")
    solo.ok("mark", "approved")
    solo.ok("set-task", "P1-002", "--estimate", "1s")  # it runs over
    ask_anthropic(proxy.origin, 2)
    proxy.rows(wait_for=5)
    solo.ok("mark", "approved", "P1-002", "--force")
    solo.ok("set-task", "P1-003", "--estimate", "2h")  # left open: its time as current ends with a switch
    ask_openai(proxy.origin, 1)
    proxy.rows(wait_for=6)
    solo.ok("set-task", "P2-001", "--create")  # the switch is another phase's task
    ask_openai(proxy.origin, 1)
    proxy.rows(wait_for=7)
    solo.ok("mark", "approved", "P2-001", "--force")
    proxy.stop()
    solo.join(database)
    assert solo.meter("team", "sync", "--once").returncode == 0

    # P1 has an open task, whose record depends on the time it is read: both read at one `now`.
    now = now_stored()
    os.environ["PGPASSFILE"] = str(pg_server.passfile)
    try:
        url = pg_server.url(name, database)
        with team_reports.team_database(url, phases=["P1"]) as db:
            team_phase = phase_report(db, "P1", now=now)
        with team_reports.team_database(url, tasks=["P1-003"]) as db:
            team_task = task_report(db, "P1-003", now=now)
            # Its time as current ended with the switch to P2-001, another phase's task.
            assert [until is not None for _, until in current_intervals(db, ["P1-003"])["p1-003"]] == [True]
    finally:
        del os.environ["PGPASSFILE"]
    local = connection.connect(solo.db_path, create=False)
    try:
        assert team_phase == phase_report(local, "P1", now=now)
        assert team_task == task_report(local, "P1-003", now=now)
    finally:
        local.close()
    assert team_task["status"] == "open" and team_task["actual_duration"] is not None

    for report in (["phase", "P2"], ["task", "P1-001"], ["task", "P1-002"]):
        own = solo.json("report", *report)
        teams = solo.json("report", *report, "--team")
        split = teams.pop("developers")
        assert teams == own, report
        assert [share["developer"] for share in split] == [name]
        assert split[0]["tokens"] == own.get("token_count_used", own.get("total_tokens_used"))
    assert solo.json("report", "--team") == solo.json("report")
    for period in ("daily", "monthly", "models"):
        assert solo.json("report", period, "--team") == solo.json("report", period), period
    assert solo.json("report", "daily", "--team", "--developer", name) == solo.json("report", "daily")
    nobody = solo.json("report", "models", "--team", "--developer", "nobody")
    assert nobody["models"] == [] and nobody["totals"]["ai_interactions"] == 0


def test_the_dashboards_team_page_shows_each_developers_share_and_the_tasks_that_ran_over(
    tmp_path,
    pg_server,  # noqa: F811
    team_database,  # noqa: F811
    upstream,  # noqa: F811
):
    database, suffix = team_database
    names = [f"ann_{suffix}", f"ben_{suffix}"]
    setup_team(pg_server, database, names)
    ann, ben = (Developer(tmp_path / name, name, pg_server, upstream.port) for name in names)
    ann.ok("set-task", "P1-001", "--estimate", "1s")
    ben.ok("set-task", "P1-002", "--estimate", "8h")
    for developer, calls in ((ann, 2), (ben, 3)):
        proxy = developer.start_proxy()
        ask_openai(proxy.origin, calls)
        rows = proxy.rows(wait_for=calls)
        proxy.stop()
        developer.ok("flag", rows[0]["id"])
        developer.ok("mark", "approved", "--force")
        developer.join(database)
        assert developer.meter("team", "sync", "--once").returncode == 0
    dashboard = RunningDashboard(ann.db_path, env={**ann.env, "METER_CONFIG": str(ann.config)})
    try:
        page = httpx.get(f"{dashboard.origin}/team", headers=dashboard.cookie, timeout=30)
        assert page.status_code == 200, page.text
        developers = _table(page.text, "developers")
        assert [row[:2] for row in developers] == [[names[0], "2"], [names[1], "3"], ["Team", "5"]]
        assert [row[5] for row in developers] == ["1", "1", "2"], "flags per developer"
        assert [row[0].split()[0] for row in _table(page.text, "over")] == ["P1-001"]
        missing = httpx.get(f"{dashboard.origin}/team/P9", headers=dashboard.cookie, timeout=30)
        assert missing.status_code in (400, 404) and "no phase P9" in missing.text
    finally:
        dashboard.stop()


def _table(html: str, table_id: str) -> list[list[str]]:
    """The cells of each body row of the table with this id, as text."""
    body = html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0].split("<tbody>", 1)[1]
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]
