"""The runaway-agent rules, as pure functions (the recorder applies them:
recorder/planner.py). docs/budgets.md defines each."""

import hashlib
import json
import statistics

from taskmeter.analytics.records import TaskFields

# Burn rate: judged only over enough history, and after enough work to mean something.
MIN_APPROVED_TASKS = 3
MIN_WORKED_SECONDS = 600


def loop_signatures(turns, model: str | None, tool_calls: list[list]) -> list[str]:
    """What makes two requests "near-identical": the same model and the same last
    two messages of the request's `turns` (each protocol says where they are: its
    `loop_turns`); or the same tool calls with the same arguments in the answer.
    Each as a short hash; none for a request with no messages."""
    tail: list | str | None = None
    if isinstance(turns, list) and turns:
        tail = turns[-2:]
    elif isinstance(turns, str):
        tail = turns
    found = []
    if tail is not None:
        found.append("request:" + _digest([model, tail]))
    if tool_calls:
        found.append("tools:" + _digest([model, [[name, "".join(parts)] for name, parts in tool_calls]]))
    return found


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tokens_per_working_hour(record: TaskFields) -> float | None:
    """A task's burn rate: TOKEN_COUNT_USED per hour of working time; None before
    MIN_WORKED_SECONDS of work."""
    worked, tokens = record["actual_duration"], record["token_count_used"]
    if not worked or worked < MIN_WORKED_SECONDS or tokens is None:
        return None
    return tokens / (worked / 3600)


def burn_rate_threshold(rates: list[float], k: float) -> float | None:
    """median + k * MAD of the approved tasks' burn rates; None with fewer than
    MIN_APPROVED_TASKS. MAD is the median absolute deviation, robust to the one
    task that once ran away."""
    if len(rates) < MIN_APPROVED_TASKS:
        return None
    median = statistics.median(rates)
    return median + k * statistics.median(abs(rate - median) for rate in rates)
