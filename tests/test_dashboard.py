"""The dashboard (`meter ui`) in a real browser: Debian's chromium driven by
Playwright, against a real `meter ui` process over a real SQLite file, and a
real `meter proxy` for the live feed. Screenshots go to test-artifacts/dashboard/."""

import html
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import tempfile
import time
from contextlib import closing
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
import openai
import pytest
from playwright.sync_api import Page

from taskmeter import ids
from taskmeter.private import private_file
from taskmeter.store import connection, dashboards, interactions, tasks
from taskmeter.store.calls import CallRow, store_calls
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from taskmeter.timefmt import from_stored
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.meter_forks import METER
from tests.proxy_harness import VENV_BIN, RunningProxy, write_config

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "dashboard"
HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


class RunningDashboard:
    """`meter ui --port 0` in its own process; stopped by its process ID."""

    def __init__(self, db_path: Path, *extra_args: str, env: dict | None = None, stderr=subprocess.PIPE) -> None:
        self.process = METER.popen(  # a fork of the preloaded meter (tests/meter_forks.py)
            ["ui", "--port", "0", "--db", str(db_path), *extra_args], env=env, stdout=subprocess.PIPE, stderr=stderr
        )
        line = self.process.stdout.readline()
        if "dashboard on " not in line:
            self.stop()
            raise RuntimeError(f"meter ui did not start: {line!r} {self.process.stderr.read()}")
        self.url = line.split("dashboard on ")[1].split()[0]  # with the access token, as the user opens it
        address = urlsplit(self.url)
        self.origin = f"http://{address.netloc}"
        self.port = address.port
        self.token = parse_qs(address.query)["token"][0]
        # What a browser sends once it has opened the URL: for httpx requests.
        self.cookie = {"Cookie": f"taskmeter-ui-{self.port}={self.token}"}

    def enter(self, page: Page, url: str | None = None) -> None:
        """Open the printed URL (or `url`, which leads to it) as the user does: it sets the
        cookie and moves on to the dashboard without the token."""
        page.goto(url or self.url)
        page.wait_for_url(f"{self.origin}/")
        page.wait_for_load_state("load")

    def goto(self, page: Page, path: str = "/"):
        """`path` in the browser, once let in by the printed URL."""
        if not any(cookie["name"] == f"taskmeter-ui-{self.port}" for cookie in page.context.cookies()):
            self.enter(page)
        return page.goto(f"{self.origin}{path}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _id(n: int) -> str:
    body = f"0e{n:010d}"
    return body + ids.check_char(body)


def _at(day: int, hour: int, minute: int = 0) -> str:
    return f"2025-10-{day:02d}T{hour:02d}:{minute:02d}:00.000000Z"


def _call(db, n: int, task_id: str | None, when: str, model: str, tokens: tuple, cost: float | None, text: str | None = None):
    input_total, cache_read, output_total, reasoning = tokens
    with write_transaction(db):
        store_calls(
            db,
            [
                CallRow(
                    Interaction(
                        id=_id(n), task_id=task_id, attribution="path" if task_id else "none", started_at=when, ended_at=when,
                        provider="openai", model=model, http_status=200, outcome="complete", usage_source="reported",
                        conversation_root=f"c{n // 3}", input_total=input_total, cache_read=cache_read, cache_write=0,
                        output_total=output_total, reasoning=reasoning, cost_usd=cost,
                    )
                )
            ],
        )  # fmt: skip
        if text is not None:
            db.execute(
                "INSERT INTO call_texts (interaction_id, prompt, steps, response) VALUES (?, ?, NULL, ?)",
                (_id(n), f"question {n}", text),
            )
    return _id(n)


def write_history(db_path: Path) -> None:
    """Two phases of approved tasks (so no number depends on the clock), calls on
    two models over three days, one flag, one hostile reply and one unassigned call."""
    db = connection.connect(db_path)
    plan = [
        ("P1-001", "Parse the wire formats", 3600, 4, _at(4, 9)),
        ("P1-002", "Store the calls", 1800, 4, _at(5, 9)),
        ("P2-001", "Report per phase", 3600, 3, _at(6, 9)),
    ]
    n = 0
    for task_id, title, estimate, calls, begin in plan:
        tasks.set_task(db, task_id, title=title, estimate_seconds=estimate)
        tasks.clear_task(db)
        with write_transaction(db):
            db.execute("DELETE FROM task_events WHERE kind = 'switch'")
            db.execute("UPDATE tasks SET begin_at = ? WHERE id = ?", (begin, task_id))
            db.execute("INSERT INTO task_events (task_id, kind, at) VALUES (?, 'switch', ?)", (task_id, begin))
            db.execute("INSERT INTO task_events (task_id, kind, at) VALUES (NULL, 'switch', ?)", (begin.replace("T09", "T11"),))
        tasks.update_task(db, task_id, {"projected_outcome": "works", "projection_met": 1, "coverage_actual": 88.0})
        for minute in range(calls):
            n += 1
            model = "gpt-4o-2024-08-06" if n % 2 else "claude-sonnet-4-5-20250929"
            text = HOSTILE if n == 2 else f"answer {n}\nsecond line"
            _call(
                db,
                n,
                task_id,
                begin.replace("T09:00", f"T09:{10 + minute * 10:02d}"),
                model,
                (1000 * n, 100, 50 * n, 10),
                0.01 * n,
                text,
            )
        for milestone, clock in (("initial", "09:55"), ("tests", "10:30"), ("validated", "10:40"), ("approved", "10:50")):
            tasks.mark(db, task_id, milestone, at=from_stored(begin.replace("09:00", clock)), force=True)
    interactions.flag(db, _id(1), "invented an API")
    _call(db, 98, None, _at(6, 12), "gpt-4o-2024-08-06", (400, 0, 10, 0), 0.001, "unassigned answer")
    _call(db, 99, None, _at(6, 12, 5), "gpt-4o-2024-08-06", (500, 0, 20, 0), 0.002, "unassigned answer")
    db.close()


def copy_database(source: sqlite3.Connection, target: Path) -> None:
    """`source`'s every page into the database at `target` (SQLite's backup: a write transaction
    that a running dashboard's next query sees whole), which is made private as the meter makes it."""
    private_file(target)
    with closing(sqlite3.connect(target)) as written:
        source.backup(written)


@pytest.fixture(scope="module")
def written_history(tmp_path_factory):
    """The history, written once per module (60 ms of CPU): tests get copies (3 ms)."""
    path = tmp_path_factory.mktemp("history") / "meter.db"
    write_history(path)
    with closing(sqlite3.connect(path)) as written:
        yield written


@pytest.fixture
def history(db_path, written_history):
    """A database of the test's own with the history in it."""
    copy_database(written_history, db_path)
    return db_path


class SharedDashboard(RunningDashboard):
    """One `meter ui` over the history that a module's tests take turns on (a start and its first
    pages cost 0.3-0.5 s of CPU): before each test its database is put back as it was when the
    dashboard had started, so no test sees another's writes."""

    def __init__(self, db_path: Path, log: Path) -> None:
        self.db_path, self.log = db_path, log
        with log.open("w") as stderr:  # a file, not a pipe that nobody would drain between the tests
            super().__init__(db_path, stderr=stderr)
        self.started = sqlite3.connect(":memory:")
        with closing(sqlite3.connect(db_path)) as live:
            live.backup(self.started)  # with the dashboard's announcement (`meter status` reads it)
        self.log_read = 0

    def restore(self) -> Path:
        copy_database(self.started, self.db_path)
        return self.db_path

    def new_stderr(self) -> str:
        """What the dashboard wrote to stderr since the last call."""
        text = self.log.read_text()
        text, self.log_read = text[self.log_read :], len(text)
        return text


@pytest.fixture(scope="module")
def shared_dashboard(written_history, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shared-dashboard")
    copy_database(written_history, folder / "meter.db")
    running = SharedDashboard(folder / "meter.db", folder / "stderr.log")
    yield running
    assert running.stop() == 0  # Ctrl-C is how the dashboard stops: not an error
    assert running.new_stderr() == ""
    running.started.close()


@pytest.fixture
def db_path(request, tmp_path, monkeypatch) -> Path:
    """conftest's: the database that `meter` and the test read; for a test of the shared `dashboard`,
    that dashboard's, restored."""
    if "dashboard" in request.fixturenames:
        path = request.getfixturevalue("shared_dashboard").restore()
    else:
        path = tmp_path / "meter.db"
    monkeypatch.setenv("METER_DB", str(path))
    return path


@pytest.fixture
def dashboard(shared_dashboard, db_path):
    """The module's `meter ui` over the history (see db_path): for a test that does not stop it."""
    yield shared_dashboard
    assert shared_dashboard.process.poll() is None, "a test stopped the shared dashboard: give it own_dashboard"
    assert shared_dashboard.new_stderr() == ""  # no traceback, no warning


@pytest.fixture
def own_dashboard(history):
    """A `meter ui` of the test's own over the history, for a test that stops it."""
    running = RunningDashboard(history)
    yield running
    assert running.stop() == 0


@pytest.fixture
def page(browser):
    """A page that remembers every console error and uncaught exception."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


def _embedded(page: Page, element_id: str):
    return json.loads(page.locator(f"#{element_id}").text_content())


def _shown_fields(page: Page) -> dict:
    """Every [data-field] on the page: its name and the raw value it shows."""
    cells = page.locator("[data-field]")
    return {
        cells.nth(i).get_attribute("data-field"): json.loads(cells.nth(i).get_attribute("data-value"))
        for i in range(cells.count())
    }


def _cli_json(meter, *args):
    result = meter(*args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_phase_page_numbers_and_charts_equal_the_cli_json(dashboard, page, meter):
    dashboard.goto(page, "/phases/P2")
    cli = _cli_json(meter, "report", "phase", "P2")
    assert _embedded(page, "report") == cli
    shown = _shown_fields(page)
    assert len(shown) >= 30
    assert shown == {name: cli[name] for name in shown}
    tiles = page.locator(".tile")
    assert tiles.count() == 4
    targets = {target["metric"]: target for target in cli["pattern_effectiveness"]}
    for i in range(4):
        tile = tiles.nth(i)
        target = targets[tile.get_attribute("data-metric")]
        assert json.loads(tile.get_attribute("data-value")) == target["value"]
        assert tile.locator(".verdict").text_content() == {True: "PASS", False: "FAIL", None: "not measured"}[target["passed"]]
    charts = _embedded(page, "charts")
    assert charts["tasks"]["labels"] == [task["task_id"] for task in cli["tasks"]]
    assert charts["tasks"]["datasets"][0]["data"] == [task["token_count_used"] for task in cli["tasks"]]
    overview = _cli_json(meter, "report")
    trend = charts["trend"]["datasets"]
    assert charts["trend"]["labels"] == ["P1", "P2"]
    assert trend[0]["data"] == [phase["tokens_per_task_avg"] for phase in overview["phases"]]
    assert trend[1]["data"] == [None, overview["phases"][0]["tokens_per_task_avg"] * 0.9]  # the seed's -10% per phase
    assert _embedded(page, "trend")[1]["token_efficiency_change"] == overview["phases"][1]["token_efficiency_change"]
    # The burndown (docs/forecasts.md) starts from the phase's estimated total, in hours.
    assert charts["burndown"]["datasets"][0]["data"][0] == {"x": 0.0, "y": cli["estimated_total"] / 3600}
    assert page.locator("canvas[data-chart]").count() == 3 and page.errors == []


def test_task_page_record_timeline_and_charts_equal_the_cli_json(dashboard, page, meter):
    dashboard.goto(page, "/tasks/P1-001")
    cli = _cli_json(meter, "report", "task", "P1-001")
    assert _embedded(page, "report") == cli
    shown = _shown_fields(page)
    assert {"begin_timestamp", "actual_duration", "token_count_used", "hallucination_count", "lessons_learned"} <= set(shown)
    assert shown == {name: cli[name] if name != "tracking_completeness" else cli[name]["percent"] for name in shown}
    assert page.locator('[data-field="hallucination_count"]').text_content() == "1"
    # The timeline: five milestones and the working intervals the working time adds up.
    assert page.locator(".timeline .milestone").count() == 5
    assert page.locator(".timeline .interval").count() == len(cli["working_intervals"]) >= 1
    charts = _embedded(page, "charts")
    models = _cli_json(meter, "report", "models", "--task", "P1-001")
    assert charts["models"]["labels"] == [model["model"] for model in models["models"]]
    assert charts["models"]["datasets"][0]["data"] == [model["tokens"]["total"] for model in models["models"]]
    assert (
        dict(zip(charts["sources"]["labels"], charts["sources"]["datasets"][0]["data"], strict=True)) == cli["tokens_by_source"]
    )
    # Its calls, newest first, each with its stored text.
    rows = page.locator(".call-row details.call")
    assert rows.count() == 4
    assert rows.nth(0).locator("pre.response").text_content() == "answer 4\nsecond line"
    assert page.errors == []


def test_history_charts_stack_the_usage_reports_by_model(dashboard, page, meter):
    for period in ("daily", "weekly", "monthly"):
        dashboard.goto(page, f"/history?period={period}")
        cli = _cli_json(meter, "report", period)
        assert _embedded(page, "report") == cli
        charts = _embedded(page, "charts")
        assert charts["tokens"]["labels"] == [group["period"] for group in cli["periods"]]
        assert charts["tokens"]["stacked"] is True
        stacked = [sum(column) for column in zip(*(d["data"] for d in charts["tokens"]["datasets"]), strict=True)]
        assert stacked == [group["tokens"]["total"] for group in cli["periods"]]
        costs = [sum(column) for column in zip(*(d["data"] for d in charts["cost"]["datasets"]), strict=True)]
        assert costs == pytest.approx([group["cost_usd"] for group in cli["periods"]])
    assert page.errors == []


def test_a_response_with_a_script_renders_as_text(dashboard, page):
    dashboard.goto(page, "/tasks/P1-001")
    hostile = page.locator(f"#call-{_id(2)} pre.response")
    assert hostile.text_content() == HOSTILE
    assert page.locator(f"#call-{_id(2)} script, #call-{_id(2)} img").count() == 0
    assert page.evaluate("window.pwned") is None
    policy = httpx.get(f"{dashboard.origin}/tasks/P1-001", headers=dashboard.cookie).headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_clicking_flag_creates_the_flag_that_meter_log_shows(dashboard, page, meter):
    dashboard.goto(page, "/tasks/P1-002")
    call = page.locator(f"#call-{_id(5)}")
    call.locator("summary").click()  # the compact row opens
    call.locator('input[name="note"]').fill("made up a flag")
    call.get_by_role("button", name="Flag as hallucination").click()
    page.wait_for_url(f"**/tasks/P1-002#call-{_id(5)}")
    assert page.locator(f"#call-{_id(5)} .flag").text_content().strip() == "flagged: made up a flag"
    flagged = _cli_json(meter, "log", "--flagged")
    assert {(c["interaction_id"], c["flag_note"]) for c in flagged} == {(_id(1), "invented an API"), (_id(5), "made up a flag")}
    # And away again.
    page.locator(f"#call-{_id(5)}").get_by_role("button", name="Unflag").click()
    page.wait_for_load_state()
    assert [c["interaction_id"] for c in _cli_json(meter, "log", "--flagged")] == [_id(1)]
    assert page.errors == []


def test_retagging_an_unassigned_call_by_click(dashboard, page, meter):
    dashboard.goto(page, "/history")
    page.locator(f"#call-{_id(99)} input[name=call]").check()
    page.locator("#retag select[name=task_id]").select_option("P2-001")
    page.locator("#retag").get_by_role("button", name="Move").click()
    page.wait_for_load_state()
    assert page.locator(f"#call-{_id(99)}").count() == 0
    assert _cli_json(meter, "show", _id(99))["task_id"] == "P2-001"
    # A task that does not exist (a list out of date) is refused, in words, and nothing changes.
    page.locator(f"#call-{_id(98)} input[name=call]").check()
    page.locator("#retag select[name=task_id]").evaluate("select => select.add(new Option('P9-999', 'P9-999', true, true))")
    with page.expect_response("**/calls/retag") as response:
        page.locator("#retag").get_by_role("button", name="Move").click()
    assert response.value.status == 404
    assert "unknown task 'P9-999'" in page.locator(".error").text_content()
    assert _cli_json(meter, "show", _id(98))["task_id"] is None


def test_cross_origin_writes_and_foreign_hosts_are_refused(dashboard, page, meter):
    dashboard.goto(page, "/tasks/P1-002")
    token = page.locator('input[name="token"]').first.get_attribute("value")
    flag = f"{dashboard.origin}/calls/{_id(6)}/flag"
    # Another site's page posting through the user's browser: its Origin gives it away.
    refused = httpx.post(flag, data={"token": token, "note": "x"}, headers={"Origin": "http://evil.example", **dashboard.cookie})
    assert refused.status_code == 403
    # The right origin without this run's token (a stale or forged form).
    forged = httpx.post(flag, data={"token": "guess", "note": "x"}, headers={"Origin": dashboard.origin, **dashboard.cookie})
    assert forged.status_code == 403
    assert httpx.post(flag, data={"token": token}, headers=dashboard.cookie).status_code == 403  # no Origin at all
    # DNS rebinding: a foreign name that resolves to 127.0.0.1.
    assert httpx.get(f"{dashboard.origin}/", headers={"Host": f"evil.example:{dashboard.port}"}).status_code == 400
    assert [c["interaction_id"] for c in _cli_json(meter, "log", "--flagged")] == [_id(1)]
    # The same form from the dashboard's own origin is taken.
    taken = httpx.post(flag, data={"token": token, "back": "/"}, headers={"Origin": dashboard.origin, **dashboard.cookie})
    assert taken.status_code == 303
    assert _id(6) in [c["interaction_id"] for c in _cli_json(meter, "log", "--flagged")]


def test_every_page_renders_without_console_errors_and_is_photographed(dashboard, page):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pages = [("now", "/"), ("phases", "/phases"), ("task", "/tasks/P1-001"), ("history", "/history")]
    for name, path in [*pages, ("tasks", "/tasks"), ("call", f"/calls/{_id(1)}")]:
        response = dashboard.goto(page, path)
        assert response.status == 200
        page.wait_for_load_state("load")
        drawn = page.locator("canvas[data-chart]")
        for i in range(drawn.count()):  # Chart.js drew into every canvas
            assert drawn.nth(i).evaluate("canvas => Chart.getChart(canvas) !== undefined")
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000
    assert page.errors == []


def test_unknown_pages_say_what_is_missing(dashboard, page):
    response = dashboard.goto(page, "/tasks/P7-777")
    assert response.status == 404
    assert "unknown task 'P7-777'" in page.locator(".error").text_content()


def test_status_and_the_proxy_banner_print_the_dashboard_address(own_dashboard, meter, db_path, tmp_path):
    # The URL with the token: the database is the user's alone, so whoever reads it could read the pages anyway.
    assert _cli_json(meter, "status")["dashboard"] == own_dashboard.url
    assert f"Dashboard: {own_dashboard.url}" in meter("status").out
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": "http://127.0.0.1:9"})
    proxy = RunningProxy(config, db_path)
    try:
        deadline = time.monotonic() + 5
        while not any("dashboard:" in line for _, line in proxy.live_view) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"  dashboard: {own_dashboard.url}" in [line for _, line in proxy.live_view]
    finally:
        proxy.stop()
    own_dashboard.stop()
    assert _cli_json(meter, "status")["dashboard"] is None


def test_a_port_in_use_is_one_line_and_no_traceback(db_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        result = subprocess.run(
            [str(VENV_BIN / "meter"), "ui", "--port", str(taken.getsockname()[1]), "--db", str(db_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        taken.close()
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "is in use" in result.stderr and "Traceback" not in result.stderr


def test_a_call_through_a_real_proxy_appears_in_the_live_feed(db_path, page, tmp_path):
    recorded = next(f for f in ALL if f.name == "openai/chat_nonstream_cached_tokens")
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=recorded.body)
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
        proxy = RunningProxy(config, db_path)
        dashboard = RunningDashboard(db_path)
        try:
            dashboard.goto(page)
            page.wait_for_selector("#feed-state.live")
            client = openai.OpenAI(base_url=f"{proxy.origin}/t/P5-001/openai/v1", api_key="sk-test", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            interaction_id = raw.headers["x-meter-interaction-id"]
            row = page.locator(f"#feed #call-{interaction_id}")
            row.wait_for(timeout=3000)  # the goal is 1 s: measured in `make bench`
            cells = row.locator("td").all_text_contents()
            assert cells[1] == "P5-001" and cells[2] == "gpt-4o-mini-2024-07-18"
            assert cells[3:7] == ["1,149", "1,024", "353", "0"]
            assert page.errors == []
        finally:
            dashboard.stop()
            proxy.stop()


def test_now_shows_the_budget_and_open_alerts_and_clears_one_by_click(dashboard, db_path, page, meter):
    from taskmeter.store import alerts

    _cli_json(meter, "status")  # the database is current
    assert meter("set-task", "P2-001").code == 0
    # P2-001's calls (n = 9, 10, 11) used 1,050 n tokens each: 31,500, over the budget, in warn mode.
    assert meter("task", "P2-001", "--budget", "30000").code == 0
    db = connection.connect(db_path)
    alerts.raise_alert(db, "loop", "loop:s1:x", "loop: session s1 sent 10 calls of near-identical requests", session_id="s1")
    db.close()
    dashboard.goto(page)
    budget = _cli_json(meter, "status")["budget"]
    shown = page.locator(".budget [data-field=used_share]")
    assert json.loads(shown.get_attribute("data-value")) == budget["used_share"]
    assert shown.text_content() == "Budget: P2-001: 31,500 of 30,000 tokens (105% used) — spent (calls go on: warn)"
    alert = page.locator(".alerts form.alert")
    assert alert.count() == 1 and "near-identical requests" in alert.text_content()
    alert.get_by_role("button", name="Clear").click()
    page.wait_for_load_state()
    assert page.locator(".alerts").count() == 0
    assert _cli_json(meter, "alerts") == []
    assert page.errors == []


def _form_token(dashboard: RunningDashboard) -> str:
    page = httpx.get(f"{dashboard.origin}/tasks/P1-001", headers=dashboard.cookie)
    return re.search(r'name="token" value="([^"]+)"', page.text).group(1)


def _as_nobody(*command: str) -> subprocess.CompletedProcess:
    """`command` as the user `nobody`: another account on the same machine."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "these tests need util-linux's setpriv"
    return subprocess.run(
        [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command], capture_output=True, text=True, timeout=30
    )


def test_the_printed_url_lets_the_browser_in_and_nothing_else_does(dashboard, page, browser):
    # Without the token, every page says what to open, in one line.
    stranger = browser.new_context().new_page()
    for path in ("/", "/tasks/P1-001", "/static/dashboard.js", f"/?token={dashboard.token[:-1]}"):
        response = stranger.goto(f"{dashboard.origin}{path}")
        assert response.status == 403, path
        assert response.text() == (
            f"this dashboard needs its access token: open the URL `meter ui` printed ({dashboard.origin}/?token=...)"
        )
    stranger.context.close()
    # The printed URL: a cookie the page's scripts cannot read, sent to no other site, and the token leaves the address.
    dashboard.enter(page)
    (cookie,) = page.context.cookies()
    assert (cookie["name"], cookie["value"]) == (f"taskmeter-ui-{dashboard.port}", dashboard.token)
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""
    page.wait_for_selector("#feed-state.live")  # the feed (EventSource) and the static files go with the cookie
    assert page.errors == []


def test_open_gives_the_browser_a_private_page_not_the_token(db_path, page, tmp_path):
    """A command line is there for every user to read (ps): `--open` hands the
    browser a page of the user's alone that leads to the URL with the token."""
    browser_log = tmp_path / "browser-args"
    fake_browser = tmp_path / "browser"
    # Written whole, then moved in place: the test waits for the file, never reads it half written.
    fake_browser.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {browser_log}.part && mv {browser_log}.part {browser_log}\n')
    fake_browser.chmod(0o700)
    env = {**os.environ, "BROWSER": f"{fake_browser} %s", "XDG_STATE_HOME": str(tmp_path / "state")}
    connection.connect(db_path).close()  # the dashboard shows a database, never makes one
    dashboard = RunningDashboard(db_path, "--open", env=env)
    try:
        deadline = time.monotonic() + 10
        while not browser_log.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        (given,) = browser_log.read_text().split()
        assert given.startswith("file://") and dashboard.token not in given
        opener = Path(unquote(urlsplit(given).path))
        assert stat.S_IMODE(opener.stat().st_mode) == 0o600 and dashboard.url in html.unescape(opener.read_text())
        assert _as_nobody("cat", str(opener)).returncode != 0
        # The browser opens the page, which leads it in: the cookie goes even after a start from a file.
        dashboard.enter(page, given)
        assert page.locator("#feed").count() == 1 and page.errors == []
    finally:
        dashboard.stop()
    assert not opener.exists()


def test_another_user_of_the_machine_gets_nothing(meter):
    """`nobody` reaches 127.0.0.1 like anyone, and reads what other users may read:
    no page, no feed, no write, and not the database that holds the token's URL."""
    shared = Path(tempfile.mkdtemp(prefix="meter-shared-", dir="/tmp"))
    try:
        shared.chmod(0o755)  # so that only the files' own modes keep nobody out
        db_path = shared / "meter.db"
        db = connection.connect(db_path)
        tasks.set_task(db, "P1-001", title="with a pasted .env")
        _call(db, 1, "P1-001", _at(4, 9), "gpt-4o-2024-08-06", (10, 0, 5, 0), 0.01, "DATABASE_PASSWORD=hunter2")
        db.close()
        dashboard = RunningDashboard(db_path)
        try:
            form_token = _form_token(dashboard)  # as if it had leaked: the access token is still needed
            flag = f"{dashboard.origin}/calls/{_id(1)}/flag"
            curl = ["curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"]
            attempts = {
                "page": [f"{dashboard.origin}/tasks/P1-001"],
                "now": [f"{dashboard.origin}/"],
                "feed": [f"{dashboard.origin}/feed?after=0"],
                "static": [f"{dashboard.origin}/static/dashboard.js"],
                "guessed token": [f"{dashboard.origin}/?token=guess"],
                "write": ["-X", "POST", "-H", f"Origin: {dashboard.origin}", "-d", f"token={form_token}&note=x", flag],
            }
            for what, arguments in attempts.items():
                assert _as_nobody(*curl, *arguments).stdout == "403", what
            # The same requests with the cookie succeed, so the 403s are the token's doing.
            cookie = ["-H", f"Cookie: taskmeter-ui-{dashboard.port}={dashboard.token}"]
            assert (
                subprocess.run([*curl, *cookie, f"{dashboard.origin}/tasks/P1-001"], capture_output=True, text=True).stdout
                == "200"
            )
            # The database holds the URL with the token (and every prompt): nobody may not read it.
            reader = connection.connect(db_path)
            assert dashboards.running(reader) == dashboard.url
            reader.close()
            for path in sorted(shared.iterdir()):
                assert _as_nobody("stat", str(path)).returncode == 0  # it sees the file ...
                denied = _as_nobody("cat", str(path))
                assert denied.returncode != 0 and "Permission denied" in denied.stderr, path  # ... but cannot read it
            # Nobody wrote anything.
            assert [c["interaction_id"] for c in _cli_json(meter, "log", "--flagged", "--db", str(db_path))] == []
        finally:
            dashboard.stop()
        assert "Traceback" not in dashboard.process.stderr.read()
    finally:
        shutil.rmtree(shared)


def test_a_database_others_may_read_is_not_given_the_token(db_path, meter):
    connection.connect(db_path).close()
    db_path.chmod(0o644)
    dashboard = RunningDashboard(db_path)
    try:
        assert _cli_json(meter, "status")["dashboard"] == dashboard.origin
        assert dashboard.token.encode() not in b"".join(path.read_bytes() for path in db_path.parent.glob("meter.db*"))
    finally:
        dashboard.stop()


# Each is refused with a 400 wherever a row number or an ID is expected: no 500, no traceback.
HOSTILE_NUMBERS = ["999999999999999999999", str(2**63), "-1", "0x1f", "1e3", "abc", "١٢", "9" * 5000, "+7"]
WELL_FORMED_PHASE_NAMES = {"999999999999999999999", str(2**63), "0x1f", "1e3", "abc"}


def _one_line_refusal(response: httpx.Response) -> str:
    message = re.search(r'<p class="error" role="alert">(.*?)</p>', response.text, re.DOTALL).group(1)
    assert "\n" not in message and "Traceback" not in response.text
    return message


def test_bad_numbers_and_ids_in_every_route_are_a_400_in_one_line(dashboard, meter):
    form = {"token": _form_token(dashboard), "back": "/"}
    writes = {"Origin": dashboard.origin, **dashboard.cookie}
    with httpx.Client(base_url=dashboard.origin, headers=dashboard.cookie, timeout=10) as client:
        for value in HOSTILE_NUMBERS:
            quoted = quote(value, safe="")
            refused = {
                "clear": client.post(f"/alerts/{quoted}/clear", data=form, headers=writes),
                "feed": client.get("/feed", params={"after": value}),
                "feed id": client.get("/feed", headers={"Last-Event-ID": value.encode()}),
                "task": client.get(f"/tasks/{quoted}"),
                "flag": client.post(f"/calls/{quoted}/flag", data=form, headers=writes),
                "unflag": client.post(f"/calls/{quoted}/unflag", data=form, headers=writes),
                "retag": client.post("/calls/retag", data={**form, "call": value, "task_id": "P1-001"}, headers=writes),
                "retag to": client.post("/calls/retag", data={**form, "call": _id(98), "task_id": value}, headers=writes),
                "period": client.get("/history", params={"period": value}),
            }
            for route, response in refused.items():
                assert response.status_code == 400, (route, value[:30], response.text[:300])
                _one_line_refusal(response)
            # Phase IDs are names: the well-formed ones are simply unknown.
            phase = client.get(f"/phases/{quoted}")
            assert phase.status_code == (404 if value in WELL_FORMED_PHASE_NAMES else 400), value[:30]
            _one_line_refusal(phase)
        assert "must be a whole number from 1 to 9223372036854775807" in _one_line_refusal(
            client.post("/alerts/0/clear", data=form, headers=writes)
        )
    assert _cli_json(meter, "show", _id(98))["task_id"] is None
    # And nothing reached the dashboard's stderr: the `dashboard` fixture reads it after each test.
