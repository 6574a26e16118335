"""Issue 24's dashboard: the proxy's state, a page per call opened from the live feed,
compact call rows, the Tasks page, edits of what a person records, retag of several
calls, failed calls read as failed, the cost line in front of the bars, and Ctrl-C.
A real `meter ui` and Debian's chromium (test_dashboard.py's fixtures), real `meter
proxy` processes where calls are made, and the database read back after every write."""

# The fixtures imported from test_dashboard.py are parameters' names here, as pytest wants them.
# ruff: noqa: F811

import re
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import Page

from taskmeter import terminal
from taskmeter.lifecycle import START_ADVICE
from taskmeter.store import connection
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import RunningProxy, write_config
from tests.test_dashboard import (  # noqa: F401 (fixtures)
    RunningDashboard,
    _cli_json,
    _embedded,
    _id,
    dashboard,
    db_path,
    history,
    page,
    shared_dashboard,
    written_history,
)

pytestmark = pytest.mark.e2e

OPENAI_ANSWER = next(f for f in ALL if f.name == "openai/chat_nonstream_cached_tokens").body


def _rows(db_path: Path, query: str, *params) -> list[tuple]:
    """What the database holds, read on a connection of the test's own."""
    db = sqlite3.connect(db_path)
    try:
        return [tuple(row) for row in db.execute(query, params)]
    finally:
        db.close()


def _everything(db_path: Path) -> dict:
    """Every table a write from the dashboard may touch, whole: to show what changed, and that a refusal changed nothing."""
    return {
        table: _rows(db_path, f"SELECT * FROM {table} ORDER BY rowid")
        for table in ("tasks", "phases", "budgets", "task_estimates", "task_events", "phase_marks", "interactions")
    }


def _changed_columns(before: list[tuple], after: list[tuple], columns: list[str]) -> dict:
    """Per row (by its first value), the columns whose value differs: {row id: {column: (before, after)}}."""
    old = {row[0]: row for row in before}
    changes = {}
    for row in after:
        differ = {name: (old[row[0]][i], row[i]) for i, name in enumerate(columns) if old[row[0]][i] != row[i]}
        if differ:
            changes[row[0]] = differ
    return changes


def _columns(db_path: Path, table: str) -> list[str]:
    return [row[1] for row in _rows(db_path, f"PRAGMA table_info({table})")]


def _proxy(tmp_path: Path, db_path: Path, upstream: FakeUpstream) -> RunningProxy:
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
    return RunningProxy(config, db_path)


def _console_errors(page: Page) -> list[str]:
    """The page's console errors but the one chromium logs for a refusal's status (400, 404)."""
    return [error for error in page.errors if not re.match(r"Failed to load resource: .* status of 40[04]", error)]


def _form_token(page: Page) -> str:
    return page.locator('input[name="token"]').first.get_attribute("value")


# ---------------------------------------------------------------- the proxy's state


def test_the_navigation_bar_says_whether_a_proxy_is_recording(db_path, page, tmp_path, meter):
    connection.connect(db_path).close()
    dashboard = RunningDashboard(db_path)
    try:
        dashboard.goto(page)
        badge = page.locator("#proxy-state")
        assert "down" in badge.get_attribute("class")
        assert badge.text_content() == f"No proxy is running: AI calls are not metered ({START_ADVICE})"
        with FakeUpstream() as upstream:
            proxy = _proxy(tmp_path, db_path, upstream)
            try:
                # The open page follows without a reload, from the facts `meter status` reads.
                page.wait_for_selector("#proxy-state.recording", timeout=10_000)
                (running,) = _cli_json(meter, "status")["proxies"]
                assert badge.text_content() == f"Proxy recording: pid {running['pid']} on {running['listen']}"
                # Every page carries it.
                for path in ("/tasks", "/phases", "/history"):
                    dashboard.goto(page, path)
                    assert "recording" in page.locator("#proxy-state").get_attribute("class"), path
            finally:
                proxy.stop()
        page.wait_for_selector("#proxy-state.down", timeout=10_000)
        assert _cli_json(meter, "status")["proxies"] == []
        assert page.errors == []
    finally:
        assert dashboard.stop() == 0


