"""Working time: when a task was being worked on, not merely open.

A task's working time, within its wall time (from its begin to its approval,
or now), is made of
- its activity joined into stretches wherever two items are at most
  `idle_seconds` apart: the minute of each AI call attributed to it, whether it
  was current or not (a second terminal's `/t/TASK/`, `meter run --task`), its
  commits, test runs, milestones and iterations;
- and the time it was current (`meter set-task`), less idle gaps: there the
  set-task into it, the switch away from it, and now while it is still current
  count as activity too, so a task current while its developer thinks counts
  up to now until the pause exceeds `idle_seconds`.
Nights and lunches do not count, a switch away is not bridged to later work by
itself, and working time never exceeds wall time. Pure functions over POSIX seconds.
"""

from bisect import bisect_right

Span = tuple[float, float]

DEFAULT_IDLE_SECONDS = 15 * 60


def _joined(items: list[Span], idle_seconds: float) -> list[Span]:
    """Sorted (start, end) items joined wherever the gap is at most `idle_seconds`."""
    spans: list[Span] = []
    for start, end in items:
        if spans and start - spans[-1][1] <= idle_seconds:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def working_spans(current: list[Span], activity: list[Span], idle_seconds: float, window: Span) -> list[Span]:
    """The working spans of a task, clipped to `window` (its wall time). `current`: when it was current (each
    end a set-task, or now while it still is); `activity`: (start, end) items, an
    AI call's minute or an instant (start == end). O(n log n) but for the items
    of each current interval."""
    activity = sorted(activity)
    spans = _joined(activity, idle_seconds)
    starts = [start for start, _ in activity]
    longest = max((end - start for start, end in activity), default=0)
    for start, end in current:
        # The items that reach into this interval, clipped to it, between its two ends.
        reaching = activity[bisect_right(starts, start - longest - 1) : bisect_right(starts, end)]
        inside = [(max(a, start), min(b, end)) for a, b in reaching if b >= start]
        spans += _joined([(start, start), *inside, (end, end)], idle_seconds)
    low, high = window
    clipped = [(max(start, low), min(end, high)) for start, end in spans]
    return union([(start, end) for start, end in clipped if end > start])


def total(spans: list[Span]) -> float:
    return sum(end - start for start, end in union(spans))


def union(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
