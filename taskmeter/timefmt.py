"""Timestamps and durations.

Stored timestamps are fixed-width ISO 8601 UTC text with microseconds and a `Z`
(`2025-10-04T09:15:00.000000Z`): they sort as text, read as the seed's protocol,
and keep durations exact to the microsecond.
"""

import re
from datetime import UTC, datetime, timedelta

from taskmeter.errors import MeterError

_STORED_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def now() -> datetime:
    return datetime.now(UTC)


def to_stored(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_STORED_FORMAT)


def now_stored() -> str:
    return to_stored(now())


def from_stored(text: str) -> datetime:
    return datetime.fromisoformat(text)  # the `Z` reads as UTC; far cheaper than strptime


def display(text: str | None) -> str | None:
    """The seed's `YYYY-MM-DDTHH:MM:SSZ` form of a stored timestamp."""
    if text is None:
        return None
    return text[:19] + "Z"


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


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)", re.IGNORECASE)
_ISO_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)


def parse_duration(text: str) -> int:
    """Seconds in a duration such as `1h30m`, `90m`, `1.5h`, `45s` or ISO `PT1H30M`."""
    compact = text.strip().replace(" ", "")
    iso = _ISO_DURATION.match(compact)
    if iso and compact.upper() not in ("P", "PT"):
        parts = {k: float(v) if v else 0.0 for k, v in iso.groupdict().items()}
        seconds = parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    else:
        position, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(compact):
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


def seconds_between(start: str, end: str) -> float:
    return (from_stored(end) - from_stored(start)) / timedelta(seconds=1)


_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(d|h|m|w)$", re.IGNORECASE)


def parse_moment(text: str, reference: datetime | None = None) -> datetime:
    """A point in time for --since, --until and --before: `today`, `yesterday`,
    an age (`90m`, `6h`, `7d`, `2w`: that long ago), a date (`2026-11-20`, local
    midnight) or a time (`2026-11-20T14:00`, local unless it has a zone)."""
    reference = reference or now()
    local_now = reference.astimezone()
    word = text.strip().lower()
    midnight = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
    if word == "today":
        return midnight.astimezone(UTC)
    if word == "yesterday":
        return (midnight - timedelta(days=1)).astimezone(UTC)
    age = _AGO.match(word)
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