# ---------------------------------------------------------------- calls through a real proxy


def test_a_call_in_the_live_feed_opens_its_page_and_failed_calls_read_failed(db_path, page, tmp_path, meter):
    with FakeUpstream() as upstream:
        proxy = _proxy(tmp_path, db_path, upstream)
        dashboard = RunningDashboard(db_path)
        try:
            dashboard.goto(page)
            page.wait_for_selector("#feed-state.live")
            client = openai.OpenAI(base_url=f"{proxy.origin}/t/P5-001/openai/v1", api_key="sk-test", max_retries=0)
            upstream.routes["/v1/chat/completions"] = Scenario(body=OPENAI_ANSWER)
            answered = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            ).headers["x-meter-interaction-id"]
            upstream.routes["/v1/chat/completions"] = Scenario(status=500, body=b'{"error": {"message": "upstream broke"}}')
            with pytest.raises(openai.InternalServerError) as failure:
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "again"}])
            failed = failure.value.response.headers["x-meter-interaction-id"]
            # Both reach the open feed; the 500 reads as failed, the answer as complete.
            page.locator(f"#feed #call-{failed}").wait_for(timeout=5000)
            assert page.locator(f"#feed #call-{failed} td.status").text_content() == "500 failed"
            assert page.locator(f"#feed #call-{answered} td.status").text_content() == "200 complete"
            # Every call of the run is stored once.
            stored = [call["interaction_id"] for call in _cli_json(meter, "log")]
            assert sorted(stored) == sorted([answered, failed])
            assert _cli_json(meter, "show", failed)["failed"] is True

            # A click on the row opens the call's page: what `meter show` says.
            page.locator(f"#feed #call-{answered} td").nth(2).click()
            page.wait_for_url(f"**/calls/{answered}")
            show = _cli_json(meter, "show", answered)
            del show["skipped"]  # which newer calls `last` passed over: the page is opened by ID
            assert _embedded(page, "show") == show
            assert page.locator("h1 .status").text_content() == "200 complete"
            assert page.locator("pre.response").text_content() == show["text"]["response"]
            dashboard.goto(page, f"/calls/{failed}")
            assert page.locator("h1 .status").text_content() == "500 failed"
            assert page.get_by_role("button", name="Flag as hallucination").count() == 0  # no answer to judge
            # The task page's compact rows say it too.
            dashboard.goto(page, "/tasks/P5-001")
            assert page.locator(f"#call-{failed} summary .status").text_content() == "500 failed"
            assert page.errors == []
        finally:
            dashboard.stop()
            proxy.stop()


def test_task_page_calls_are_compact_rows_that_open_on_click(dashboard, page):
    dashboard.goto(page, "/tasks/P1-002")
    row = page.locator(f"#call-{_id(6)}")
    summary = row.locator("summary")
    assert summary.locator(".preview").text_content() == "answer 6 second line"
    response = row.locator("pre.response")
    assert not response.is_visible()  # compact: the text waits for a click
    page.set_viewport_size({"width": 1280, "height": 900})
    assert summary.bounding_box()["height"] < 40  # one line
    summary.click()
    assert response.is_visible() and response.text_content() == "answer 6\nsecond line"
    row.get_by_role("link", name="The call's page").click()
    page.wait_for_url(f"**/calls/{_id(6)}")
    assert _embedded(page, "show")["interaction_id"] == _id(6)
    assert page.errors == []


# ---------------------------------------------------------------- the Tasks page


