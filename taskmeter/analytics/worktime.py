"""Working time: when a task was being worked on, not merely open.

A task's working time, within its wall time (from its begin to its approval,
or now), is its activity joined into stretches wherever two items are at most
`idle_seconds` apart. Its activity: the minute of each AI call attributed to
it, whether it was current or not (a second terminal's `/t/TASK/`, `meter run
--task`), its commits, test runs, milestones and iterations; and the times it
was current (`meter set-task`): the set-task into it, the switch away from it,
and now while it still is, so a task current while its developer thinks counts
up to now until the pause exceeds `idle_seconds`. Only a gap with activity of
the task on one side, or inside a time it was current, is joined: a switch away
and the next switch back, with other work between, are not. Nights and lunches
do not count, and working time never exceeds wall time. Pure functions over
POSIX seconds.
"""

from bisect import bisect_right

Span = tuple[float, float]

DEFAULT_IDLE_SECONDS = 15 * 60


def working_spans(current: list[Span], activity: list[Span], idle_seconds: float, window: Span) -> list[Span]:
    """The working spans of a task, clipped to `window` (its wall time).
    `current`: when it was current (each end a set-task, or now while it still
    is); `activity`: (start, end) items, an AI call's minute or an instant
    (start == end). One sort and one walk: O(n log n)."""
    current = union(current)
    current_starts = [start for start, _ in current]

    def while_current(moment: float) -> bool:
        index = bisect_right(current_starts, moment) - 1
        return index >= 0 and moment <= current[index][1]

    # (start, is not activity, end): a current interval's ends are points that are not activity.
    # Activity first among items that start together: it decides whether the gap before them is joined.
    # Plain tuples, sorted as they compare: a key function would cost a call per item.
    items = sorted(
        [(start, False, end) for start, end in activity] + [(moment, True, moment) for interval in current for moment in interval]
    )
    # The span being joined is kept in two locals, and appended once it ends: `meter tasks` walks
    # tens of thousands of items, and a tuple made and stored per joined item cost a third of its time.
    spans: list[Span] = []
    if not items:
        return spans
    span_start, first_not_activity, span_end = items[0]
    last_is_activity = not first_not_activity  # whether an item ending where the span being joined ends is activity
    for start, not_activity, end in items:
        if start <= span_end or (
            start - span_end <= idle_seconds and (not not_activity or last_is_activity or while_current((start + span_end) / 2))
        ):
            if end > span_end:
                span_end = end
                last_is_activity = not not_activity
            elif end == span_end:
                last_is_activity = last_is_activity or not not_activity
            continue
        spans.append((span_start, span_end))
        span_start, span_end = start, end
        last_is_activity = not not_activity
    spans.append((span_start, span_end))
    low, high = window
    # Conditionals, not max() and min(): a call each, for every span of every task `meter tasks` lists.
    clipped = [(start if start > low else low, end if end < high else high) for start, end in spans]
    return [(start, end) for start, end in clipped if end > start]


def total(spans: list[Span]) -> float:
    # Every end is a stored moment (whole microseconds): rounding drops the float
    # error of POSIX seconds, so working time never exceeds wall time by 1e-7 s.
    return round(sum(end - start for start, end in union(spans)), 6)


def union(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    ordered = sorted(spans)
    if not ordered:
        return merged
    low, high = ordered[0]  # the span being merged, appended once it ends (as in working_spans)
    for start, end in ordered:
        if start <= high:
            if end > high:
                high = end
            continue
        merged.append((low, high))
        low, high = start, end
    merged.append((low, high))
    return merged
