"""`meter forecast`, the --estimate answer, tags, budget chances and the forecast
alert, over real stored tasks (the store's own functions write them; the reports'
records are what the forecast reads)."""

import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from taskmeter.analytics import forecast
from taskmeter.store import connection
from taskmeter.timefmt import from_stored, now
from tests.forecast_history import START, stored_task
from tests.test_dashboard import page  # noqa: F401 (the dashboard's page fixture)

HOUR = 3600
# Nine approved tasks estimated at an hour: what each took, in hours (ratios to the estimate).
RATIOS = [1.0, 1.1, 1.2, 1.25, 1.3, 1.4, 1.5, 1.6, 1.8]
TOKENS_PER_HOUR = 100_000
USD_PER_TOKEN = 1e-5


def history(db, ratios=RATIOS, tag=None, phase="P1", day=0) -> None:
    """Approved tasks of `phase`, one after another from `day` days after START, each estimated at an hour."""
    moment = START + timedelta(days=day)
    for n, ratio in enumerate(ratios, start=1):
        worked = ratio * HOUR
        tokens = round(ratio * TOKENS_PER_HOUR)
        moment = stored_task(
            db, f"{phase}-{n:03d}", moment, worked, HOUR, tokens, tokens * USD_PER_TOKEN, tag=tag, number=100 * day + n
        ) + timedelta(minutes=5)


def _json(meter, *args):
    result = meter(*args)
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_a_task_is_forecast_from_the_approved_tasks_as_their_records_give_them(meter, db):
    history(db)
    meter("set-task", "P2-001")
    assert meter("task", "P2-001", "--estimate", "2h").code == 0
    record = _json(meter, "forecast", "P2-001", "--json")
    assert record["level"] == 0.8 and record["basis"] == "estimate" and record["estimate_seconds"] == 2 * HOUR
    # P2 has no approved task: every approved task is the class; nine, the minimum.
    assert record["reference_class"] == {"kind": "all", "name": None, "tasks": 9}
    assert record["tasks_used"] == 9
    working = record["working_seconds"]
    # Nine ratios at 80%: the conformal ranks are the 1st and the 9th; the point their median.
    assert working == pytest.approx({"point": 2 * 1.3 * HOUR, "low": 2 * 1.0 * HOUR, "high": 2 * 1.8 * HOUR, "tasks": 9})
    # Tokens and cost per estimated hour, times the estimate.
    assert record["tokens"]["low"] == pytest.approx(2 * TOKENS_PER_HOUR)
    assert record["tokens"]["high"] == pytest.approx(2 * 1.8 * TOKENS_PER_HOUR)
    assert record["cost_usd"]["point"] == pytest.approx(2 * 1.3 * TOKENS_PER_HOUR * USD_PER_TOKEN)
    # The same numbers as the pure forecast over the records `meter tasks --json` prints.
    records = _json(meter, "tasks", "--json")
    outcomes = [forecast.outcome_of(r) for r in records]
    target = next(o for o in outcomes if o.task_id == "P2-001")
    assert forecast.forecast_task(target, forecast.approved_in_order(outcomes)).record["tokens"] == record["tokens"]
    assert set(record["so_far"]) == set(forecast.QUANTITIES) and record["past_high"] == []


def test_an_estimate_is_answered_with_what_similar_tasks_took(meter, db):
    history(db)
    result = meter("set-task", "P2-001", "--estimate", "2h")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("Current task: P2-001 (created")
    assert lines[1] == "Similar tasks took 2h 00m–3h 36m (80%, 9 tasks); 200k–360k tokens, $2.00–$3.60."
    edited = meter("task", "P2-001", "--title", "Login")
    assert edited.out.splitlines() == ["P2-001: title 'Login'."]  # no estimate given: no forecast
    again = meter("task", "P2-001", "--estimate", "1h")
    # ESTIMATED_DURATION is the first estimate, as the reports use it: the forecast says so.
    assert again.out.splitlines() == [
        "P2-001: estimate 1h 00m.",
        "Similar tasks took 2h 00m–3h 36m (80%, 9 tasks); 200k–360k tokens, $2.00–$3.60."
        " (From its first estimate, 2h 00m, as the reports use.)",
    ]