def test_the_tasks_page_lists_every_task_as_meter_tasks_does_with_a_range_and_a_search(dashboard, page, meter):
    dashboard.goto(page, "/tasks")
    cli = _cli_json(meter, "tasks")
    shown = _embedded(page, "task-records")
    assert [task["task_id"] for task in shown] == [task["task_id"] for task in cli] == ["P1-001", "P1-002", "P2-001"]
    for listed, task in zip(shown, cli, strict=True):
        assert listed == {key: value for key, value in task.items() if key != "working_intervals"}
    row = page.locator('tr[data-task="P1-002"] td').all_text_contents()
    assert row[:4] == ["P1-002", "P1", "Store the calls", "approved"]
    figures = [cli[1]["ai_interactions"], cli[1]["failed_calls"], cli[1]["token_count_used"]]
    assert row[7:] == [*map(terminal.number, figures), terminal.money(cli[1]["cost_usd"]), "0"]

    # The range keeps the tasks under way in it, the search the IDs and titles that match.
    page.locator('input[name="from"]').fill("2025-10-05")
    page.locator('input[name="to"]').fill("2025-10-06")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**/tasks?from=2025-10-05&to=2025-10-06*")
    assert [task["task_id"] for task in _embedded(page, "task-records")] == ["P1-002", "P2-001"]
    page.locator('input[name="search"]').fill("REPORT")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**search=REPORT*")
    assert [task["task_id"] for task in _embedded(page, "task-records")] == ["P2-001"]
    assert page.locator('input[name="from"]').input_value() == "2025-10-05"  # the filters stay filled in
    dashboard.goto(page, "/tasks?search=nothing+like+it")
    assert page.locator("#tasks tbody").text_content().strip() == "No task matches."
    # A click on the ID opens the task.
    dashboard.goto(page, "/tasks?search=p1-001")
    page.get_by_role("link", name="P1-001").click()
    page.wait_for_url("**/tasks/P1-001")
    assert page.errors == []


@pytest.mark.parametrize(
    "query, message",
    [
        ("from=yesterday", "from must be a date such as 2026-10-25, not 'yesterday'"),
        ("from=2025-10-06&to=2025-10-05", "the range ends (2025-10-05) before it begins (2025-10-06)"),
        ("status=closed", "status must be open or approved, not 'closed'"),
    ],
)
def test_bad_task_filters_are_one_line(dashboard, query, message):
    response = httpx.get(f"{dashboard.origin}/tasks?{query}", headers=dashboard.cookie)
    assert response.status_code == 400
    assert re.search(r'<p class="error" role="alert">(.*?)</p>', response.text).group(1) == message.replace("'", "&#39;")


# ---------------------------------------------------------------- what a person records


