"""Working spans: the walk against the plain definition, moment by moment.

The rule changed with issue 22: a task's own activity counts whether or not it
was current (before, a task that had ever been current counted only its current
intervals, and one never current only from its first activity to its last), and
everything is clipped to the task's wall time. So the definition below takes
both parts, and each test passes the window."""

from hypothesis import given
from hypothesis import strategies as st

from taskmeter.analytics.worktime import total, union, working_spans

IDLE = 15.0


def _working_at(x: float, items: list, idle: float) -> bool:
    """Is moment x inside an item, or inside a gap between two items no longer than `idle`?"""
    if any(a <= x <= b for a, b in items):
        return True
    before = [b for _, b in items if b <= x]
    after = [a for a, _ in items if a >= x]
    return bool(before and after) and min(after) - max(before) <= idle


def by_definition(current, activity, idle, window):
    """Seconds of the window (integer inputs: each second judged at its middle)
    that are working time: joined activity, or a current interval's own items
    and ends joined."""
    low, high = window
    seconds = 0
    for k in range(int(low), int(high)):
        x = k + 0.5
        working = _working_at(x, activity, idle) or any(
            start <= x <= end
            and _working_at(
                x,
                [(start, start), (end, end)] + [(max(a, start), min(b, end)) for a, b in activity if b >= start and a <= end],
                idle,
            )
            for start, end in current
        )
        seconds += working
    return seconds


def _intervals(draw_points):
    ordered = sorted(set(draw_points))
    return [(ordered[i], ordered[i + 1]) for i in range(0, len(ordered) - 1, 2)]


@given(
    st.lists(st.integers(0, 500), min_size=0, max_size=12).map(_intervals),
    st.lists(st.tuples(st.integers(0, 520), st.sampled_from([0, 0, 5, 60])).map(lambda t: (t[0], t[0] + t[1])), max_size=40),
    st.tuples(st.integers(0, 300), st.integers(0, 300)).map(lambda t: (t[0], t[0] + t[1])),
)
def test_the_walk_matches_the_definition(current, activity, window):
    spans = working_spans(current, activity, IDLE, window)
    assert total(spans) == by_definition(current, activity, IDLE, window)
    assert total(spans) <= window[1] - window[0]  # never more than the wall time


def test_a_night_is_idle_and_overlaps_count_once():
    spans = working_spans([(0, 100_000)], [(10, 70), (600, 660), (90_000, 90_060)], 900, (0, 100_000))
    assert spans == [(0, 660), (90_000, 90_060)]
    assert total(spans + [(600, 700)]) == 760 and union([(0, 5), (3, 9), (20, 21)]) == [(0, 9), (20, 21)]


def test_activity_counts_outside_current_intervals_but_a_switch_away_is_not_bridged():
    # Current 0-100 (busy until 90); its calls from a second terminal at 700-760
    # while another task is current: both count, and 100-700 (a gap) does not.
    spans = working_spans([(0, 100)], [(30, 90), (700, 760)], 900, (0, 10_000))
    assert spans == [(0, 760)]  # 600 s apart: within the idle gap of 900 s
    spans = working_spans([(0, 100)], [(30, 90), (1200, 1260)], 900, (0, 10_000))
    assert spans == [(0, 100), (1200, 1260)]  # the switch away at 100 is not joined to 1200 by itself


def test_a_call_minute_never_reaches_past_the_wall_time():
    # One call at 44.5 s into its minute, 15.5 s ago: 15.5 s of wall time, 15.5 s of work (not 60).
    assert total(working_spans([], [(0, 60)], 900, (44.5, 60.0))) == 15.5


def test_the_time_since_the_last_activity_counts_while_current_and_within_the_idle_gap():
    # Worked through `meter run --task` 0-600, then made current at 600; now is 1100.
    assert total(working_spans([(600, 1100)], [(0, 60), (540, 600)], 900, (0, 1100))) == 1100
    # Now is 2000: 1400 s since the last activity, a gap; the set-task at 600 ended the work.
    assert total(working_spans([(600, 2000)], [(0, 60), (540, 600)], 900, (0, 2000))) == 600
