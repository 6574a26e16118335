"""Issue 24, 80 columns, all of it: the proxy's banner, its line per call and its
summary, `meter log --follow` and `meter status`, each run in a real
pseudo-terminal 80 columns wide, print no line wider than that and split no
word: what they print is, word for word, what they print to a pipe (where lines
stay whole for grep). Through a real `meter proxy` and the official openai SDK."""

import fcntl
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import termios
import threading
import time

import openai
import pytest

from taskmeter.callline import call_line
from taskmeter.store import connection
from taskmeter.terminal import width_of, wrap
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.meter_forks import METER
from tests.proxy_harness import BANNER_END, VENV_BIN, write_config

COLUMNS = 80
CHAT = {f.name: f for f in ALL}["openai/chat_nonstream_cached_tokens"]
TASK = "P1-010"
TITLE = "Make the payment retry logic idempotent across every region and write down each failure mode"
_STYLE = re.compile(r"\x1b\[[0-9;]*m")


class Terminal:
    """A command run in a pseudo-terminal of `columns` columns; what it printed, as lines."""

    def __init__(self, argv: list[str], columns: int, env: dict | None = None) -> None:
        master, child = pty.openpty()
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        self.process = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env, start_new_session=True)
        os.close(child)
        self._master = master
        self._output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: every process holding the terminal has closed it
                break
            if not data:
                break
            self._output += data
        os.close(self._master)

    def text(self) -> str:
        return _STYLE.sub("", self._output.decode("utf-8", "replace").replace("\r\n", "\n"))

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text():
            assert self.process.poll() is None or self._reader.is_alive(), f"exited without {text!r}: {self.text()}"
            assert time.monotonic() < deadline, f"never printed {text!r}: {self.text()}"
            time.sleep(0.02)

    def interrupt(self, timeout: float = 30) -> str:
        """Ctrl-C, as a person stops it; everything it printed once every writer closed the terminal."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout)
        return self.text()

    def finished(self, timeout: float = 60) -> str:
        self.process.wait(timeout)
        self._reader.join(timeout)
        return self.text()


def _words(text: str) -> str:
    """The words of `text`, one space between them; numbers as N (a duration may tick between two runs)."""
    return re.sub(r"\d+", "N", " ".join(text.split()))


def _assert_fits(printed: str, whole: str) -> None:
    """`printed` (to the terminal) fits COLUMNS and holds `whole` (what a pipe gets) word for word."""
    lines = printed.splitlines()
    assert max(len(line) for line in lines) <= COLUMNS, "\n".join(line for line in lines if len(line) > COLUMNS)
    assert _words(whole) in _words(printed), (whole, printed)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _meter(*args: str) -> subprocess.CompletedProcess:
    """`meter ARGS` piped: a fork of the preloaded meter (tests/meter_forks.py)."""
    return METER.run(list(args), timeout=60)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A proxy run in an 80-column terminal, one call through it, stopped with Ctrl-C:
    what the terminal showed, the banner the same proxy prints to a pipe, and the call."""
    folder = tmp_path_factory.mktemp("width")
    db_path = folder / "meter.db"
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=CHAT.body)
        config = write_config(folder / "config.toml", folder / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
        assert _meter("set-task", TASK, "--title", TITLE, "--db", str(db_path)).returncode == 0
        port = _free_port()
        command = [str(VENV_BIN / "meter"), "proxy", "--port", str(port), "--config", str(config), "--db", str(db_path)]
        terminal = Terminal(command, COLUMNS)
        terminal.wait_for(BANNER_END.strip())
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="sk-test", max_retries=0)
        answer = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        call_id = answer.headers["x-meter-interaction-id"]
        terminal.wait_for(call_id)
        printed = terminal.interrupt()
        # The same proxy, on the same port, to a pipe: its banner whole.
        piped = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        banner = [piped.stdout.readline() for _ in range(4)]
        piped.send_signal(signal.SIGINT)
        piped.communicate(timeout=30)
    db = connection.connect(db_path)
    try:
        [row] = [dict(r) for r in db.execute("SELECT rowid, * FROM interactions")]
    finally:
        db.close()
    return printed, "".join(banner), row, db_path