def test_the_task_page_sets_estimate_budget_outcome_and_lessons(dashboard, page, db_path, meter):
    columns = _columns(db_path, "tasks")
    before = _everything(db_path)
    dashboard.goto(page, "/tasks/P1-001")
    form = page.locator("form.record-form")
    assert form.locator('input[name="estimate"]').input_value() == "1h00m"  # as stored
    form.locator('input[name="estimate"]').fill("2h30m")
    form.locator('textarea[name="actual"]').fill("a parser for every wire format")
    form.locator('select[name="success"]').select_option("pass")
    form.locator('input[name="coverage-target"]').fill("90%")
    form.locator('textarea[name="lessons"]').fill("record the fixtures first")
    form.locator('input[name="budget"]').fill("50k $2")
    form.locator('select[name="on_exceeded"]').select_option("block")
    form.get_by_role("button", name="Save").click()
    page.wait_for_url("**/tasks/P1-001#record")
    after = _everything(db_path)
    assert _changed_columns(before["tasks"], after["tasks"], columns) == {
        "P1-001": {
            "estimate_seconds": (3600, 9000),
            "actual_outcome": (None, "a parser for every wire format"),
            "success": (None, "pass"),
            "coverage_target": (None, 90.0),
            "lessons": (None, "record the fixtures first"),
        }
    }
    assert len(after["tasks"]) == len(before["tasks"])
    assert _rows(db_path, "SELECT scope, target, tokens, usd, on_exceeded FROM budgets") == [
        ("task", "P1-001", 50000, 2.0, "block")
    ]
    assert [row[1:3] for row in after["task_estimates"][len(before["task_estimates"]) :]] == [("P1-001", 9000)]
    for table in ("phases", "task_events", "phase_marks", "interactions"):
        assert after[table] == before[table], table
    # The record reads the new values, as the CLI does.
    report = _cli_json(meter, "report", "task", "P1-001")
    # (ESTIMATED_DURATION stays the first estimate, 1h: the new one joins the estimate's history.)
    assert (report["estimated_duration"], report["lessons_learned"], report["success_criteria"]) == (
        3600,
        "record the fixtures first",
        "pass",
    )
    assert form.locator('input[name="budget"]').input_value() == "50000 $2"

    # Saving again untouched writes nothing (a duration shown to the minute keeps its seconds).
    steady = _everything(db_path)
    page.locator("form.record-form").get_by_role("button", name="Save").click()
    page.wait_for_url("**/tasks/P1-001#record")
    assert _everything(db_path) == steady

    # An emptied box clears its field; an emptied budget removes it.
    page.locator('textarea[name="lessons"]').fill("")
    page.locator('input[name="budget"]').fill("")
    page.locator("form.record-form").get_by_role("button", name="Save").click()
    page.wait_for_url("**/tasks/P1-001#record")
    cleared = _everything(db_path)
    assert _changed_columns(steady["tasks"], cleared["tasks"], columns) == {
        "P1-001": {"lessons": ("record the fixtures first", None)}
    }
    assert cleared["budgets"] == []
    assert page.errors == []


def test_a_save_leaves_alone_what_the_cli_changed_since_the_page_was_made(dashboard, page, db_path, meter):
    dashboard.goto(page, "/tasks/P1-002")
    assert meter("task", "P1-002", "--lessons", "from the CLI", "--budget", "70k").code == 0
    page.locator('form.record-form textarea[name="actual"]').fill("from the page")
    page.locator("form.record-form").get_by_role("button", name="Save").click()
    page.wait_for_url("**/tasks/P1-002#record")
    assert _rows(db_path, "SELECT lessons, actual_outcome FROM tasks WHERE id = 'P1-002'") == [("from the CLI", "from the page")]
    assert _rows(db_path, "SELECT tokens, usd FROM budgets WHERE target = 'P1-002'") == [(70000, None)]
    # Its mode, once set, can be changed but not unset (as with --on-exceeded).
    page.locator('select[name="on_exceeded"]').select_option("warn")
    page.locator("form.record-form").get_by_role("button", name="Save").click()
    page.wait_for_url("**/tasks/P1-002#record")
    assert _rows(db_path, "SELECT tokens, on_exceeded FROM budgets WHERE target = 'P1-002'") == [(70000, "warn")]
    assert page.locator('select[name="on_exceeded"] option').all_inner_texts() == ["warn", "block"]
    assert page.errors == []


@pytest.mark.parametrize(
    "box, value, message",
    [
        ("estimate", "soon", "cannot parse duration 'soon': use forms like 1h30m, 90m, 1.5h or PT1H30M"),
        ("coverage-actual", "120", "'120' is outside 0-100%"),
        ("docs", "most", "'most' is not a percentage such as 87 or 87%"),
        ("budget", "lots", "cannot read 'lots' as a budget: give tokens (2M, 500k, 150000) or dollars ('$5', '5 USD'), above 0"),
    ],
)
def test_a_refused_task_edit_says_why_on_the_page_and_changes_nothing(dashboard, page, db_path, box, value, message):
    before = _everything(db_path)
    dashboard.goto(page, "/tasks/P1-002")
    form = page.locator("form.record-form")
    form.locator('textarea[name="lessons"]').fill("this must not be saved")  # a good box beside the bad one
    form.locator(f'[name="{box}"]').fill(value)
    with page.expect_response("**/tasks/P1-002/edit") as response:
        form.get_by_role("button", name="Save").click()
    assert response.value.status == 400
    assert page.locator(".error").all_text_contents() == [message]
    assert _everything(db_path) == before
    # What the person typed is still there, to fix.
    assert page.locator(f'form.record-form [name="{box}"]').input_value() == value
    assert page.locator('form.record-form textarea[name="lessons"]').input_value() == "this must not be saved"
    assert _console_errors(page) == []