def test_below_nine_tasks_there_is_no_interval_but_the_reason(meter, db):
    history(db, RATIOS[:5])
    result = meter("set-task", "P2-001", "--estimate", "2h")
    assert result.out.splitlines()[1] == (
        "Forecast: not enough history (5 tasks); an interval needs 9 comparable approved tasks."
    )
    record = _json(meter, "forecast", "P2-001", "--json")
    for quantity in forecast.QUANTITIES:
        assert record[quantity] == {"tasks": 5, "reason": "not enough history (5 tasks)", "needed": 9}
    text = meter("forecast", "P2-001").out
    assert "WORKING TIME: not enough history (5 tasks)" in text and "–" not in text
    # 90% needs 19.
    history(db, RATIOS, phase="P3", day=3)
    wider = _json(meter, "forecast", "P2-001", "--json", "--level", "0.9")
    assert wider["working_seconds"]["reason"] == "not enough history (14 tasks)"


def test_a_tag_is_a_reference_class(meter, db):
    history(db, [3.0] * 9, phase="P1")  # slow work, untagged
    history(db, RATIOS, phase="P3", day=3)
    for n in range(1, 10):
        assert meter("task", f"P3-{n:03d}", "--tag", "API").code == 0
    meter("set-task", "P2-001", "--estimate", "1h")
    meter("task", "P2-001", "--tag", "api")
    record = _json(meter, "forecast", "P2-001", "--json")
    assert record["reference_class"] == {"kind": "tag", "name": "api", "tasks": 9}
    assert record["working_seconds"]["high"] == pytest.approx(1.8 * HOUR)
    assert _json(meter, "task", "P2-001", "--json")["tag"] == "api"
    # Untagged, its phase has no history: every task, the slow ones too.
    meter("task", "P2-001", "--unset", "tag")
    assert _json(meter, "forecast", "P2-001", "--json")["reference_class"]["kind"] == "all"
    bad = meter("task", "P2-001", "--tag", "two words")
    assert bad.code == 1 and "malformed tag 'two words'" in bad.err and "Traceback" not in bad.err


def test_a_phase_is_forecast_by_resampling_its_open_tasks(meter, db):
    history(db)
    for n in (1, 2):
        stored_task(db, f"P2-00{n}", START + timedelta(days=1, hours=n), 600, HOUR, 1000, 0.01, approve=False, number=50 + n)
    assert meter("phase", "P2", "--budget", "$5").code == 0
    record = _json(meter, "forecast", "P2", "--json")
    assert record["open_tasks"] == ["P2-001", "P2-002"] and record["level"] == 0.8
    working = record["working_seconds"]
    # What the tasks used so far is their working time as the records give it (an open task's last call's minute counts).
    records = {r["task_id"]: r for r in _json(meter, "tasks", "--json")}
    assert working["used"] == pytest.approx(records["P2-001"]["actual_duration"] + records["P2-002"]["actual_duration"])
    assert 1200 <= working["used"] <= 1320
    # Two tasks of about 1.3 h each in all.
    assert working["low"] < working["point"] < working["high"]
    assert 2 * 1.0 * HOUR <= working["low"] and working["high"] <= 2 * 1.8 * HOUR
    assert working["left"]["point"] == pytest.approx(working["point"] - working["used"])
    # The estimate is 2 h: two tasks that each take at least their hour stay within it only
    # when both draw the lowest ratio, 1.0, one draw in 81.
    assert record["estimated_total"] == 2 * HOUR
    assert record["chance_within_estimate"] == pytest.approx(1 / 81, abs=0.008)
    # $5 against about $2.60 of work: it holds.
    assert record["chance_within_budget"] == {"usd": 1.0}
    finish = record["finish"]
    assert finish["low"] <= finish["point"] <= finish["high"]
    # The work left at the phase's pace (its working time per second of the clock since it began).
    left_at_pace = timedelta(seconds=working["left"]["point"] / finish["pace"])
    assert abs(from_stored(finish["point"]) - now() - left_at_pace) < timedelta(minutes=1)
    again = _json(meter, "forecast", "P2", "--json")
    assert {**again, "finish": None} == {**record, "finish": None}  # seeded: the same draws every time
    budget = {r["target"]: r for r in _json(meter, "budget", "--json")}
    assert budget["P2"]["caps"][0]["chance_within"] == 1.0
    assert "Chance within" in meter("budget").out


