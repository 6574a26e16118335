"""The syncer's own process, started beside `meter proxy`.

Why a process, not a thread of the proxy or of its recorder: the proxy's loop
must never wait on a network, and the recorder's interpreter is busy parsing
calls; a process of its own has its own interpreter lock, a hung or refused
server stalls nothing, and the same `meter team sync` runs without a proxy
(git hooks and marks change rows too). One syncer per database: the lock file
beside it keeps a second one (another proxy on the same database) out.
"""

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

STOP_SECONDS = 5


def lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".team.lock")


def take_lock(db_path: Path) -> int | None:
    """The syncer's lock on this database (held until the process ends), or None when another syncer has it."""
    fd = os.open(lock_path(db_path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def syncer_pid(db_path: Path) -> int | None:
    """The pid of the syncer running for this database, if one is."""
    try:
        fd = os.open(lock_path(db_path), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return int(os.read(fd, 32) or b"0") or None
        except ValueError:
            return None
    else:
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def syncing(url: str | None, db_path: Path, config_path: str | None) -> Iterator[None]:
    """While the block runs, a `meter team sync` process when a team store is configured."""
    if not url:
        yield
        return
    command = [sys.executable, "-m", "taskmeter", "team", "sync", "--db", str(db_path), "--parent", str(os.getpid())]
    if config_path:
        command += ["--config", str(config_path)]
    # Its own session: the terminal's Ctrl-C goes to the proxy, which stops it after its calls.
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
