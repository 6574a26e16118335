"""Forecasts of a task's working time, tokens and cost from the user's own approved
tasks, with intervals that hold (docs/forecasts.md). Pure functions and standard
library only: no database, no clock (the caller passes the history and `now`).

The model, for each quantity (working_seconds, tokens, cost_usd) alike:
- A task with an estimate is forecast from its reference class's log-ratios
  ln(actual / estimate) (tokens and dollars per estimated second for tokens and
  cost); a task without one from the class's log-actuals ln(actual).
- The point is the estimate times exp(median log-ratio): the median on the log
  scale minimises the expected |ln(actual/forecast)| (the error the backtest
  reports), and one runaway task cannot drag it as it drags a mean.
- The interval is split-conformal: with n past log-ratios sorted, the upper end
  is the k-th with k = ceil((n+1)(1+level)/2), the lower the (n+1-k)-th. It
  covers a new task's result with probability >= level whenever the class's
  tasks are exchangeable; below the n where k <= n (9 at 80%) there is none.
- Drift: only the class's last WINDOW comparable tasks count (weights 1 for
  recent tasks, 0 beyond), so a team that gets faster is forecast by its recent
  work; conformal's guarantee holds for any window fixed in advance.
- The reference class: the task's tag, else its phase's earlier tasks, else
  every approved task, whichever comes first with enough comparable tasks.
"""

import bisect
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

QUANTITIES = ("working_seconds", "tokens", "cost_usd")
# The fields of a task record (analytics/records.py TaskFields) each quantity is read from.
RECORD_FIELDS = {"working_seconds": "actual_duration", "tokens": "token_count_used", "cost_usd": "cost_usd"}
# A result of 0 (a task with no AI call) is kept, floored here before its logarithm.
_FLOORS = {"working_seconds": 1.0, "tokens": 1.0, "cost_usd": 1e-6}
MIN_TASKS = 9  # the fewest comparable tasks an 80% interval needs: ceil(10 * 0.9) = 9
DEFAULT_LEVEL = 0.8
LEVELS = (0.5, 0.95)  # the levels allowed: above 0.95 the window holds too few tasks for the ranks
WINDOW = 60  # the class's most recent comparable tasks a forecast is made from
SAMPLES = 2000  # draws of a phase's total


class Outcome(NamedTuple):
    """A task as the forecast reads it: approved (`approved_at` set), or the one to forecast."""

    task_id: str
    phase_id: str | None
    tag: str | None
    approved_at: str | None
    estimate: float | None  # ESTIMATED_DURATION: the first estimate, as the reports use
    results: tuple[float | None, ...]  # per QUANTITIES: the final result, or so far when open


def outcome_of(record: Mapping) -> Outcome:
    """An Outcome from a task's record (metrics.task_fields). A task without an AI call
    used no tokens and no money (its record says none were stated: null)."""
    no_calls = not record["ai_interactions"] and not record["failed_calls"]
    results = [record[RECORD_FIELDS[quantity]] for quantity in QUANTITIES]
    spent = [0 if value is None and no_calls else value for value in results[1:]]
    return Outcome(
        record["task_id"],
        record["phase_id"],
        record.get("tag"),
        record["final_approval_timestamp"],
        record["estimated_duration"] or None,
        (results[0], *spent),
    )