def test_the_backtest_scores_the_forecasts_against_the_baselines(meter, db):
    history(db, RATIOS * 2)
    report = _json(meter, "forecast", "--backtest", "--json")
    assert report["tasks"] == 18
    working = report["working_seconds"]
    assert working["n"] == 9  # tasks 10 to 18, each from the ones before
    assert set(working) == {"n", "coverage", "median_width", "median_abs_log_error", "winkler", "baselines"}
    assert set(working["baselines"]["raw_estimate"]) == {"n", "coverage", "median_width", "median_abs_log_error", "winkler"}
    # A point holds only a result exactly on it: the one task of nine that took its hour.
    assert working["baselines"]["raw_estimate"]["coverage"] == pytest.approx(1 / 9)
    assert working["coverage"] == 1.0  # the same nine ratios again: each within min..max
    text = meter("forecast", "--backtest").out
    assert "raw estimate" in text and "phase median" in text


def test_bad_input_is_one_line(meter, db):
    history(db, RATIOS[:2])
    for args, said in [
        (("forecast", "NOPE-1"), "no task or phase 'NOPE-1'"),
        (("forecast", "P1-001", "--level", "0.99"), "0.99 is outside 0.5-0.95"),
        (("forecast", "P1", "--backtest"), "--backtest scores every approved task"),
        (("forecast",), "no current task"),
    ]:
        result = meter(*args)
        assert result.code == 1 and said in result.err and len(result.err.splitlines()) == 1, result.err


def test_an_open_task_past_its_interval_raises_one_alert_per_quantity(db_path, meter):
    from taskmeter.recorder.planner import Guard
    from taskmeter.store.writer import Writer
    from tests.test_budgets import NO_DEFAULT_BUDGET

    db = connection.connect(db_path)
    history(db)
    # The current task: estimated at 10 minutes, 40 minutes of work so far (the upper end: 18).
    begun = now() - timedelta(minutes=40)
    stored_task(db, "P2-004", begun, 40 * 60, 600, 1000, 0.01, approve=False, number=77)
    # Another open task, not current (its calls came with its /t/ prefix): 30 minutes of work on 10.
    stored_task(db, "P2-005", begun - timedelta(hours=2), 30 * 60, 600, 1000, 0.01, approve=False, number=78)
    from taskmeter.store import tasks

    tasks.set_task(db, "P2-004")
    db.close()

    def guard(announced: list) -> Guard:
        return Guard(Writer(db_path), lambda state: None, announced.append, NO_DEFAULT_BUDGET, 10, 5, "warn", 3.0, [], 900)

    announced: list[str] = []
    guard(announced).refresh(force=True)
    time_alerts = sorted(line for line in announced if "time" in line)
    assert len(time_alerts) == 2
    assert time_alerts[0].startswith("meter: ALERT P2-004 is past 90% of similar tasks' time: 40m so far, above 18m")
    # (an open task's working time runs to the end of its last call's minute)
    assert re.match(r"meter: ALERT P2-005 is past 90% of similar tasks' time: 3[01]m so far, above 18m", time_alerts[1])
    again: list[str] = []
    guard(again).refresh(force=True)
    assert again == []  # once per task and quantity
    kinds = [a["kind"] for a in _json(meter, "alerts", "--json")]
    assert "forecast" in kinds


