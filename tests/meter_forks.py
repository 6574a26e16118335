"""`meter` commands that tests run piped (the team store's hundreds, proxy_harness.meter's):
each command is a fork of one process that imported the meter's modules and psycopg once.
The fork runs the command as the `meter` script does (taskmeter.cli.main) with the
command's arguments, environment, working folder, standard input (a file, empty unless
given) and standard output and error (files), and its exit status is the command's.
What is left out is Python's start-up, the imports (psycopg alone imports asyncio) and
the tearing down of every module at the end, which in a fork copies each page of the
preloaded heap: 0.1-0.3 s of CPU a command, against 0.01-0.03 s. The fork ends as the
interpreter does otherwise: threads joined, atexit handlers run, streams flushed. A
module that is not preloaded is imported by the command, as it would be.

tests/test_meter_forks.py holds a forked command's output and status to the script's.
Run as a script, this file is that process: it reads one JSON request a line from
the request pipe and answers on the reply pipe with the child's PID, then its status."""

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# What team tests run: the CLI with its report, task, call and team commands, and psycopg.
PRELOADED = [
    "taskmeter.cli",
    "taskmeter.cli.common",
    "taskmeter.cli.reports",
    "taskmeter.cli.tasks",
    "taskmeter.cli.calls",
    "taskmeter.cli.team",
    "taskmeter.analytics.reports",
    "taskmeter.store.migrations",
    "taskmeter.store.scratch",
    "taskmeter.team.reports",
    "taskmeter.team.sync",
    "taskmeter.team.schema",
    "taskmeter.team.address",
    "psycopg",
]


class ForkingMeter:
    """The preloaded process, started on the first command; `run` is subprocess.run's shape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        atexit.register(self.close)

    def _start(self) -> subprocess.Popen:
        requests_read, self._requests = os.pipe()
        self._replies, replies_write = os.pipe()
        process = subprocess.Popen(
            [sys.executable, __file__, str(requests_read), str(replies_write)],
            stdin=subprocess.DEVNULL,
            pass_fds=(requests_read, replies_write),
        )
        os.close(requests_read)
        os.close(replies_write)
        self._pending = b""
        return process

    def run(
        self, args: list[str], env: dict[str, str], timeout: float, cwd: str | None = None, stdin: str = ""
    ) -> subprocess.CompletedProcess:
        """`meter ARGS` in `env`, reading `stdin`: its output as text, its exit status; subprocess.TimeoutExpired past `timeout`."""
        with self._lock, tempfile.TemporaryDirectory(prefix="meter-fork-") as folder:
            if self._process is not None and self._process.poll() is not None:
                self.close()  # it ended (killed?): a new one
            if self._process is None:
                self._process = self._start()
            given, out, err = Path(folder, "stdin"), Path(folder, "stdout"), Path(folder, "stderr")
            given.write_text(stdin)
            request = {"args": args, "env": env, "cwd": cwd or os.getcwd()}
            request.update(stdin=str(given), stdout=str(out), stderr=str(err))
            os.write(self._requests, json.dumps(request).encode() + b"\n")
            deadline = time.monotonic() + timeout
            pid = int(self._reply(deadline, args, timeout))
            try:
                status = int(self._reply(deadline, args, timeout))
            except subprocess.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)  # the zygote reaps it, and answers its status: read and dropped
                self._reply(time.monotonic() + 30, args, timeout)
                raise
            return subprocess.CompletedProcess(["meter", *args], status, out.read_text(), err.read_text())

    def _reply(self, deadline: float, args: list[str], timeout: float) -> str:
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise subprocess.TimeoutExpired(["meter", *args], timeout)
            chunk = os.read(self._replies, 4096)
            if not chunk:
                raise RuntimeError(f"the forking meter ended: meter {' '.join(args)} has no status")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        """Stop the preloaded process, by its PID (ending its request pipe ends it)."""
        if self._process is not None:
            os.close(self._requests)
            os.close(self._replies)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


METER = ForkingMeter()


def _serve(requests: int, replies: int) -> dict | None:
    """Fork a child for each request, answer its PID then its exit status; in the child,
    return its request. None when the request pipe ends."""
    with os.fdopen(requests, "rb") as lines:
        for line in lines:
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                os.close(replies)
                return request
            os.write(replies, f"{pid}\n".encode())
            _, status = os.waitpid(pid, 0)
            os.write(replies, f"{os.waitstatus_to_exitcode(status)}\n".encode())
    return None


def _become(request: dict) -> None:
    """This child is the command: its folder, environment, streams and arguments."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    for fd, path, flags in (
        (0, request["stdin"], os.O_RDONLY),
        (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = [str(Path(sys.executable).parent / "meter"), *request["args"]]


if __name__ == "__main__":
    import importlib

    del sys.path[0]  # this script's folder (tests/), which is on no meter's path
    for module in PRELOADED:
        importlib.import_module(module)
    request = _serve(int(sys.argv[1]), int(sys.argv[2]))
    if request is None:
        sys.exit(0)
    _become(request)
    from taskmeter.cli import main

    try:
        main()
        status = 0
    except SystemExit as exit:  # as the interpreter reads it: None is 0, a message is printed and 1
        status = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
        if not isinstance(exit.code, int | None):
            print(exit.code, file=sys.stderr)
    except BaseException:  # a traceback, as the interpreter prints one
        sys.excepthook(*sys.exc_info())
        status = 1
    threading._shutdown()  # what the interpreter's exit runs first
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
