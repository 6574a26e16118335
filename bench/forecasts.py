"""The forecasts' speed (analytics/forecast.py): one task's forecast and the
rolling-origin backtest over a synthetic history of approved tasks, in memory, as
CPU time of the process (the work, not the reading of the records)."""

import math
import random
import statistics
import time

from taskmeter.analytics import forecast

FORECAST_TARGET_MS = 100
BACKTEST_TARGET_MS = 2000


def history(count: int, seed: int = 1) -> list[forecast.Outcome]:
    """`count` approved tasks over 40 phases and 4 tags, each with a lognormal overrun of its estimate."""
    rng = random.Random(seed)
    tasks = []
    for i in range(count):
        estimate = rng.choice((1800, 3600, 7200, 14400))
        worked = estimate * math.exp(rng.gauss(0.3, 0.5))
        tokens = worked * 60 * math.exp(rng.gauss(0, 0.3))
        tag = rng.choice(("api", "ui", "infra", None))
        stamp = f"2026-01-01T00:00:00.{i:06d}Z"
        tasks.append(forecast.Outcome(f"P{i % 40}-{i:05d}", f"P{i % 40}", tag, stamp, estimate, (worked, tokens, tokens * 3e-6)))
    return tasks


def _cpu_ms(action, runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.process_time()
        action()
        timings.append((time.process_time() - started) * 1000)
    return statistics.median(timings)


def measure(tasks: int, runs: int) -> dict:
    past = history(tasks)
    target = forecast.Outcome("P7-99999", "P7", "api", None, 3600, (1200.0, 50_000, 0.15))
    return {
        "tasks": tasks,
        "runs": runs,
        "forecast_ms": _cpu_ms(lambda: forecast.forecast_task(target, past), runs),
        "backtest_ms": _cpu_ms(lambda: forecast.backtest(past), max(1, runs // 3)),
    }


def targets(measured: dict, row) -> list[dict]:
    return [
        row(
            f"meter forecast TASK over {measured['tasks']:,} approved tasks: work (CPU), median of {measured['runs']}",
            f"<= {FORECAST_TARGET_MS} ms",
            measured["forecast_ms"],
            measured["forecast_ms"] <= FORECAST_TARGET_MS,
        ),
        row(
            f"meter forecast --backtest over {measured['tasks']:,} approved tasks: work (CPU), median",
            f"<= {BACKTEST_TARGET_MS} ms",
            measured["backtest_ms"],
            measured["backtest_ms"] <= BACKTEST_TARGET_MS,
        ),
    ]