@pytest.mark.e2e
def test_meter_forecast_through_the_real_command(db_path):
    db = connection.connect(db_path)
    history(db)
    db.close()
    meter_bin = Path(sys.executable).parent / "meter"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(meter_bin), *args, "--db", str(db_path)], capture_output=True, text=True, timeout=60)

    estimate = run("set-task", "P2-001", "--estimate", "30m")
    assert estimate.returncode == 0, estimate.stderr
    assert estimate.stdout.splitlines()[1] == "Similar tasks took 30m–54m (80%, 9 tasks); 50k–90k tokens, $0.5000–$0.9000."
    shown = run("forecast")
    assert shown.returncode == 0 and "WORKING TIME: 39m (30m–54m)" in shown.stdout, shown.stdout
    backtest = run("forecast", "--backtest", "--json")
    assert json.loads(backtest.stdout)["tasks"] == 9


def test_the_task_and_phase_reports_carry_a_forecast_block(meter, db):
    history(db, RATIOS * 2)
    # The tenth task, approved: forecast from the nine approved before it (the ratios 1.0 to 1.8).
    text = meter("report", "task", "P1-010").out
    block = text[text.index("=== FORECAST ===") :].splitlines()
    assert block[1] == "FORECAST:     80% intervals from phase P1's earlier tasks (9 tasks used)"
    assert block[3] == "WORKING TIME: 1h 18m (1h 00m–1h 48m)"
    # The seed's fields are as they were: the block comes after them, JSON keeps the seed's record.
    assert "ESTIMATED_DURATION:" in text[: text.index("=== FORECAST ===")]
    assert "forecast" not in _json(meter, "report", "task", "P1-010", "--json")
    markdown = meter("report", "task", "P1-010", "--format", "markdown").out
    assert "**Forecast:**\n```\n=== FORECAST ===" in markdown
    stored_task(db, "P1-099", START + timedelta(days=5), 600, HOUR, 1000, 0.01, approve=False, number=999)
    phase = meter("report", "phase", "P1").out
    lines = phase[phase.index("=== FORECAST ===") :].splitlines()
    assert lines[1] == "FORECAST:        80% intervals, 1 open task resampled"
    assert lines[2].startswith("WORKING TIME:") and " left (" in lines[2]


@pytest.mark.e2e
def test_the_dashboard_shows_the_forecasts_the_chances_and_the_burndown(db_path, page):  # noqa: F811
    import httpx

    from tests.test_dashboard import RunningDashboard

    db = connection.connect(db_path)
    history(db)
    stored_task(db, "P2-001", START + timedelta(days=1), 600, HOUR, 1000, 0.01, approve=False, number=51)
    db.close()
    running = RunningDashboard(db_path)
    try:
        phase = httpx.get(f"{running.origin}/phases/P2", headers=running.cookie, timeout=30)
        task = httpx.get(f"{running.origin}/tasks/P2-001", headers=running.cookie, timeout=30)
        running.enter(page)
        assert running.goto(page, "/phases/P1").status == 200
        page.wait_for_load_state("load")
        burndown = page.locator('canvas[data-chart="burndown"]')
        labels = burndown.evaluate("canvas => Chart.getChart(canvas).data.datasets.map(d => d.label)")
    finally:
        assert running.stop() == 0
    assert phase.status_code == 200 and task.status_code == 200
    assert '<h2 id="forecast">Forecast</h2>' in phase.text
    # Its one open task stays within its hour only when it draws the ratio 1.0: one draw in nine.
    within = re.search(r"<tr><th>Within estimate</th><td>(\d+)% \(estimate 1h 00m\)</td></tr>", phase.text)
    assert within and 7 <= int(within.group(1)) <= 15
    # The task's forecast against what it has used so far.
    assert "<tr><th>Working time</th><td>1h 18m (1h 00m–1h 48m); so far 11m</td></tr>" in task.text
    # P2's burndown: an hour estimated, none approved; its fan from now to no work left.
    charts = json.loads(re.search(r'<script type="application/json" id="charts">(.*?)</script>', phase.text).group(1))
    lines = {dataset["label"]: dataset["data"] for dataset in charts["burndown"]["datasets"]}
    assert lines["Estimated work left"][0] == {"x": 0.0, "y": 1.0} and lines["Estimated work left"][-1]["y"] == 1.0
    now_at = lines["Estimated work left"][-1]
    low, median, high = (lines[f"Forecast, {end}"] for end in ("low", "median", "high"))
    assert low[0] == median[0] == high[0] == now_at
    assert now_at["x"] < low[1]["x"] <= median[1]["x"] <= high[1]["x"] and low[1]["y"] == 0
    # P1, all approved: the line alone, drawn by Chart.js in the browser without an error.
    assert labels == ["Estimated work left"] and page.errors == []


