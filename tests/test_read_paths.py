"""Issue 23, instant commands: the faster ways the read commands take give the keys the
general ones give. In process: SQLite's own date functions, in several time zones."""

import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest

from taskmeter.analytics import periods

# A zone a whole number of hours from UTC now but not in 2010 (Caracas, -4:30 until 2016),
# one with a half-hour clock change (Lord Howe), one never whole (Kolkata), one with
# summer time (Paris), and UTC.
ZONES = ("America/Caracas", "Australia/Lord_Howe", "Asia/Kolkata", "Europe/Paris", "UTC")


def _moments() -> list[str]:
    """Stored moments on quarter hours and between them, across years and clock changes."""
    moments = []
    for start in ("2010-03-01", "2016-04-30", "2026-03-29", "2026-04-04", "2026-10-03", "2026-10-25"):
        origin = datetime.fromisoformat(start).replace(tzinfo=UTC)
        for quarter in range(4 * 24 * 3):
            at = origin + timedelta(minutes=15 * quarter)
            moments.append(at.strftime("%Y-%m-%dT%H:%M:00.000000Z"))
            moments.append((at + timedelta(minutes=7, seconds=13, microseconds=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    return moments


@pytest.fixture
def zone(monkeypatch):
    def use(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield use
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("name", ZONES)
def test_the_whole_hour_key_of_a_local_hour_is_the_general_key_in_any_zone(zone, name):
    zone(name)
    db = sqlite3.connect(":memory:")
    query = f"SELECT {periods._WHOLE_HOUR_LOCAL_START}, {periods._LOCAL_HOUR_START} FROM (SELECT ? AS at)"
    differing = [at for at in _moments() if len(set(db.execute(query, (at,)).fetchone())) != 1]
    assert differing == []


def test_the_hourly_report_takes_the_whole_hour_key_only_where_the_clock_is_whole_hours(zone):
    zone("Europe/Paris")
    assert periods._period_sql("hourly", utc=False) == periods._WHOLE_HOUR_LOCAL_START
    zone("Asia/Kolkata")
    assert periods._period_sql("hourly", utc=False) == periods._LOCAL_HOUR_START
