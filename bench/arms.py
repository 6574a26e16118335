"""The arms of every measurement, as separate processes on loopback:
D = direct to the mock, M = bare mitmproxy (same version, no addon, streaming on),
P = `meter proxy` writing to a real database."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_listening(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited early: {process.args}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}: {process.args}")


@dataclass
class Arm:
    name: str
    port: int
    path: str  # request path for the chat endpoint
    process: subprocess.Popen | None = None
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request (the dashboard's access cookie)
    sent: int = 0  # requests answered, to check that the meter recorded every one

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def pids(self) -> list[int]:
        """The arm's process and its descendants (the meter's recorder): all of its cost."""
        if not self.process:
            return []
        found, pending = [], [self.process.pid]
        while pending:
            pid = pending.pop()
            found.append(pid)
            try:
                pending += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                pass
        return found

    def cpu_seconds(self) -> float:
        """utime + stime of the arm's processes, from /proc."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        return sum(self.rss_by_process().values())

    def rss_by_process(self) -> dict[str, float]:
        """MB resident per process of the arm, named by its command (`proxy`, `recorder`...)."""
        found: dict[str, float] = {}
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            name = "recorder" if b"taskmeter.recorder" in command else "proxy" if pid == self.pid else f"pid {pid}"
            found[name] = found.get(name, 0) + kb / 1024
        return found

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_mock() -> Arm:
    # Its own stderr: a caller capturing ours must not wait on a pipe the mock holds.
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.mock"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    port = int(process.stdout.readline())
    return Arm("D", port, "/v1/chat/completions", process)


def start_bare_mitmproxy(mock_port: int, confdir: Path) -> Arm:
    port = free_port()
    process = subprocess.Popen(
        [
            str(BIN / "mitmdump"),
            "-q",
            "--mode",
            f"reverse:http://127.0.0.1:{mock_port}@{port}",
            "--listen-host",
            "127.0.0.1",
            "--set",
            f"confdir={confdir}",
            "--set",
            "stream_large_bodies=1",  # stream every body: a fair floor
            "--set",
            "connection_strategy=lazy",
            "--set",
            "http2=false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_listening(port, process)
    return Arm("M", port, "/v1/chat/completions", process)


def _start_meter_command(args: list[str], announces: str) -> tuple[subprocess.Popen, str]:
    """A `meter` server process, and the address its first line gives (`... <announces> ADDRESS, ...`)."""
    process = subprocess.Popen(
        [str(BIN / "meter"), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True
    )
    line = process.stdout.readline()
    if announces not in line:
        process.kill()
        process.wait()
        raise RuntimeError(f"meter {args[0]} did not start: {line!r}")
    return process, line.split(announces)[1].split()[0].rstrip(",")


def start_meter(
    mock_port: int, workdir: Path, websocket_port: int | None = None, max_parsed_body_mb: int | None = None
) -> tuple[Arm, Path]:
    """The meter on its defaults, but for `max_parsed_body_mb` when given."""
    config = workdir / "config.toml"
    upstreams = f'openai = "http://127.0.0.1:{mock_port}"\n'
    if websocket_port is not None:
        upstreams += f'websocket = "http://127.0.0.1:{websocket_port}"\n'  # bench/websocket.py's mock
    limit = "" if max_parsed_body_mb is None else f"max_parsed_body_mb = {max_parsed_body_mb}\n"
    config.write_text(f'[proxy]\nconfdir = "{workdir / "ca"}"\n{limit}[upstreams]\n{upstreams}')
    db_path = workdir / "bench.db"
    # --quiet: nobody reads the live view here, and a full pipe would stall the recorder.
    process, listen = _start_meter_command(
        ["proxy", "--quiet", "--port", "0", "--config", str(config), "--db", str(db_path)], "listening on "
    )
    return Arm("P", int(listen.rsplit(":", 1)[1]), "/openai/v1/chat/completions", process), db_path


def start_dashboard(db_path: Path) -> Arm:
    """`meter ui` over `db_path`, on a free port; its requests carry the access token's cookie."""
    process, url = _start_meter_command(["ui", "--port", "0", "--db", str(db_path)], "dashboard on ")
    address = urlsplit(url)
    token = parse_qs(address.query)["token"][0]
    return Arm("UI", address.port, "/", process, headers={"cookie": f"taskmeter-ui-{address.port}={token}"})
