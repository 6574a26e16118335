"""Time as a person reads it, on the days the clock changes: `--since today` and
`yesterday`, the hourly report, the dashboard's hours chart (in a real browser),
local times with their offset in records and confirmations; and amounts of money
below a cent, through a real `meter proxy`.

The clock-change days are real ones: Berlin goes back on 2026-10-25 (03:00 CEST
is 02:00 CET, 01:00Z) and forward on 2026-03-29 (02:00 CET is 03:00 CEST, 01:00Z);
New York goes back on 2026-11-01 (02:00 EDT is 01:00 EST, 06:00Z)."""

import json
import re
import subprocess
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from zoneinfo import ZoneInfo

import httpx
import pytest

from taskmeter import ids
from taskmeter.money import usd
from taskmeter.store import connection, tasks
from taskmeter.store.calls import CallRow, store_calls
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from taskmeter.timefmt import local_hour_starts, local_midnight, parse_moment, to_stored
from tests.fake_upstream import FakeUpstream, Scenario
from tests.meter_forks import METER
from tests.proxy_harness import RunningProxy, write_config
from tests.test_dashboard import RunningDashboard, page  # noqa: F401  (the page fixture)

pytestmark = pytest.mark.e2e

BERLIN, NEW_YORK = "Europe/Berlin", "America/New_York"
FALL_BACK, SPRING_FORWARD, NEW_YORK_BACK = date(2026, 10, 25), date(2026, 3, 29), date(2026, 11, 1)


@pytest.fixture
def zone(monkeypatch):
    """Set this process's local time zone, as TZ does for a shell; the C library (and so
    SQLite's 'localtime') reads it again at time.tzset()."""

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "name, reference, today, yesterday",
    [
        # Fall back, before and after the change: midnight was CEST (+02:00) either way.
        (BERLIN, "2026-10-25T00:30", "2026-10-24T22:00", "2026-10-23T22:00"),
        (BERLIN, "2026-10-25T20:00", "2026-10-24T22:00", "2026-10-23T22:00"),
        (BERLIN, "2026-10-26T09:00", "2026-10-25T23:00", "2026-10-24T22:00"),
        # Spring forward: midnight was CET (+01:00), the evening is CEST.
        (BERLIN, "2026-03-29T20:00", "2026-03-28T23:00", "2026-03-27T23:00"),
        (BERLIN, "2026-03-30T08:00", "2026-03-29T22:00", "2026-03-28T23:00"),
        (NEW_YORK, "2026-11-01T20:00", "2026-11-01T04:00", "2026-10-31T04:00"),
        (NEW_YORK, "2026-11-02T15:00", "2026-11-02T05:00", "2026-11-01T04:00"),
    ],
)
def test_today_and_yesterday_begin_at_that_day_s_own_midnight(zone, name, reference, today, yesterday):
    zone(name)
    assert parse_moment("today", utc(reference)) == utc(today)
    assert parse_moment("yesterday", utc(reference)) == utc(yesterday)
    # A date means its own local midnight too, whatever the offset is now (zoneinfo as the witness).
    day = utc(today).astimezone(ZoneInfo(name)).date() + timedelta(days=1)
    expected = datetime.combine(day, clock(), tzinfo=ZoneInfo(name))
    assert parse_moment(day.isoformat(), utc(reference)) == local_midnight(day) == expected


def test_a_day_has_23_24_or_25_real_hours(zone):
    zone(BERLIN)
    for day, count in ((FALL_BACK, 25), (SPRING_FORWARD, 23), (date(2026, 10, 26), 24)):
        starts = local_hour_starts(local_midnight(day), local_midnight(day + timedelta(days=1)))
        assert len(starts) == count
        assert all(later - earlier == timedelta(hours=1) for earlier, later in zip(starts, starts[1:], strict=False))
    zone("Asia/Kolkata")  # +05:30: a local hour starts at half past in UTC
    assert local_hour_starts(local_midnight(date(2026, 10, 25)), utc("2026-10-24T20:00"))[:2] == [
        utc("2026-10-24T18:30"),
        utc("2026-10-24T19:30"),
    ]


def _id(n: int) -> str:
    body = f"0t{n:010d}"
    return body + ids.check_char(body)