def test_upgrading_keeps_the_alerts_and_takes_forecast_alerts_and_tags(db_path, monkeypatch):
    from taskmeter.store import alerts, migrations, tasks

    m026 = next(n for n, fn in enumerate(migrations.MIGRATIONS) if fn.__name__.startswith("m026_"))
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:m026])
    old = connection.connect(db_path)
    tasks.set_task(old, "P1-001")
    kept = alerts.raise_alert(old, "budget", "budget:task:P1-001:80:x", "budget 80% used", task_id="P1-001", once=True)
    old.close()
    monkeypatch.undo()
    upgraded = connection.connect(db_path)
    assert [dict(row) for row in upgraded.execute("SELECT * FROM alerts")] == [kept]
    assert alerts.raise_alert(upgraded, "forecast", "forecast:P1-001:tokens", "past", task_id="P1-001", once=True)
    tasks.update_task(upgraded, "P1-001", {"tag": "api"})
    assert tasks.get_task(upgraded, "P1-001")["tag"] == "api"
    upgraded.close()


def test_only_the_window_is_read_in_full_and_the_forecast_is_the_same(meter, db):
    """70 approved tasks: the forecast reads the last 60 comparable in full (the others
    from their rows alone) and says what the forecast over every record says."""
    ratios = [1.0 + (n % 9) / 10 for n in range(70)]
    history(db, ratios[:35])
    history(db, ratios[35:], phase="P3", day=5)
    with connection.write_transaction(db):  # two tasks without an estimate: not comparable
        db.execute("UPDATE tasks SET estimate_seconds = NULL WHERE id IN ('P1-002', 'P3-030')")
    stored_task(db, "P2-001", START + timedelta(days=20), 600, HOUR, 1000, 0.01, approve=False, number=999)
    record = _json(meter, "forecast", "P2-001", "--json")
    assert record["reference_class"] == {"kind": "all", "name": None, "tasks": 68} and record["tasks_used"] == 60
    outcomes = [forecast.outcome_of(r) for r in _json(meter, "tasks", "--json")]
    target = next(o for o in outcomes if o.task_id == "P2-001")
    expected = forecast.forecast_task(target, forecast.approved_in_order(outcomes)).record
    assert record == json.loads(json.dumps(expected))


def test_an_estimate_says_there_is_no_history_only_once_there_is_some(meter, db):
    # No approved task yet: nothing to say.
    lines = meter("set-task", "P1-001", "--estimate", "1h").out.splitlines()
    assert lines == [f"Current task: P1-001 (created, began {tasks_begin(db, 'P1-001')})."]
    # Approved tasks, none estimated: none comparable with an estimate, and it says so.
    stored_task(db, "P0-001", START, HOUR, None, 1000, 0.01, number=1)
    lines = meter("task", "P1-001", "--estimate", "2h").out.splitlines()
    assert lines == [
        "P1-001: estimate 2h 00m.",
        "Forecast: not enough history (0 tasks); an interval needs 9 comparable approved tasks.",
    ]


def tasks_begin(db, task_id: str) -> str:
    from taskmeter.store import tasks
    from taskmeter.timefmt import display

    return display(tasks.get_task(db, task_id)["begin_at"])