@pytest.mark.e2e
def test_the_proxy_banner_its_call_line_and_summary_fit_80_columns(session):
    printed, banner, row, _ = session
    assert BANNER_END in banner and max(len(line) for line in banner.splitlines()) > COLUMNS  # it needs wrapping
    _assert_fits(printed, banner)
    line = call_line(row)
    assert len(line) > COLUMNS
    _assert_fits(printed, line)
    assert "meter: stopped after" in printed


@pytest.mark.e2e
def test_log_follow_fits_80_columns(session):
    _, _, row, db_path = session
    terminal = Terminal([str(VENV_BIN / "meter"), "log", "--follow", "--db", str(db_path)], COLUMNS)
    terminal.wait_for(row["id"])
    _assert_fits(terminal.interrupt(), call_line(row))


@pytest.mark.e2e
def test_status_fits_80_columns(session):
    _, _, _, db_path = session
    piped = _meter("status", "--db", str(db_path))
    assert piped.returncode == 0 and TITLE in piped.stdout
    assert max(len(line) for line in piped.stdout.splitlines()) > COLUMNS  # it needs wrapping
    printed = Terminal([str(VENV_BIN / "meter"), "status", "--db", str(db_path)], COLUMNS).finished()
    _assert_fits(printed, piped.stdout)
    # A field's long value goes on under itself, not under its name.
    task_line = next(n for n, line in enumerate(printed.splitlines()) if line.startswith("Current task:"))
    continued = printed.splitlines()[task_line + 1]
    assert continued.startswith(" " * len("Elapsed (wall): ")) and continued.strip()


def test_wrap_breaks_between_fields_then_words_and_never_inside_one():
    line = "09:15:02  P1-010  gpt-4o-mini  in 1,149 (cached 1,024, written 0)  out 353 (reasoning 0)  $0.0004  200"
    assert wrap(line, 60).splitlines() == [
        "09:15:02  P1-010  gpt-4o-mini",
        "  in 1,149 (cached 1,024, written 0)  out 353 (reasoning 0)",
        "  $0.0004  200",
    ]
    path = "/" + "long_folder_name/" * 6 + "meter.db"
    assert wrap(f"Database: {path}", 40).splitlines() == ["Database:", path]  # too long for any line: whole
    assert wrap("short", 40) == "short" and wrap(line, None) == line
    assert wrap(f"FAIL  config    {path[:35]}", 40, indent=16).splitlines() == ["FAIL  config", f"     {path[:35]}"]
    assert wrap("  proxy:   HTTPS_PROXY=http://127.0.0.1:8877 with the CA in /home/someone/.local/share", 60).splitlines() == [
        "  proxy:   HTTPS_PROXY=http://127.0.0.1:8877 with the CA in",
        "    /home/someone/.local/share",
    ]


def test_a_terminal_that_reports_no_size_is_80_columns_wide_unless_columns_says(monkeypatch):
    """A pseudo-terminal nobody sized says 0 columns (as under some CI runners and
    `docker exec -t`): the lines wrap as the tables do, at COLUMNS or 80, instead of
    every message failing on a zero width."""
    leader, follower = pty.openpty()
    try:
        with os.fdopen(os.dup(follower), "w") as stream:
            assert os.get_terminal_size(follower).columns == 0
            monkeypatch.delenv("COLUMNS", raising=False)
            assert width_of(stream) == 80
            monkeypatch.setenv("COLUMNS", "120")
            assert width_of(stream) == 120
            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
            assert width_of(stream) == 120  # COLUMNS first, as shutil.get_terminal_size
            monkeypatch.delenv("COLUMNS")
            assert width_of(stream) == 100
    finally:
        os.close(leader)
        os.close(follower)


@pytest.mark.e2e
def test_doctor_fits_80_columns_under_each_check_detail(session):
    _, _, _, db_path = session
    piped = _meter("doctor", "--db", str(db_path))
    assert max(len(line) for line in piped.stdout.splitlines()) > COLUMNS  # it needs wrapping
    printed = Terminal([str(VENV_BIN / "meter"), "doctor", "--db", str(db_path)], COLUMNS).finished()
    _assert_fits(printed, piped.stdout)
    continued = [line for line in printed.splitlines() if not line.startswith(("ok", "FAIL"))]
    # Under the detail; a path too long for that gives up just enough of the indent.
    assert continued and all(line.startswith(" " * 16) or (line.startswith(" ") and len(line) == COLUMNS) for line in continued)