def test_the_phase_page_sets_its_fields_budget_and_marks(dashboard, page, db_path):
    columns = _columns(db_path, "phases")
    before = _everything(db_path)
    dashboard.goto(page, "/phases/P2")
    form = page.locator("form.record-form")
    form.locator('textarea[name="surprise"]').fill("the rollups were the slow part")
    form.locator('input[name="budget"]').fill("$5")
    form.get_by_role("button", name="Save").click()
    page.wait_for_url("**/phases/P2#record")
    after = _everything(db_path)
    assert _changed_columns(before["phases"], after["phases"], columns) == {
        "P2": {"biggest_surprise": (None, "the rollups were the slow part")}
    }
    assert _rows(db_path, "SELECT scope, target, tokens, usd, on_exceeded FROM budgets") == [("phase", "P2", None, 5.0, None)]

    # A phase milestone at a given time.
    marks = page.locator("form.mark-form")
    marks.locator('select[name="milestone"]').select_option("first-code")
    marks.locator('input[name="at"]').fill("2025-10-06T09:30:00Z")
    marks.get_by_role("button", name="Mark").click()
    page.wait_for_url("**/phases/P2#marks")
    marked = _everything(db_path)
    assert _changed_columns(after["phases"], marked["phases"], columns) == {
        "P2": {"first_code_at": (None, "2025-10-06T09:30:00.000000Z")}
    }
    assert [row[2:4] for row in marked["phase_marks"]] == [("P2", "first-code")]

    # Out of order: refused, in one line, and nothing changes.
    marks = page.locator("form.mark-form")
    marks.locator('select[name="milestone"]').select_option("integration")
    marks.locator('input[name="at"]').fill("2025-10-06T09:00:00Z")
    with page.expect_response("**/phases/P2/mark") as response:
        marks.get_by_role("button", name="Mark").click()
    assert response.value.status == 400
    (refusal,) = page.locator(".error").all_text_contents()
    assert refusal.startswith("milestone out of order: integration at 2025-10-06T09:00:00")
    assert _everything(db_path) == marked
    assert _console_errors(page) == []


def test_a_task_milestone_from_the_task_page(dashboard, page, db_path, meter):
    assert meter("set-task", "P3-001", "--create").code == 0
    before = _everything(db_path)
    dashboard.goto(page, "/tasks/P3-001")
    marks = page.locator("form.mark-form")
    marks.locator('select[name="milestone"]').select_option("initial")
    marks.get_by_role("button", name="Mark").click()
    page.wait_for_url("**/tasks/P3-001#marks")
    report = _cli_json(meter, "report", "task", "P3-001")
    assert report["initial_completion_timestamp"] is not None
    after = _everything(db_path)
    assert [row[1:5] for row in after["task_events"][len(before["task_events"]) :]] == [
        ("P3-001", "milestone", report["initial_completion_timestamp"], "initial")
    ]
    # Marking it again is refused, and says how the CLI would force it.
    marks = page.locator("form.mark-form")
    marks.locator('select[name="milestone"]').select_option("initial")
    with page.expect_response("**/tasks/P3-001/mark") as response:
        marks.get_by_role("button", name="Mark").click()
    assert response.value.status == 400
    assert "already has initial" in page.locator(".error").text_content()
    assert _everything(db_path) == after


