"""`meter start` and `meter stop`: the proxy in the background, with a log file and
a pidfile in the user's state folder, one pair per database. And `meter run`'s
share of it: a run joins the running proxy, or starts one that the last run to
leave stops, counted by reference so that two terminals never stop each other's."""

import contextlib
import fcntl
import os
import signal
import sys
import time
from pathlib import Path

from taskmeter.errors import MeterError
from taskmeter.private import private_dir, private_file
from taskmeter.store import connection, proxies
from taskmeter.userdirs import user_path

TYPE_CHECKING = False
if TYPE_CHECKING:  # for the type checker alone: read commands import this module without it
    import subprocess

START_TIMEOUT_SECONDS = 30
# What `meter status`, `meter doctor` and `meter env` say when no proxy runs.
START_ADVICE = "start one with `meter start`, or keep one running with `meter service install`"


def _state_name(db_path: Path) -> str:
    """Files of the proxy recording to `db_path`: one name per database."""
    import hashlib  # here: `meter doctor` reads START_ADVICE alone

    return "proxy-" + hashlib.sha256(str(db_path.resolve()).encode()).hexdigest()[:12]


def log_path(db_path: Path) -> Path:
    return user_path("state") / f"{_state_name(db_path)}.log"


def pid_path(db_path: Path) -> Path:
    return user_path("state") / f"{_state_name(db_path)}.pid"


def running_proxy(db_path: Path) -> dict | None:
    db = connection.connect(db_path)
    try:
        found = proxies.running(db)
    finally:
        db.close()
    return found[0] if found else None


def start(db_path: Path, proxy_args: list[str]) -> dict:
    """Start `meter proxy` in the background; returns its proxies row once it
    listens. A proxy already recording to the database is an error."""
    already = running_proxy(db_path)
    if already:
        raise MeterError(f"a meter proxy already records to {db_path} (pid {already['pid']} on {already['listen']})")
    import subprocess  # only to start one: `meter status` and `meter doctor` read the pidfile's name without it

    log, pidfile = log_path(db_path), pid_path(db_path)
    private_dir(log.parent)
    with open(private_file(log), "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "taskmeter", "proxy", "--db", str(db_path), *proxy_args],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not stopped by the terminal's Ctrl-C or hang-up
        )
    try:
        private_file(pidfile).write_text(f"{process.pid}\n")
        # One connection for the whole wait: opening one for each look cost 3 ms of CPU.
        with contextlib.closing(connection.connect(db_path)) as db:
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    last = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                    raise MeterError(f"the proxy did not start: {last[0]} (log: {log})")
                started = proxies.running(db)[:1]
                if started and started[0]["pid"] == process.pid:
                    return started[0]
                time.sleep(0.02)
        raise MeterError(f"the proxy did not start within {START_TIMEOUT_SECONDS} s (log: {log})")
    except BaseException:  # Ctrl-C too: no proxy left starting behind the user's back, no pidfile for it
        pidfile.unlink(missing_ok=True)
        _cancel(process)
        raise


def _cancel(process: "subprocess.Popen") -> None:
    """Stop a proxy that has not finished starting as Ctrl-C would stop it in the
    foreground (whatever it has begun, it ends cleanly), and wait for it."""
    import subprocess  # `start` imported it already

    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(START_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop(db_path: Path, timeout: float) -> int | None:
    """Stop the proxy recording to `db_path` as Ctrl-C would (calls in flight may
    finish); returns its pid, or None when none runs."""
    proxy = running_proxy(db_path)
    pidfile = pid_path(db_path)
    if proxy is None:
        pidfile.unlink(missing_ok=True)
        return None
    pid = proxy["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while proxies.meter_process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if proxies.meter_process_alive(pid):
        os.kill(pid, signal.SIGTERM)  # the second signal cuts the calls still in flight
        while proxies.meter_process_alive(pid):
            time.sleep(0.1)
    pidfile.unlink(missing_ok=True)
    return pid


def _users(db_path: Path) -> Path:
    """One file per `meter run` using the proxy, named by its pid."""
    return user_path("state") / f"{_state_name(db_path)}.runs"


def _started_by_runs(db_path: Path) -> Path:
    return user_path("state") / f"{_state_name(db_path)}.started-by-run"


@contextlib.contextmanager
def _locked(db_path: Path):
    lock = user_path("state") / f"{_state_name(db_path)}.lock"
    private_dir(lock.parent)
    with open(private_file(lock), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def join(db_path: Path, proxy_args: list[str]) -> dict:
    """The proxy for `meter run`: the running one, or one started for the runs."""
    with _locked(db_path):
        users = _users(db_path)
        private_dir(users)
        (users / str(os.getpid())).touch(mode=0o600)
        proxy = running_proxy(db_path)
        if proxy is None:
            try:
                proxy = start(db_path, proxy_args)
            except BaseException:  # Ctrl-C too
                (users / str(os.getpid())).unlink(missing_ok=True)
                raise
            _started_by_runs(db_path).touch(mode=0o600)
        return proxy


def leave(db_path: Path, timeout: float) -> None:
    """This run is done; the last run to leave a proxy that runs started stops it."""
    with _locked(db_path):
        users = _users(db_path)
        (users / str(os.getpid())).unlink(missing_ok=True)
        remaining = [entry for entry in users.iterdir() if proxies.meter_process_alive(int(entry.name))] if users.exists() else []
        if remaining or not _started_by_runs(db_path).exists():
            return
        _started_by_runs(db_path).unlink()
        stop(db_path, timeout)
