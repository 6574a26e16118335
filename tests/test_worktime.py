"""Working spans: the walk against the plain definition, moment by moment.

The rule changed with issue 22: a task's own activity counts whether or not it
was current (before, a task that had ever been current counted only its current
intervals, and one never current only from its first activity to its last), and
everything is clipped to the task's wall time. So the definition below takes
activity outside current intervals too, and each test passes the window."""

from hypothesis import example, given, settings
from hypothesis import strategies as st

from taskmeter.analytics.worktime import total, union, working_spans

IDLE = 15.0


def by_definition(current, activity, idle, window):
    """Seconds of the window that are working time (integer inputs: each second
    judged at its middle x). x works when an item covers it, or when the gap
    around it, from the last item ending before x to the first starting after,
    is at most `idle` and has activity on one side or lies in a current interval.
    Items: the activity and each current interval's two ends."""
    ends = [(a, a) for a, _ in current] + [(b, b) for _, b in current]

    def works(x: float) -> bool:
        if any(a <= x <= b for a, b in activity):
            return True
        before = [b for _, b in activity + ends if b <= x]
        after = [a for a, _ in activity + ends if a >= x]
        if not before or not after or min(after) - max(before) > idle:
            return False
        left, right = max(before), min(after)
        beside_activity = any(b == left for _, b in activity) or any(a == right for a, _ in activity)
        return beside_activity or any(a <= x <= b for a, b in current)

    low, high = window
    return sum(works(k + 0.5) for k in range(int(low), int(high)))


def _intervals(draw_points):
    ordered = sorted(set(draw_points))
    return [(ordered[i], ordered[i + 1]) for i in range(0, len(ordered) - 1, 2)]


@settings(max_examples=300)
@given(
    # Few distinct moments, so that items often start or end together.
    st.lists(st.integers(0, 40).map(lambda n: n * 5), min_size=0, max_size=12).map(_intervals),
    st.lists(
        st.tuples(st.integers(0, 44).map(lambda n: n * 5), st.sampled_from([0, 0, 5, 60])).map(lambda t: (t[0], t[0] + t[1])),
        max_size=30,
    ),
    st.tuples(st.integers(0, 100), st.integers(0, 250)).map(lambda t: (t[0], t[0] + t[1])),
)
@example([(0, 100), (115, 130)], [(115, 120)], (0, 200))  # a call at the moment of a switch back joins the gap before
def test_the_walk_matches_the_definition(current, activity, window):
    spans = working_spans(current, activity, IDLE, window)
    assert total(spans) == by_definition(current, activity, IDLE, window)
    assert total(spans) <= window[1] - window[0]  # never more than the wall time


def test_a_night_is_idle_and_overlaps_count_once():
    spans = working_spans([(0, 100_000)], [(10, 70), (600, 660), (90_000, 90_060)], 900, (0, 100_000))
    assert spans == [(0, 660), (90_000, 90_060)]
    assert total(spans + [(600, 700)]) == 760 and union([(0, 5), (3, 9), (20, 21)]) == [(0, 9), (20, 21)]


def test_activity_counts_outside_current_intervals_but_a_switch_away_and_back_is_not_joined():
    # Current 0-100 and 700-800. A second terminal's call at 400-460 between: all joined.
    assert working_spans([(0, 100), (700, 800)], [(30, 90), (400, 460)], 900, (0, 10_000)) == [(0, 800)]
    # Nothing of the task between the switch away at 100 and back at 700: 600 s of other work, not joined.
    assert working_spans([(0, 100), (700, 800)], [(30, 90)], 900, (0, 10_000)) == [(0, 100), (700, 800)]
    # A call of the task at the moment it is switched back to: its activity joins the gap before.
    assert working_spans([(0, 100), (1000, 1100)], [(1000, 1060)], 900, (0, 10_000)) == [(0, 1100)]


def test_a_call_minute_never_reaches_past_the_wall_time():
    # One call at 44.5 s into its minute, 15.5 s ago: 15.5 s of wall time, 15.5 s of work (not 60).
    assert total(working_spans([], [(0, 60)], 900, (44.5, 60.0))) == 15.5


def test_the_time_since_the_last_activity_counts_while_current_and_within_the_idle_gap():
    # Worked through `meter run --task` 0-600, then made current at 600; now is 1100.
    assert total(working_spans([(600, 1100)], [(0, 60), (540, 600)], 900, (0, 1100))) == 1100
    # Now is 2000: 1400 s since the last activity, a gap; the set-task at 600 ended the work.
    assert total(working_spans([(600, 2000)], [(0, 60), (540, 600)], 900, (0, 2000))) == 600
