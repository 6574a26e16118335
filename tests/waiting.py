"""Waiting on observable state (a row, a file, a process), never a fixed sleep."""

import time


def until(condition, timeout: float = 30, what: str = "the condition"):
    """Poll `condition()` until it gives something true, and return that; fail past `timeout`."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return found
