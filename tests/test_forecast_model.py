"""The forecast on synthetic histories with a known generating process
(analytics/forecast.py): each task's working time is its estimate times a
lognormal overrun of its class, its tokens a rate per working second times
lognormal noise, its cost a price per token. The intervals must hold what they
claim, the point must beat the raw estimate where the process has a bias, and no
interval may be shown below the minimum."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmeter.analytics import forecast
from taskmeter.analytics.forecast import Outcome

ESTIMATES = (1800, 3600, 7200, 14400)


def synthetic(
    count: int,
    seed: int,
    classes: dict[str, tuple[float, float]],
    drift: dict[str, float] | None = None,
    estimated: float = 1.0,
    phase_size: int = 25,
) -> list[Outcome]:
    """`count` approved tasks in approval order; `classes`: tag -> (median overrun, sigma
    of its log); `drift`: tag -> the factor its overrun has reached by the last task;
    `estimated`: the share of tasks with an estimate (the rest are forecast from actuals)."""
    rng = random.Random(seed)
    drift = drift or {}
    tags = list(classes)
    outcomes = []
    for i in range(count):
        tag = tags[i % len(tags)]
        median, sigma = classes[tag]
        median *= drift.get(tag, 1.0) ** (i / count)
        estimate = rng.choice(ESTIMATES)
        worked = estimate * median * math.exp(rng.gauss(0, sigma))
        tokens = worked * 60 * math.exp(rng.gauss(0, 0.3))
        outcomes.append(
            Outcome(
                f"P{i // phase_size + 1}-{i:04d}",
                f"P{i // phase_size + 1}",
                tag,
                f"2026-01-01T00:00:00.{i:06d}Z",
                estimate if rng.random() < estimated else None,
                (worked, tokens, tokens * 3e-6),
            )
        )
    return outcomes


def test_the_80_percent_interval_holds_80_percent_of_a_lognormal_overrun_per_class():
    history = synthetic(240, seed=7, classes={"api": (1.8, 0.4), "ui": (0.9, 0.6)})
    report = forecast.backtest(history)
    for quantity in forecast.QUANTITIES:
        scored = report[quantity]
        assert scored["n"] >= 200
        assert 0.7 <= scored["coverage"] <= 0.9, (quantity, scored["coverage"])


def test_the_point_beats_the_raw_estimate_where_estimates_are_biased():
    history = synthetic(240, seed=11, classes={"api": (1.8, 0.4), "ui": (1.3, 0.3)})
    working = forecast.backtest(history)["working_seconds"]
    raw = working["baselines"]["raw_estimate"]
    assert raw["n"] == working["n"]
    # The raw estimate is a point with no interval: it never covers a result; the forecast does.
    assert raw["coverage"] == 0 and raw["median_width"] == 0
    assert working["median_abs_log_error"] < 0.6 * raw["median_abs_log_error"]
    assert working["winkler"] < raw["winkler"]


def test_a_class_that_drifts_is_forecast_by_its_recent_tasks(monkeypatch):
    """The team gets three times faster over 600 tasks: the window follows it; the
    whole history would not (its intervals lag behind and miss)."""
    history = synthetic(600, seed=3, classes={"api": (2.4, 0.25)}, drift={"api": 1 / 3})
    windowed = forecast.backtest(history)["working_seconds"]
    assert 0.7 <= windowed["coverage"] <= 0.9
    monkeypatch.setattr(forecast, "WINDOW", 10**9)
    everything = forecast.backtest(history)["working_seconds"]
    assert everything["coverage"] < windowed["coverage"] - 0.1
    assert windowed["median_abs_log_error"] < everything["median_abs_log_error"]


def test_a_class_with_few_tasks_falls_back_and_says_which_class_it_used():
    history = synthetic(60, seed=5, classes={"api": (1.5, 0.3), "ui": (1.0, 0.3)})
    rare = [o._replace(tag="rare") for o in history[:5]]
    history = rare + history[5:]
    target = Outcome("P9-001", "P9", "rare", None, 3600, (None, None, None))
    record = forecast.forecast_task(target, history).record
    # Five tasks tagged `rare`, none of phase P9: every approved task is the class.
    assert record["reference_class"] == {"kind": "all", "name": None, "tasks": 60}
    assert record["working_seconds"]["tasks"] == 60
    tagged = forecast.forecast_task(target._replace(tag="api"), history).record
    assert tagged["reference_class"] == {"kind": "tag", "name": "api", "tasks": 27}  # 30 api tasks, 3 now `rare`


def test_a_class_below_the_minimum_gives_no_interval_but_the_reason():
    history = synthetic(8, seed=1, classes={"api": (1.5, 0.3)})
    target = Outcome("P9-001", "P9", "api", None, 3600, (600.0, 1000, 0.01))
    record = forecast.forecast_task(target, history).record
    for quantity in forecast.QUANTITIES:
        assert record[quantity] == {"tasks": 8, "reason": "not enough history (8 tasks)", "needed": 9}
    assert record["past_high"] == []
    ninth = forecast.forecast_task(target, synthetic(9, seed=1, classes={"api": (1.5, 0.3)})).record
    assert {"point", "low", "high"} <= set(ninth["working_seconds"])


def test_tasks_without_an_estimate_are_forecast_from_their_class_actuals():
    history = synthetic(260, seed=9, classes={"api": (1.5, 0.4)}, estimated=0.0)
    report = forecast.backtest(history)
    assert report["working_seconds"]["n"] >= 200
    assert report["working_seconds"]["baselines"]["raw_estimate"]["n"] == 0  # no estimate to score
    for quantity in forecast.QUANTITIES:
        assert 0.7 <= report[quantity]["coverage"] <= 0.9, quantity
    target = Outcome("P99-001", "P99", "api", None, None, (None, None, None))
    record = forecast.forecast_task(target, history).record
    assert record["basis"] == "actuals" and record["estimate_seconds"] is None
    working = record["working_seconds"]
    assert working["low"] < working["point"] < working["high"]
    # The class's actuals: the estimates times 1.5, around 1.5 times their median of 2h 30m.
    assert 3600 < working["point"] < 4 * 3600


def test_an_estimate_scales_the_forecast_of_each_quantity():
    history = synthetic(100, seed=2, classes={"api": (2.0, 0.2)})
    one = forecast.forecast_task(Outcome("P9-001", "P9", "api", None, 3600, (None,) * 3), history).record
    two = forecast.forecast_task(Outcome("P9-001", "P9", "api", None, 7200, (None,) * 3), history).record
    for quantity in forecast.QUANTITIES:
        for end in ("point", "low", "high"):
            assert two[quantity][end] == pytest.approx(2 * one[quantity][end])
    assert 1.6 * 3600 < one["working_seconds"]["point"] < 2.4 * 3600


def test_an_open_task_past_its_interval_says_so():
    history = synthetic(40, seed=4, classes={"api": (1.0, 0.2)})
    record = forecast.forecast_task(Outcome("P9-001", "P9", "api", None, 3600, (4 * 3600.0, 10.0, 0.0)), history).record
    assert record["past_high"] == ["working_seconds"]
    assert record["so_far"]["working_seconds"] == 4 * 3600


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(min_value=-5, max_value=5, allow_nan=False), min_size=0, max_size=80),
    level=st.sampled_from([0.5, 0.8, 0.9, 0.95]),
)
def test_no_interval_below_the_minimum_and_every_interval_holds_its_point(values, level):
    ordered = sorted(values)
    prediction = forecast.predict(ordered, level)
    needed = forecast.minimum_tasks(level)
    if len(values) < needed:
        assert prediction.high is None and prediction.low is None and prediction.point is None
    else:
        assert prediction.low <= prediction.point <= prediction.high
        # The conformal ranks: at least a share `level` of the values lies within.
        inside = sum(prediction.low <= value <= prediction.high for value in ordered)
        assert inside >= level * len(ordered)


def test_the_minimum_is_nine_tasks_at_80_percent():
    assert forecast.minimum_tasks(0.8) == forecast.MIN_TASKS == 9
    assert forecast.minimum_tasks(0.9) == 19
    assert forecast.minimum_tasks(0.95) <= forecast.WINDOW  # every allowed level fits in the window


def test_phase_totals_are_resampled_reproducibly_and_wider_than_nothing():
    history = synthetic(120, seed=6, classes={"api": (1.5, 0.4)})
    open_tasks = [
        forecast.forecast_task(Outcome(f"P9-{n:03d}", "P9", "api", None, 3600, (0.0, 0, 0.0)), history) for n in range(4)
    ]
    draws = forecast.resample_total(open_tasks, "working_seconds", seed="P9")
    assert draws == forecast.resample_total(open_tasks, "working_seconds", seed="P9")
    total = forecast.summary(draws, 0.0, 0.8)
    # Four tasks of about 1.5 h each: about 6 h in all, and the spread of a sum is
    # narrower than the sum of the tasks' spreads (resampling, not adding intervals).
    assert 4.5 * 3600 < total["point"] < 7.5 * 3600
    added = sum(t.record["working_seconds"]["high"] - t.record["working_seconds"]["low"] for t in open_tasks)
    assert total["high"] - total["low"] < added
    assert forecast.chance_within(draws, total["high"]) == pytest.approx(0.9, abs=0.01)
