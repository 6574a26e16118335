"""A Ctrl-C held while asyncio makes its event loop.

`asyncio.run()` makes its loop, then installs its own SIGINT handler and runs the coroutine.
A Ctrl-C in between leaves a half-made loop, or a coroutine that never ran, to complain at
exit with a traceback or a RuntimeWarning. `held_until_running()` blocks SIGINT around the
call, and the coroutine's first step, `release()`, unblocks it: a Ctrl-C held meanwhile lands
there, and asyncio (or the server's own handler) takes it as it takes any later one."""

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def held_until_running() -> Iterator[None]:
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def release() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