# ---------------------------------------------------------------- retag


def test_retag_moves_the_ticked_calls_to_a_task_from_the_list_at_once(dashboard, page, db_path, meter):
    before = _everything(db_path)
    dashboard.goto(page, "/tasks/P1-001")
    choices = page.locator("#retag select[name=task_id] option").all_inner_texts()
    assert choices == ["choose a task", "P2-001 — Report per phase", "P1-002 — Store the calls", "unassigned (no task)"]
    for n in (2, 3):
        page.locator(f"#call-{_id(n)} input[name=call]").check()
    page.locator("#retag select[name=task_id]").select_option("P2-001")
    page.locator("#retag").get_by_role("button", name="Move").click()
    page.wait_for_url("**/tasks/P1-001")
    after = _everything(db_path)
    moved = {row[0]: row for row in after["interactions"]}
    task_of = {row[0]: row for row in before["interactions"]}
    changed = {call for call in moved if moved[call] != task_of[call]}
    assert changed == {_id(2), _id(3)}
    assert {_cli_json(meter, "show", _id(n))["task_id"] for n in (2, 3)} == {"P2-001"}
    assert page.locator(".call-row").count() == 2

    # One transaction: with one ID it does not know, none of them moves.
    token = _form_token(page)
    writes = {"Origin": dashboard.origin, **dashboard.cookie}
    refused = httpx.post(
        f"{dashboard.origin}/calls/retag",
        data={"token": token, "back": "/", "call": [_id(1), "0e9999999999"], "task_id": "P2-001"},
        headers=writes,
    )
    assert refused.status_code in (400, 404)
    assert _everything(db_path) == after
    # Nothing ticked, or no task chosen: one line each, nothing changed.
    for data, message in (
        ({"task_id": "P2-001"}, "tick the calls to move first"),
        ({"call": _id(1)}, "choose the task to move the calls to"),
    ):
        response = httpx.post(f"{dashboard.origin}/calls/retag", data={"token": token, "back": "/", **data}, headers=writes)
        assert response.status_code == 400 and message in response.text
    assert _everything(db_path) == after

    # And back to no task.
    page.locator(f"#call-{_id(1)} input[name=call]").check()
    page.locator("#retag select[name=task_id]").select_option("unassigned")
    page.locator("#retag").get_by_role("button", name="Move").click()
    page.wait_for_url("**/tasks/P1-001")
    assert _cli_json(meter, "show", _id(1))["task_id"] is None
    assert _console_errors(page) == []


def test_the_call_page_moves_its_call_and_flags_it(dashboard, page, db_path, meter):
    before = _everything(db_path)
    dashboard.goto(page, f"/calls/{_id(4)}")
    assert "P1-001" not in page.locator("#retag select option").all_inner_texts()  # not to where it is
    page.locator("#retag select[name=task_id]").select_option("P1-002")
    page.locator("#retag").get_by_role("button", name="Move").click()
    page.wait_for_url(f"**/calls/{_id(4)}")
    assert page.locator("#call-record a").first.text_content() == "P1-002"
    after = _everything(db_path)
    changed = {row[0] for row, old in zip(after["interactions"], before["interactions"], strict=True) if row != old}
    assert changed == {_id(4)} and _cli_json(meter, "show", _id(4))["task_id"] == "P1-002"
    page.locator('input[name="note"]').fill("wrong file name")
    page.get_by_role("button", name="Flag as hallucination").click()
    page.wait_for_url(f"**/calls/{_id(4)}")
    assert _embedded(page, "show")["flag_note"] == "wrong file name" == _cli_json(meter, "show", _id(4))["flag_note"]
    assert page.errors == []