def store_hourly_calls(db_path, first: datetime, hours: int, task_id: str = "P1-010", series: int = 0) -> list[int]:
    """One answered call ten minutes into each real hour from `first`, with 100 + n
    tokens in; and a failed call (502) in the first hour. The tokens of each hour.
    `series` keeps the IDs of two calls of this apart."""
    db = connection.connect(db_path)
    with write_transaction(db):
        tasks.ensure_task(db, task_id, to_stored(first - timedelta(minutes=5)))
    rows = []
    for n in range(hours):
        at = to_stored(first + timedelta(hours=n, minutes=10))
        rows.append(
            CallRow(
                Interaction(
                    id=_id(series * 1000 + n), task_id=task_id, attribution="path", started_at=at, ended_at=at, provider="openai",
                    model="gpt-4o-mini", http_status=200, outcome="complete", usage_source="reported",
                    conversation_root=f"c{n}", input_total=100 + n, cache_read=0, cache_write=0, output_total=10,
                    reasoning=0, cost_usd=0.00002 * (n + 1),
                )
            )
        )  # fmt: skip
    failed_at = to_stored(first + timedelta(minutes=20))
    rows.append(
        CallRow(
            Interaction(
                id=_id(series * 1000 + 999), task_id=task_id, attribution="path", started_at=failed_at, ended_at=failed_at,
                provider="openai", model="gpt-4o-mini", http_status=502, outcome="failed",
            )
        )
    )  # fmt: skip
    with write_transaction(db):
        store_calls(db, rows)
    db.close()
    return [110 + n for n in range(hours)]


def meter_in(name: str, db_path, *args: str) -> subprocess.CompletedProcess:
    """`meter` in time zone `name` (a fork of the preloaded meter: tests/meter_forks.py)."""
    env = {"PATH": "/usr/bin:/bin", "METER_DB": str(db_path), "TZ": name, "HOME": str(db_path.parent)}
    return METER.run(list(args), env=env, timeout=60)


