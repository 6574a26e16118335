"""`meter` processes that tests start (the team store's hundreds of commands, proxy_harness's
commands, proxies and dashboards): each is a fork of one process that imported the meter's modules,
mitmproxy and psycopg once. The fork runs as the `meter` script does (taskmeter.cli.main)
with its own arguments, environment, working folder and standard streams, and its exit
status is the command's. What is left out is Python's start-up, the imports (a proxy's
are 0.6 s of CPU: mitmproxy, pydantic, click) and the tearing down of every module at the
end, which in a fork copies each page of the preloaded heap. The fork ends as the
interpreter does otherwise: threads joined, atexit handlers run, streams flushed. A module
that is not preloaded is imported by the fork, as it would be.

An environment that acts while an interpreter starts (PYTHON..., LD_...: an import-time
profile, a sabotaged recorder) runs the real script instead, as a fork would not honour it.
The forks' command line is this file's, whose name keeps "meter" in it, as `meter status`
and `meter stop` look for in a proxy's (store/proxies.py).

tests/test_meter_forks.py holds a forked command's output and status to the script's.
Run as a script, this file is that process: on its socket it takes one request a packet
(JSON, with the child's standard streams as file descriptors) and answers with the child's
PID, then, when the child ends, its exit status."""

import atexit
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
# What the tests run: the CLI with its report, task, call, team and proxy commands, the proxy
# (mitmproxy's master and addons), the dashboard, and psycopg.
PRELOADED = [
    "taskmeter.cli",
    "taskmeter.cli.common",
    "taskmeter.cli.reports",
    "taskmeter.cli.tasks",
    "taskmeter.cli.calls",
    "taskmeter.cli.team",
    "taskmeter.cli.proxy",
    "taskmeter.analytics.reports",
    "taskmeter.config.settings",
    "taskmeter.dashboard.server",
    "taskmeter.proxy.runner",
    "taskmeter.proxy.addons",
    "taskmeter.statusline",
    "taskmeter.store.migrations",
    "taskmeter.store.scratch",
    "taskmeter.team.process",
    "taskmeter.team.reports",
    "taskmeter.team.sync",
    "taskmeter.team.schema",
    "taskmeter.team.address",
    "mitmproxy.addons",
    "mitmproxy.master",
    "mitmproxy.proxy.mode_servers",
    "mitmproxy.proxy.server",
    "psycopg",
]
# A request and its answers are one packet each; a request holds the child's environment.
_PACKET = 1 << 20
# Where the statuses would be: the preloaded process ended, and no fork will be answered for.
_ENDED = -1


def starts_alike(env: dict[str, str]) -> bool:
    """Whether a fork runs as the script would in `env`: no variable read while an
    interpreter starts (PYTHON..., LD_...) differs from this process's."""
    names = {name for name in {*env, *os.environ} if name.startswith(("PYTHON", "LD_"))}
    return all(env.get(name) == os.environ.get(name) for name in names)


