"""Working spans: the one-walk algorithm against the plain definition."""

from hypothesis import given
from hypothesis import strategies as st

from taskmeter.analytics.worktime import total, union, working_spans

IDLE = 15.0


def by_definition(current, activity, idle):
    """Each interval with its activity and both ends as points, merged while the gaps
    are short; never current: from the first activity to the last."""
    if not current and activity:
        current = [(min(a for a, _ in activity), max(b for _, b in activity))]
    spans = []
    for start, end in current:
        points = [
            (start, start),
            *sorted((max(a, start), min(b, end)) for a, b in activity if b >= start and a <= end),
            (end, end),
        ]
        span_start, span_end = points[0]
        for a, b in points[1:]:
            if a - span_end > idle:
                spans.append((span_start, span_end))
                span_start = a
            span_end = max(span_end, b)
        spans.append((span_start, span_end))
    return [(a, b) for a, b in spans if b > a]


def _intervals(draw_points):
    ordered = sorted(set(draw_points))
    return [(ordered[i], ordered[i + 1]) for i in range(0, len(ordered) - 1, 2)]


@given(
    st.lists(st.integers(0, 500), min_size=2, max_size=12).map(_intervals),
    st.lists(st.tuples(st.integers(0, 520), st.sampled_from([0, 0, 5])).map(lambda t: (t[0], t[0] + t[1])), max_size=40),
)
def test_the_walk_matches_the_definition(current, activity):
    assert total(working_spans(current, activity, IDLE)) == total(by_definition(current, activity, IDLE))


def test_a_night_is_idle_and_overlaps_count_once():
    spans = working_spans([(0, 100_000)], [(10, 70), (600, 660), (90_000, 90_060)], 900)
    assert spans == [(0, 660), (90_000, 90_060)]
    assert total(spans + [(600, 700)]) == 760 and union([(0, 5), (3, 9), (20, 21)]) == [(0, 9), (20, 21)]
