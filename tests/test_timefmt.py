from datetime import UTC, datetime

import pytest

from taskmeter.errors import MeterError
from taskmeter.timefmt import (
    display,
    format_duration,
    from_stored,
    parse_duration,
    parse_user_timestamp,
    seconds_between,
    to_stored,
)


@pytest.mark.parametrize(
    "text, seconds",
    [("1h30m", 5400), ("90m", 5400), ("1.5h", 5400), ("45s", 45), ("2h", 7200), ("PT1H30M", 5400), ("1h 5m 3s", 3903)],
)
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "3x", "h", "1h30", "-1h", "0m", "PT", "1d"])
def test_bad_durations_are_refused(text):
    with pytest.raises(MeterError):
        parse_duration(text)


def test_timestamps_round_trip_exactly_with_microseconds():
    moment = datetime(2025, 10, 4, 9, 15, 0, 123456, tzinfo=UTC)
    stored = to_stored(moment)
    assert stored == "2025-10-04T09:15:00.123456Z"
    assert from_stored(stored) == moment
    assert display(stored, utc=True) == "2025-10-04T09:15:00Z"
    assert seconds_between(stored, "2025-10-04T10:05:00.123457Z") == pytest.approx(3000.000001, abs=1e-9)


def test_user_timestamps_need_a_zone_and_convert_to_utc():
    assert parse_user_timestamp("2025-10-04T09:15:00-07:00") == datetime(2025, 10, 4, 16, 15, tzinfo=UTC)
    assert parse_user_timestamp("2025-10-04T09:15:00Z") == datetime(2025, 10, 4, 9, 15, tzinfo=UTC)
    with pytest.raises(MeterError, match="no time zone"):
        parse_user_timestamp("2025-10-04T09:15:00")
    with pytest.raises(MeterError, match="cannot parse"):
        parse_user_timestamp("yesterday")


def test_durations_format_with_sign():
    assert format_duration(5400) == "1h 30m"
    assert format_duration(-600) == "-10m"
    assert format_duration(45) == "45s"
    assert format_duration(None) is None
