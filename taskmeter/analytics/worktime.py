"""Working time: when a task was being worked on, not merely open.

A task's working time is the time it was current (`meter set-task`), less idle
gaps: stretches longer than `idle_seconds` with no activity of the task (an AI
call, a set-task, a milestone or an iteration). A task that was never current
(its calls came through `/t/TASK/` or `meter run --task`) is taken as current
from its first activity to its last. Pure functions over POSIX seconds.
"""

Span = tuple[float, float]

DEFAULT_IDLE_SECONDS = 15 * 60


def working_spans(current: list[Span], activity: list[Span], idle_seconds: float) -> list[Span]:
    """The spans of `current` that are not idle gaps. `activity` holds (start, end)
    items: an AI call's minute, or an instant (start == end). Each interval's
    start and end (a set-task, an approval, or now) count as activity, so a task
    still current keeps the time since its last activity unless that is a gap.
    One walk over both, sorted: O(n log n)."""
    activity = sorted(activity)
    current = sorted(current)
    if not current and activity:
        current = [(activity[0][0], max(end for _, end in activity))]
    spans: list[Span] = []
    first = 0  # the first activity item that may reach into this interval
    for start, end in current:
        while first < len(activity) and activity[first][1] < start:
            first += 1
        span_start, span_end = start, start
        index = first
        while True:
            if index < len(activity) and activity[index][0] <= end:
                a, b = max(activity[index][0], start), min(activity[index][1], end)
                index += 1
            else:
                a = b = end  # the interval's end is the last point
            if a - span_end > idle_seconds:
                spans.append((span_start, span_end))
                span_start = a
            span_end = max(span_end, b)
            if a == end and b == end and (index >= len(activity) or activity[index][0] > end):
                break
        spans.append((span_start, span_end))
    return [(a, b) for a, b in spans if b > a]


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