def hourly(name: str, db_path, *args: str) -> list[dict]:
    result = meter_in(name, db_path, "report", "hourly", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["periods"]


def test_the_hourly_report_labels_both_repeated_hours_and_loses_none(db_path):
    per_hour = store_hourly_calls(db_path, utc("2026-10-24T22:00"), 25)  # Berlin's 25 hours of 2026-10-25
    day = ("--since", "2026-10-25", "--until", "2026-10-26")
    hours = hourly(BERLIN, db_path, *day)
    assert [h["tokens"]["total"] for h in hours] == per_hour
    labels = [h["period"] for h in hours]
    assert labels[:4] == ["2026-10-25 00:00 CEST", "2026-10-25 01:00 CEST", "2026-10-25 02:00 CEST", "2026-10-25 02:00 CET"]
    assert labels[-1] == "2026-10-25 23:00 CET" and len(set(labels)) == 25
    assert [h["start"] for h in hours] == [to_stored(utc("2026-10-24T22:00") + timedelta(hours=n)) for n in range(25)]
    assert (hours[0]["ai_interactions"], hours[0]["failed_calls"]) == (1, 1)
    # Summed from the calls (a window off the quarter hours), the hours are the same.
    assert hourly(BERLIN, db_path, "--since", "2026-10-24T22:00:00.5Z", "--until", "2026-10-26") == hours
    daily = json.loads(meter_in(BERLIN, db_path, "report", "daily", "--json", *day).stdout)
    assert [(d["period"], d["tokens"]["input_total"]) for d in daily["periods"]] == [("2026-10-25", sum(per_hour) - 250)]
    # The terminal table (piped): a row per hour, the repeated one twice, told apart.
    table = meter_in(BERLIN, db_path, "report", "hourly", *day).stdout
    assert re.search(r"^2026-10-25 02:00 CEST\tall\t1\t", table, re.M) and re.search(
        r"^2026-10-25 02:00 CET\tall\t1\t", table, re.M
    )
    in_utc = hourly(BERLIN, db_path, "--utc", *day)  # the same day (from local midnight), in UTC hours
    assert [h["period"] for h in in_utc][:3] == ["2026-10-24 22:00 UTC", "2026-10-24 23:00 UTC", "2026-10-25 00:00 UTC"]
    assert [h["tokens"]["total"] for h in in_utc] == per_hour


def test_spring_forward_has_no_row_for_the_hour_it_skips(db_path):
    per_hour = store_hourly_calls(db_path, utc("2026-03-28T23:00"), 23)  # Berlin's 23 hours of 2026-03-29
    hours = hourly(BERLIN, db_path, "--since", "2026-03-29", "--until", "2026-03-30")
    labels = [h["period"][11:] for h in hours]
    assert [h["tokens"]["total"] for h in hours] == per_hour
    assert labels[:3] == ["00:00 CET", "01:00 CET", "03:00 CEST"] and "02:00 CET" not in labels and len(labels) == 23
    # The same calls, read in New York: its clock changed on 2026-03-08, so every hour is EDT.
    in_new_york = hourly(NEW_YORK, db_path)
    assert [h["period"] for h in in_new_york][:2] == ["2026-03-28 19:00 EDT", "2026-03-28 20:00 EDT"]
    assert [h["tokens"]["total"] for h in in_new_york] == per_hour


def test_new_york_s_repeated_hour(db_path):
    per_hour = store_hourly_calls(db_path, utc("2026-11-01T04:00"), 25, task_id="P2-001")
    hours = hourly(NEW_YORK, db_path, "--since", "2026-11-01", "--until", "2026-11-02")
    assert [h["tokens"]["total"] for h in hours] == per_hour
    assert [h["period"][11:] for h in hours][:3] == ["00:00 EDT", "01:00 EDT", "01:00 EST"]


def test_records_and_confirmations_show_local_times_with_their_offset(db_path):
    store_hourly_calls(db_path, utc("2026-10-24T23:30"), 1)  # begins 2026-10-25T01:25:00+02:00
    marks = [("initial", "2026-10-25T00:30:00Z"), ("tests", "2026-10-25T01:30:00Z")]  # 02:30 CEST, then 02:30 CET
    for milestone, at in marks:
        done = meter_in(BERLIN, db_path, "mark", milestone, "P1-010", "--at", at)
        assert done.returncode == 0, done.stderr
    assert meter_in(BERLIN, db_path, "mark", "validated", "P1-010", "--at", "2026-10-25T01:40:00Z").stdout == (
        "P1-010: validated at 2026-10-25T02:40:00+01:00.\n"
    )
    record = meter_in(BERLIN, db_path, "report", "task", "P1-010").stdout
    assert re.search(r"^BEGIN_TIMESTAMP: +2026-10-25T01:25:00\+02:00$", record, re.M)
    assert re.search(r"^INITIAL_COMPLETION_TIMESTAMP: +2026-10-25T02:30:00\+02:00$", record, re.M)
    assert re.search(r"^TESTS_COMPLETION_TIMESTAMP: +2026-10-25T02:30:00\+01:00$", record, re.M)
    markdown = meter_in(NEW_YORK, db_path, "report", "task", "P1-010", "--format", "markdown").stdout
    assert re.search(r"^TESTS_COMPLETION_TIMESTAMP: +2026-10-24T21:30:00-04:00$", markdown, re.M)
    # --utc gives the seed's form; JSON keeps the stored UTC text.
    in_utc = meter_in(BERLIN, db_path, "report", "task", "P1-010", "--utc").stdout
    assert re.search(r"^TESTS_COMPLETION_TIMESTAMP: +2026-10-25T01:30:00Z$", in_utc, re.M)
    fields = json.loads(meter_in(BERLIN, db_path, "report", "task", "P1-010", "--json").stdout)
    assert fields["tests_completion_timestamp"] == "2026-10-25T01:30:00.000000Z"
    # set-task's confirmation: the begin time as the clock on the wall shows it.
    line = meter_in(NEW_YORK, db_path, "set-task", "P1-777").stdout
    began = datetime.now(UTC).astimezone(ZoneInfo(NEW_YORK)).isoformat(timespec="seconds")
    assert re.search(rf"^Current task: P1-777 \(created, began {began[:11]}\d\d:\d\d:\d\d{re.escape(began[19:])}\)", line), line


@pytest.mark.parametrize(
    "amount, text",
    [
        (0, "$0.00"),
        (0.0000222, "$0.000022"),
        (0.0007, "$0.0007"),
        (0.00072, "$0.00072"),
        (0.003, "$0.003"),
        (0.0099996, "$0.0100"),
        (0.0234, "$0.0234"),
        (12.3456, "$12.35"),
        (1234.567, "$1,234.57"),
        (-0.0007, "-$0.0007"),
    ],
)
def test_amounts_below_a_cent_keep_two_significant_digits(amount, text):
    assert usd(amount) == text


# gpt-4o-mini at $0.15 and $0.60 per million tokens: 100 in and 12 out are $0.0000222.
TINY_ANSWER = {
    "id": "chatcmpl-tiny",
    "object": "chat.completion",
    "created": 1790000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 100, "completion_tokens": 12, "total_tokens": 112},
}