def test_tick_all_moves_every_unassigned_call_at_once(dashboard, page, meter):
    dashboard.goto(page, "/history")
    page.locator("#retag").get_by_label("tick all").check()
    page.locator("#retag select[name=task_id]").select_option("P1-002")
    page.locator("#retag").get_by_role("button", name="Move").click()
    page.wait_for_url("**/history?period=daily")
    assert _cli_json(meter, "log", "--unassigned") == []
    assert {_cli_json(meter, "show", _id(n))["task_id"] for n in (98, 99)} == {"P1-002"}
    assert page.locator("text=Every call is attributed to a task.").count() == 1


def test_every_new_write_needs_the_dashboards_origin_and_form_token(dashboard, page, db_path):
    dashboard.goto(page, "/tasks/P1-001")
    token = _form_token(page)
    before = _everything(db_path)
    writes = {
        "/tasks/P1-001/edit": {"lessons": "forged"},
        "/tasks/P1-001/mark": {"milestone": "initial"},
        "/phases/P1/edit": {"surprise": "forged"},
        "/phases/P1/mark": {"milestone": "docs", "force": "yes"},
        "/calls/retag": {"call": _id(1), "task_id": "P2-001"},
    }
    for path, data in writes.items():
        url = f"{dashboard.origin}{path}"
        elsewhere = httpx.post(url, data={"token": token, **data}, headers={"Origin": "http://evil.example", **dashboard.cookie})
        forged = httpx.post(url, data={"token": "guess", **data}, headers={"Origin": dashboard.origin, **dashboard.cookie})
        stranger = httpx.post(url, data={"token": token, **data}, headers={"Origin": dashboard.origin})
        assert (elsewhere.status_code, forged.status_code, stranger.status_code) == (403, 403, 403), path
    assert _everything(db_path) == before
    # Bad IDs in the new routes: a one-line 400 before any query.
    for path in ("/calls/%D9%A1%D9%A2", "/calls/abc", "/tasks/%D9%A1-%D9%A2/edit", "/phases/P1%3Cb%3E/mark"):
        method = "POST" if path.endswith(("/edit", "/mark")) else "GET"
        response = httpx.request(
            method, f"{dashboard.origin}{path}", data={"token": token}, headers={"Origin": dashboard.origin, **dashboard.cookie}
        )
        assert response.status_code == 400, path
        assert "Traceback" not in response.text
    assert _everything(db_path) == before


# ---------------------------------------------------------------- the chart


def test_the_cost_line_is_drawn_in_front_of_the_bars(dashboard, page):
    dashboard.goto(page, "/?day=2025-10-04")
    canvas = page.locator('canvas[data-chart="hourly"]')
    # Chart.js draws the datasets from the last of this order to the first: the first is in front.
    drawn = canvas.evaluate("canvas => Chart.getChart(canvas).getSortedVisibleDatasetMetas().map(meta => meta.type)")
    assert drawn == ["line", "bar"]
    assert page.errors == []


# ---------------------------------------------------------------- Ctrl-C


def _hold_feed(dashboard: RunningDashboard, connected: threading.Event) -> None:
    """A live feed left open, as a browser tab leaves it."""
    try:
        with httpx.stream("GET", f"{dashboard.origin}/feed?after=0", headers=dashboard.cookie, timeout=30) as stream:
            for _ in stream.iter_raw():
                connected.set()
    except httpx.HTTPError:
        pass


def test_ctrl_c_stops_meter_ui_quietly_even_with_live_feeds_open(history, page):
    dashboard = RunningDashboard(history)
    dashboard.goto(page)
    page.wait_for_selector("#feed-state.live")  # a browser's feed
    connected = threading.Event()
    threading.Thread(target=_hold_feed, args=(dashboard, connected), daemon=True).start()
    assert connected.wait(10)  # and a second one, reading
    started = time.monotonic()
    dashboard.process.send_signal(signal.SIGINT)
    dashboard.process.wait(15)
    assert dashboard.process.returncode == 0
    assert dashboard.process.stderr.read() == ""
    assert time.monotonic() - started < 5  # the feeds end by themselves: no grace period to wait out
