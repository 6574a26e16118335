"""Timestamps and durations.

Stored timestamps are fixed-width ISO 8601 UTC text with microseconds and a `Z`
(`2025-10-04T09:15:00.000000Z`): they sort as text, read as the seed's protocol,
and keep durations exact to the microsecond.
"""

import re
from datetime import UTC, date, datetime, time, timedelta
from time import localtime, strftime
from typing import overload

from taskmeter.errors import MeterError


def now() -> datetime:
    return datetime.now(UTC)


def to_stored(moment: datetime) -> str:
    # isoformat, not strftime: the same text at half the cost (a listing writes thousands)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:26] + "Z"


def now_stored() -> str:
    return to_stored(now())


# A stored moment as POSIX seconds, computed by SQLite as from_stored(moment).timestamp()
# is (whole microseconds over 10**6, one rounding): reading thousands of moments costs
# a report nothing in Python.
def seconds_sql(column: str) -> str:
    return f"(unixepoch(substr({column}, 1, 19)) * 1000000 + CAST(substr({column}, 21, 6) AS INTEGER)) / 1e6"


def from_stored(text: str) -> datetime:
    return datetime.fromisoformat(text)  # the `Z` reads as UTC; far cheaper than strptime


@overload
def display(text: str, utc: bool = False) -> str: ...
@overload
def display(text: None, utc: bool = False) -> None: ...
@overload
def display(text: str | None, utc: bool = False) -> str | None: ...
def display(text: str | None, utc: bool = False) -> str | None:
    """A stored timestamp as a person reads it: local time with its offset
    (`2025-10-04T11:15:00+02:00`), or with `utc` the seed's `2025-10-04T09:15:00Z`."""
    if text is None:
        return None
    if utc:
        return text[:19] + "Z"
    return from_stored(text).astimezone().isoformat(timespec="seconds")


# Local time here is the C library's (TZ, else /etc/localtime), as SQLite's 'localtime' reads it,
# so that a day or an hour means the same in Python and in a report's SQL.


def local_midnight(day: date) -> datetime:
    """When `day` begins in local time, with that day's own offset: on a day whose clock
    changes, midnight is before the change (Berlin, 2026-10-25: 00:00 CEST, 22:00Z)."""
    return datetime.combine(day, time()).astimezone().astimezone(UTC)


def local_hour_starts(since: datetime, until: datetime) -> list[datetime]:
    """The starts (UTC) of the local hours from `since` until before `until`: real hours,
    so a day whose clock goes back has 25 and one whose clock goes forward 23."""
    starts: list[datetime] = []
    moment = since
    while moment < until:
        local = moment.astimezone()
        start = moment - timedelta(minutes=local.minute, seconds=local.second, microseconds=local.microsecond)
        if not starts or starts[-1] != start:
            starts.append(start.astimezone(UTC))
        moment += timedelta(minutes=15)  # every offset is whole quarter hours
    return starts


def hour_label(start: str, utc: bool = False) -> str:
    """An hour as a person reads it, with its zone: `2026-10-25 02:00 CEST` and then
    `2026-10-25 02:00 CET` on the day the clock goes back (`2026-10-25 00:00 UTC` with `utc`)."""
    moment = from_stored(start)
    if utc:
        return moment.strftime("%Y-%m-%d %H:00 UTC")
    # The C library's local time, as astimezone() reads it, at a third of the cost (an hourly report has thousands)
    return strftime("%Y-%m-%d %H:00 %Z", localtime(moment.timestamp()))


def _from_iso(text: str) -> datetime | None:
    """An ISO 8601 date or time (a `z` or `Z` is UTC), or None."""
    candidate = text.strip()
    if candidate.endswith(("z", "Z")):
        candidate = candidate[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(candidate)
    except ValueError:
        return None


def parse_user_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 timestamp given on the command line; it must carry a zone."""
    moment = _from_iso(text)
    if moment is None:
        raise MeterError(f"cannot parse timestamp {text!r}: use ISO 8601 such as 2025-10-04T09:15:00Z")
    if moment.tzinfo is None:
        raise MeterError(f"timestamp {text!r} has no time zone: add Z for UTC or an offset such as -07:00")
    return moment.astimezone(UTC)


# Patterns as text, compiled by `re` (and cached) when first used: compiling every pattern
# at import cost each command that parses no duration a fraction of a millisecond per pattern.
_DURATION_PART = r"(?i)(\d+(?:\.\d+)?)\s*(h|m|s)"
_ISO_DURATION = (
    r"(?i)^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> int:
    """Seconds in a duration such as `1h30m`, `90m`, `1.5h`, `45s` or ISO `PT1H30M`."""
    compact = text.strip().replace(" ", "")
    iso = re.match(_ISO_DURATION, compact)
    if iso and compact.upper() not in ("P", "PT"):
        parts = {k: float(v) if v else 0.0 for k, v in iso.groupdict().items()}
        seconds = parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    else:
        position, seconds = 0, 0.0
        for match in re.finditer(_DURATION_PART, compact):
            if match.start() != position:
                break
            position = match.end()
            unit = match.group(2).lower()
            seconds += float(match.group(1)) * {"h": 3600, "m": 60, "s": 1}[unit]
        if position != len(compact) or position == 0:
            raise MeterError(f"cannot parse duration {text!r}: use forms like 1h30m, 90m, 1.5h or PT1H30M")
    if seconds <= 0:
        raise MeterError(f"duration {text!r} must be longer than zero")
    return round(seconds)


@overload
def format_duration(seconds: float) -> str: ...
@overload
def format_duration(seconds: None) -> None: ...
@overload
def format_duration(seconds: float | None) -> str | None: ...
def format_duration(seconds: float | None) -> str | None:
    """`1h 30m` style, with a sign for negative variances."""
    if seconds is None:
        return None
    sign = "-" if seconds < 0 else ""
    total = round(abs(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        text = f"{hours}h {minutes:02d}m"
    elif minutes:
        text = f"{minutes}m {secs:02d}s" if secs else f"{minutes}m"
    else:
        text = f"{secs}s"
    return sign + text


def format_seconds(value: float | None) -> str:
    """A latency as listings show it: 0.42s, 12.3s, 95s; `—` when not measured."""
    if value is None:
        return "—"
    return f"{value:.2f}s" if value < 10 else f"{value:.1f}s" if value < 60 else f"{value:.0f}s"


def seconds_between(start: str, end: str) -> float:
    return (from_stored(end) - from_stored(start)) / timedelta(seconds=1)


_AGO = r"(?i)^(\d+(?:\.\d+)?)\s*(d|h|m|w)$"


def parse_moment(text: str, reference: datetime | None = None) -> datetime:
    """A point in time for --since, --until and --before: `today`, `yesterday`,
    an age (`90m`, `6h`, `7d`, `2w`: that long ago), a date (`2026-11-20`, local
    midnight) or a time (`2026-11-20T14:00`, local unless it has a zone). A day
    begins at its own midnight, with its own offset (local_midnight)."""
    reference = reference or now()
    today = reference.astimezone().date()
    word = text.strip().lower()
    if word == "today":
        return local_midnight(today)
    if word == "yesterday":
        return local_midnight(today - timedelta(days=1))
    age = re.match(_AGO, word)
    if age:
        unit = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[age.group(2).lower()]
        return reference - timedelta(seconds=float(age.group(1)) * unit)
    moment = _from_iso(text)
    if moment is None:
        raise MeterError(
            f"cannot read {text!r} as a time: use today, yesterday, an age such as 6h or 7d, "
            "a date such as 2026-11-20, or an ISO 8601 time"
        )
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the user's local time
    return moment.astimezone(UTC)