def test_a_fraction_of_a_cent_reads_the_same_everywhere_through_a_real_proxy(tmp_path):
    import openai

    db_path = tmp_path / "meter.db"
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=json.dumps(TINY_ANSWER).encode())
        upstream.routes["/broken/v1/chat/completions"] = Scenario(status=500, body=b'{"error": "down"}')
        origin = f"http://127.0.0.1:{upstream.port}"
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": origin, "broken": f"{origin}/broken"})
        proxy = RunningProxy(config, db_path)
        try:
            assert meter_in(BERLIN, db_path, "set-task", "P1-001").returncode == 0
            client = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-test", max_retries=0)
            answered = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            ).headers["x-meter-interaction-id"]
            failed = httpx.post(
                f"{proxy.origin}/broken/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []}
            ).headers["x-meter-interaction-id"]
            rows = proxy.rows(wait_for=2)
            deadline = time.monotonic() + 10
            while not [line for _, line in proxy.live_view if answered in line] and time.monotonic() < deadline:
                time.sleep(0.02)
            call_line = next(line for _, line in proxy.live_view if answered in line)
        finally:
            assert proxy.stop() == 0
    assert sorted(row["id"] for row in rows) == sorted([answered, failed])  # each call stored once
    (cost,) = [row["cost_usd"] for row in rows if row["id"] == answered]
    assert cost == pytest.approx(0.0000222)
    assert "$0.000022" in call_line
    record = meter_in(BERLIN, db_path, "report", "task", "P1-001").stdout
    assert re.search(r"^COST_USD: +\$0\.000022$", record, re.M)
    assert "$0.000022" in meter_in(BERLIN, db_path, "statusline").stdout
    # `meter tasks`: working time is "Working", and the failed call has its own column.
    header, row = (line.split("\t") for line in meter_in(BERLIN, db_path, "tasks").stdout.splitlines())
    task = dict(zip(header, row, strict=True))
    assert (task["AI calls"], task["Failed"], task["Cost"]) == ("1", "1", "0.000022")
    assert "Working" in header and "Elapsed" not in header and "Calls" not in header


def _day_on_the_dashboard(shown_in, dashboard, day: date) -> dict:
    dashboard.goto(shown_in, f"/?day={day}")
    shown_in.wait_for_function("() => Chart.getChart(document.querySelector('canvas[data-chart=hourly]'))")
    return shown_in.evaluate(
        """() => {
            const chart = Chart.getChart(document.querySelector('canvas[data-chart=hourly]'));
            return {
                labels: chart.data.labels,
                bars: chart.getDatasetMeta(0).data.length,
                tokens: chart.data.datasets[0].data,
                costs: chart.data.datasets[1].text,
                heading: document.querySelector('h2 + .chart').previousElementSibling.textContent,
            };
        }"""
    )


def test_the_dashboard_draws_each_real_hour_of_a_clock_change_day(db_path, page):  # noqa: F811
    fall = store_hourly_calls(db_path, utc("2026-10-24T22:00"), 25)
    spring = store_hourly_calls(db_path, utc("2026-03-28T23:00"), 23, task_id="P0-001", series=1)
    dashboard = RunningDashboard(db_path, env={"PATH": "/usr/bin:/bin", "TZ": BERLIN, "HOME": str(db_path.parent)})
    try:
        shown = _day_on_the_dashboard(page, dashboard, FALL_BACK)
        assert shown["bars"] == 25 and shown["tokens"] == fall and sum(shown["tokens"]) == sum(fall)
        assert shown["labels"][:4] == ["00:00 CEST", "01:00 CEST", "02:00 CEST", "02:00 CET"]
        assert shown["costs"][:2] == ["$0.00002", "$0.00004"]
        assert shown["heading"] == "Tokens and cost per hour on 2026-10-25"
        shown = _day_on_the_dashboard(page, dashboard, SPRING_FORWARD)
        assert shown["bars"] == 23 and shown["tokens"] == spring
        assert shown["labels"][:3] == ["00:00 CET", "01:00 CET", "03:00 CEST"]
        # A task's record and its calls: local times with their offset (two calls at 02:10, an hour apart).
        dashboard.goto(page, "/tasks/P1-010")
        assert page.locator("[data-field=begin_timestamp]").text_content() == "2026-10-24T23:55:00+02:00"
        titles = [page.locator(f"#call-{_id(n)} .time").get_attribute("title") for n in (2, 3)]
        assert titles == ["2026-10-25T02:10:00+02:00", "2026-10-25T02:10:00+01:00"]
        assert page.errors == []
        for bad in ("2026-13-01", "tomorrow", "1969-12-31", "9999-12-31"):
            answer = httpx.get(f"{dashboard.origin}/?day={bad}", headers=dashboard.cookie)
            assert answer.status_code == 400 and "day must be a date" in answer.text
    finally:
        assert dashboard.stop() == 0