class ForkedProcess:
    """A forked `meter` as subprocess.Popen shows a process: pid, poll, wait, signals, pipes."""

    def __init__(self, forks: "ForkingMeter", args: list[str], pid: int, stdout=None, stderr=None) -> None:
        self._forks = forks
        self.args = args
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._forks.status(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._forks.status(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # as Popen does: never a PID that may be another process's by now
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkingMeter:
    """The preloaded process, started on the first request; `run` is subprocess.run's shape,
    `popen` subprocess.Popen's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one request on the socket at a time
        self._ended = threading.Condition()
        self._statuses: dict[int, int] = {}  # PID: exit status, of the forks that ended
        self._started: list[int] = []  # the PID the last request made
        self._process: subprocess.Popen | None = None
        atexit.register(self.close)

    def _start(self) -> None:
        self._channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._process = subprocess.Popen(
            [sys.executable, __file__, str(theirs.fileno())], stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),)
        )
        theirs.close()
        with self._ended:
            self._statuses.pop(_ENDED, None)  # the last preloaded process's
        self._reader = threading.Thread(target=self._read_answers, daemon=True)
        self._reader.start()

    def _read_answers(self) -> None:
        while answer := self._channel.recv(_PACKET):
            message = json.loads(answer)
            with self._ended:
                if "ended" in message:
                    self._statuses[message["ended"]] = message["status"]
                else:
                    self._started.append(message["started"])
                self._ended.notify_all()
        with self._ended:
            self._statuses[_ENDED] = _ENDED
            self._ended.notify_all()

    def _fork(self, args: list[str], env: dict[str, str], cwd: str | None, streams: list[int]) -> int:
        """The PID of a fork running `meter ARGS` on `streams` (its standard input, output and error)."""
        with self._lock:
            if self._process is not None and self._process.poll() is not None:
                self.close()  # it ended (killed?): a new one
            if self._process is None:
                self._start()
            request = {"args": args, "env": env, "cwd": cwd or os.getcwd()}
            with self._ended:
                self._started.clear()
            socket.send_fds(self._channel, [json.dumps(request).encode()], streams)
            with self._ended:
                if not self._ended.wait_for(lambda: self._started or _ENDED in self._statuses, 60) or not self._started:
                    raise RuntimeError(f"the forking meter did not start meter {' '.join(args)}")
                return self._started[0]

    def status(self, pid: int, timeout: float | None) -> int | None:
        """The fork's exit status once it ended, waiting up to `timeout` seconds; else None."""
        with self._ended:
            self._ended.wait_for(lambda: pid in self._statuses or _ENDED in self._statuses, timeout)
            if pid not in self._statuses and _ENDED in self._statuses:
                raise RuntimeError(f"the forking meter ended: fork {pid} has no status")
            return self._statuses.pop(pid, None)

    def popen(
        self, args: list[str], env: dict[str, str] | None = None, stdout=None, stderr=None
    ) -> "ForkedProcess | subprocess.Popen":
        """`meter ARGS` in `env` (else this process's), running: its output and errors piped
        (as text) where given subprocess.PIPE, to a file where given one, else to this process's.
        The real script where the environment acts at start-up (starts_alike)."""
        env = dict(os.environ) if env is None else env
        if not starts_alike(env):
            command = [str(VENV_BIN / "meter"), *args]
            return subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, env=env)
        ours, theirs = [], [os.open(os.devnull, os.O_RDONLY)]
        for wanted, fd in ((stdout, 1), (stderr, 2)):
            if wanted == subprocess.PIPE:
                read, write = os.pipe()
                ours.append(open(read, encoding="utf-8", errors="replace"))
                theirs.append(write)
            else:  # this process's stream, or a file
                ours.append(None)
                theirs.append(os.dup(fd if wanted is None else wanted.fileno()))
        try:
            pid = self._fork(args, env, None, theirs)
        finally:
            for fd in theirs:
                os.close(fd)
        return ForkedProcess(self, ["meter", *args], pid, *ours)

    def run(
        self, args: list[str], timeout: float, env: dict[str, str] | None = None, cwd: str | None = None, stdin: str = ""
    ) -> subprocess.CompletedProcess:
        """`meter ARGS` in `env` (else this process's), reading `stdin`: its output as text, its exit
        status; subprocess.TimeoutExpired past `timeout`."""
        env = dict(os.environ) if env is None else env
        with tempfile.TemporaryDirectory(prefix="meter-fork-") as folder:
            given, out, err = Path(folder, "stdin"), Path(folder, "stdout"), Path(folder, "stderr")
            given.write_text(stdin)
            streams = [os.open(given, os.O_RDONLY), *(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600) for path in (out, err))]
            try:
                pid = self._fork(args, env, cwd, streams)
            finally:
                for fd in streams:
                    os.close(fd)
            status = self.status(pid, timeout)
            if status is None:
                os.kill(pid, signal.SIGKILL)  # the preloaded process reaps it, and answers its status: dropped
                self.status(pid, 30)
                raise subprocess.TimeoutExpired(["meter", *args], timeout)
            return subprocess.CompletedProcess(["meter", *args], status, out.read_text(), err.read_text())

    def close(self) -> None:
        """Stop the preloaded process, by its PID (closing its socket ends it)."""
        if self._process is not None:
            self._channel.shutdown(socket.SHUT_RDWR)  # its end of the socket, and our reader's, read the end
            self._reader.join(30)
            self._channel.close()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


METER = ForkingMeter()


def _serve(channel: socket.socket) -> tuple[dict, list[int]] | None:
    """Fork a child for each request and answer its PID, then its exit status when it ends;
    in the child, return its request and streams. None when the socket closes."""
    woken, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that an ended child writes to `wake`
    while True:
        ready = select.select([channel, woken], [], [])[0]
        if woken in ready:
            os.read(woken, 4096)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                channel.send(json.dumps({"ended": pid, "status": os.waitstatus_to_exitcode(status)}).encode())
        if channel in ready:
            packet, streams, _, _ = socket.recv_fds(channel, _PACKET, 3)
            if not packet:
                return None
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd in (woken, wake):
                    os.close(fd)
                channel.close()
                return json.loads(packet), streams
            for fd in streams:
                os.close(fd)
            channel.send(json.dumps({"started": pid}).encode())


def _become(request: dict, streams: list[int]) -> None:
    """This child is the command: its folder, environment, streams and arguments."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    for fd, stream in enumerate(streams):
        os.dup2(stream, fd)
        os.close(stream)
    sys.argv = [str(VENV_BIN / "meter"), *request["args"]]


if __name__ == "__main__":
    import importlib

    del sys.path[0]  # this script's folder (tests/), which is on no meter's path
    for module in PRELOADED:
        importlib.import_module(module)
    gc.freeze()  # what the children share: their collections never walk it, nor copy its pages
    served = _serve(socket.socket(fileno=int(sys.argv[1])))
    if served is None:
        sys.exit(0)
    _become(*served)
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