def approved_in_order(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """The approved outcomes, in the order they were approved."""
    return sorted((o for o in outcomes if o.approved_at), key=lambda o: (o.approved_at, o.task_id))


def minimum_tasks(level: float) -> int:
    """The fewest comparable tasks that give an interval at `level` (MIN_TASKS at 80%)."""
    n = 1
    while _upper_rank(n, level) > n:
        n += 1
    return n


def _upper_rank(n: int, level: float) -> int:
    # The tiny tolerance keeps (n+1)(1+level)/2 = 9.000000000000002 from reading as 10.
    return math.ceil((n + 1) * (1 + level) / 2 - 1e-9)


def check_level(level: float) -> None:
    from taskmeter.errors import MeterError

    if not LEVELS[0] <= level <= LEVELS[1]:
        raise MeterError(f"--level {level:g} is outside {LEVELS[0]:g}-{LEVELS[1]:g}")


# ---------------------------------------------------------------- one quantity


def log_value(outcome: Outcome, index: int, by_estimate: bool) -> float | None:
    """The value a class keeps of `outcome` for quantity QUANTITIES[index]: its
    log-ratio to the estimate, or its log-result; None when it has none."""
    result = outcome.results[index]
    if result is None or (by_estimate and not outcome.estimate):
        return None
    logged = math.log(max(result, _FLOORS[QUANTITIES[index]]))
    return logged - math.log(outcome.estimate) if by_estimate and outcome.estimate else logged


class Prediction(NamedTuple):
    """Log-scale forecast from a class's window: point, low and high (None below the minimum)."""

    tasks: int
    point: float | None
    low: float | None
    high: float | None


def predict(ordered: Sequence[float], level: float) -> Prediction:
    """The median and the conformal ranks of the sorted log-values `ordered`."""
    n = len(ordered)
    upper = _upper_rank(n, level)
    if n == 0 or upper > n:
        return Prediction(n, None, None, None)
    # statistics and random only where used: they load fractions and decimal, milliseconds of each report
    # whose forecast has too few approved tasks to draw on (the task and phase reports show one).
    import statistics

    return Prediction(n, statistics.median(ordered), ordered[n - upper], ordered[upper - 1])


class Window:
    """A class's last WINDOW comparable tasks (comparable in working time), in the order
    they came, with each quantity's log-values among them sorted; `count`: every
    comparable task ever added."""

    __slots__ = ("arrived", "ordered", "count")

    def __init__(self) -> None:
        self.arrived: deque[tuple[float | None, ...]] = deque()
        self.ordered: list[list[float]] = [[] for _ in QUANTITIES]
        self.count = 0

    def add(self, values: tuple[float | None, ...]) -> None:
        self.count += 1
        self.arrived.append(values)
        for ordered, value in zip(self.ordered, values, strict=True):
            if value is not None:
                bisect.insort(ordered, value)
        if len(self.arrived) > WINDOW:
            for ordered, value in zip(self.ordered, self.arrived.popleft(), strict=True):
                if value is not None:
                    del ordered[bisect.bisect_left(ordered, value)]


def log_values(outcome: Outcome, by_estimate: bool) -> tuple[float | None, ...] | None:
    """Every quantity's log_value of `outcome`; None when it is not comparable (no working time, or no estimate)."""
    values = tuple(log_value(outcome, index, by_estimate) for index in range(len(QUANTITIES)))
    return values if values[0] is not None else None


# ---------------------------------------------------------------- reference classes


def class_keys(outcome: Outcome) -> list[tuple[str, str | None]]:
    """The reference classes of a task, most specific first: its tag, its phase, every task."""
    keys: list[tuple[str, str | None]] = []
    if outcome.tag:
        keys.append(("tag", outcome.tag))
    if outcome.phase_id:
        keys.append(("phase", outcome.phase_id))
    keys.append(("all", None))
    return keys


def choose_class(target: Outcome, comparable: Callable[[tuple[str, str | None]], int], level: float) -> tuple[str, str | None]:
    """The first of the target's classes with enough tasks comparable in working time
    (`comparable(key)` counts them); every task when none has."""
    needed = minimum_tasks(level)
    return next((key for key in class_keys(target) if comparable(key) >= needed), ("all", None))


def _member(outcome: Outcome, key: tuple[str, str | None]) -> bool:
    kind, name = key
    return kind == "all" or (outcome.tag if kind == "tag" else outcome.phase_id) == name


# ---------------------------------------------------------------- a task's forecast


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else scale * math.exp(value)


def not_enough(tasks: int) -> str:
    return f"not enough history ({tasks} task{'' if tasks == 1 else 's'})"


def _quantity(prediction: Prediction, scale: float, needed: int) -> dict:
    if prediction.high is None:
        return {"tasks": prediction.tasks, "reason": not_enough(prediction.tasks), "needed": needed}
    return {
        "point": _scaled(prediction.point, scale),
        "low": _scaled(prediction.low, scale),
        "high": _scaled(prediction.high, scale),
        "tasks": prediction.tasks,
    }


class TaskForecast(NamedTuple):
    """A task's forecast: the JSON `meter forecast TASK` prints, and, per quantity,
    its class's sorted window (for resampling a phase's total)."""

    record: dict
    windows: dict[str, list[float]]
    scale: float


class ReferenceClass(NamedTuple):
    key: tuple[str, str | None]
    tasks: int  # its tasks comparable with the target
    window: list[Outcome]  # the last WINDOW of them: the forecast is made from these alone


def reference_class(target: Outcome, history: Sequence[Outcome], level: float = DEFAULT_LEVEL) -> ReferenceClass:
    """The class `target` is forecast from, and the tasks of its window. Which tasks
    are comparable depends on the estimate and the working time being there, not on
    their values: a caller may pass stand-ins for the results of tasks outside the window."""
    by_estimate = bool(target.estimate)
    members = {key: [o for o in history if _member(o, key) and o.task_id != target.task_id] for key in class_keys(target)}
    comparable = {key: [o for o in found if log_value(o, 0, by_estimate) is not None] for key, found in members.items()}
    key = choose_class(target, lambda key: len(comparable[key]), level)
    return ReferenceClass(key, len(comparable[key]), comparable[key][-WINDOW:])


def forecast_task(target: Outcome, history: Sequence[Outcome], level: float = DEFAULT_LEVEL) -> TaskForecast:
    """Forecast `target` from `history` (approved outcomes in approval order, not
    including the target): per quantity point, low and high at `level`, or the reason there is none."""
    by_estimate = bool(target.estimate)
    chosen = reference_class(target, history, level)
    key = chosen.key
    scale = target.estimate if by_estimate and target.estimate else 1.0
    needed = minimum_tasks(level)
    record: dict = {
        "task_id": target.task_id,
        "level": level,
        "basis": "estimate" if by_estimate else "actuals",
        "estimate_seconds": target.estimate,
        "reference_class": {"kind": key[0], "name": key[1], "tasks": chosen.tasks},
        "tasks_used": len(chosen.window),
    }
    window = Window()
    for outcome in chosen.window:
        values = log_values(outcome, by_estimate)
        assert values is not None  # comparable
        window.add(values)
    windows = dict(zip(QUANTITIES, window.ordered, strict=True))
    for quantity, ordered in windows.items():
        record[quantity] = _quantity(predict(ordered, level), scale, needed)
    if not target.approved_at:
        record["so_far"] = dict(zip(QUANTITIES, target.results, strict=True))
        record["past_high"] = [
            quantity
            for quantity, so_far in record["so_far"].items()
            if so_far is not None and record[quantity].get("high") is not None and so_far > record[quantity]["high"]
        ]
    return TaskForecast(record, windows, scale)


# ---------------------------------------------------------------- a phase's total


def _quantile(ordered: Sequence[float], share: float) -> float:
    """The `share` quantile of sorted draws (nearest rank)."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def resample_total(forecasts: Sequence[TaskForecast], quantity: str, seed: str, samples: int = SAMPLES) -> list[float] | None:
    """Draws of what the open tasks of `forecasts` will still use of `quantity`, summed:
    each task's final result drawn from its class's window (scaled by its estimate),
    among the results at least what it has used so far (what it has used when none is),
    minus that. Seeded: the same history gives the same draws. None when a task has
    no interval."""
    import random

    rng = random.Random(seed)
    totals = [0.0] * samples
    for forecast in forecasts:
        if forecast.record[quantity].get("high") is None:
            return None
        so_far = forecast.record.get("so_far", {}).get(quantity) or 0.0
        results = [forecast.scale * math.exp(v) for v in forecast.windows[quantity]]
        possible = [result - so_far for result in results if result >= so_far] or [0.0]
        for i, left in enumerate(rng.choices(possible, k=samples)):
            totals[i] += left
    return sorted(totals)


def summary(draws: Sequence[float], base: float, level: float) -> dict:
    """Point (median), low and high of `base` plus the sorted `draws`."""
    return {
        "point": base + _quantile(draws, 0.5),
        "low": base + _quantile(draws, (1 - level) / 2),
        "high": base + _quantile(draws, (1 + level) / 2),
    }


def chance_within(draws: Sequence[float], room: float) -> float:
    """The share of the sorted `draws` at most `room`."""
    return bisect.bisect_right(draws, room) / len(draws)


# ---------------------------------------------------------------- backtest


class _Scores:
    """Running figures of one forecaster for one quantity."""

    __slots__ = ("covered", "widths", "errors", "winkler", "alpha")

    def __init__(self, level: float) -> None:
        self.covered, self.winkler = 0, 0.0
        self.widths: list[float] = []
        self.errors: list[float] = []
        self.alpha = 1 - level

    def add(self, actual: float, point: float, low: float, high: float, floor: float) -> None:
        self.covered += low <= actual <= high
        self.widths.append(high - low)
        self.errors.append(abs(math.log(max(actual, floor) / max(point, floor))))
        # The Winkler score: the width, plus 2/alpha times how far the result fell outside.
        self.winkler += (high - low) + 2 / self.alpha * (max(0.0, low - actual) + max(0.0, actual - high))

    def result(self) -> dict:
        n = len(self.widths)
        if not n:
            return {"n": 0, "coverage": None, "median_width": None, "median_abs_log_error": None, "winkler": None}
        import statistics

        return {
            "n": n,
            "coverage": self.covered / n,
            "median_width": statistics.median(self.widths),
            "median_abs_log_error": statistics.median(self.errors),
            "winkler": self.winkler / n,
        }


def _plain_interval(ordered: Sequence[float], level: float) -> tuple[float, float, float]:
    """Median and the empirical quantiles at (1 -/+ level)/2, interpolated: the phase-median baseline."""
    if len(ordered) == 1:
        return ordered[0], ordered[0], ordered[0]

    def at(share: float) -> float:
        position = share * (len(ordered) - 1)
        below = math.floor(position)
        above = min(below + 1, len(ordered) - 1)
        return ordered[below] + (ordered[above] - ordered[below]) * (position - below)

    return at(0.5), at((1 - level) / 2), at((1 + level) / 2)


RAW_ONLY_TIME = "an estimate is of working time only"


def backtest(outcomes: Iterable[Outcome], level: float = DEFAULT_LEVEL) -> dict:
    """Rolling origin over the approved `outcomes` in approval order: each task is
    forecast from the tasks approved before it, as `meter forecast` would have then,
    and scored against its result, per quantity; beside it two baselines, the raw
    estimate (working time only: an estimate is of time) and the median of the
    phase's earlier tasks with their empirical interval. A task the forecast gives
    no interval is not scored (nor are the baselines on it)."""
    ordered_outcomes = approved_in_order(outcomes)
    # (basis, class key) -> Window
    windows: dict[tuple[bool, tuple[str, str | None]], Window] = {}
    phase_results: dict[tuple[str | None, int], list[float]] = {}
    model = {q: _Scores(level) for q in QUANTITIES}
    raw = _Scores(level)
    phase_median = {q: _Scores(level) for q in QUANTITIES}
    for outcome in ordered_outcomes:
        by_estimate = bool(outcome.estimate)
        scale = outcome.estimate if by_estimate and outcome.estimate else 1.0

        def comparable(key, by_estimate=by_estimate) -> int:
            window = windows.get((by_estimate, key))
            return window.count if window else 0

        key = choose_class(outcome, comparable, level)
        chosen = windows.get((by_estimate, key))
        for index, quantity in enumerate(QUANTITIES):
            actual = outcome.results[index]
            prediction = predict(chosen.ordered[index] if chosen else [], level)
            if actual is None or prediction.high is None:
                continue
            floor = _FLOORS[quantity]
            point, low, high = (scale * math.exp(v) for v in (prediction.point, prediction.low, prediction.high))  # type: ignore[arg-type]
            model[quantity].add(actual, point, low, high, floor)
            if index == 0 and outcome.estimate:
                raw.add(actual, outcome.estimate, outcome.estimate, outcome.estimate, floor)  # no interval: a point
            earlier = phase_results.get((outcome.phase_id, index))
            if earlier:
                point, low, high = _plain_interval(earlier, level)
                phase_median[quantity].add(actual, point, low, high, floor)
        keys = class_keys(outcome)
        for basis in (True, False):
            values = log_values(outcome, basis)
            if values is None:
                continue
            for class_key in keys:
                window = windows.get((basis, class_key))
                if window is None:
                    window = windows[basis, class_key] = Window()
                window.add(values)
        for index, result in enumerate(outcome.results):
            if result is not None:
                bisect.insort(phase_results.setdefault((outcome.phase_id, index), []), result)
    return {
        "level": level,
        "tasks": len(ordered_outcomes),
        **{
            quantity: {
                **model[quantity].result(),
                "baselines": {
                    "raw_estimate": raw.result() if quantity == "working_seconds" else {"reason": RAW_ONLY_TIME},
                    "phase_median": phase_median[quantity].result(),
                },
            }
            for quantity in QUANTITIES
        },
    }
