"""Small holes of issue 23, each through the real CLI and a real `meter proxy` on
loopback (the AI API is the loopback fake upstream):

- Ctrl-C at any moment of a command (its imports, its start-up, its work) ends
  it with status 130 and no traceback; an interrupted `meter proxy` or `meter
  start` leaves nothing that makes the next `meter start` refuse;
- `meter unflag` and `meter retag` take `last` as `meter flag` does;
- `meter env --task` names the task in OTEL_RESOURCE_ATTRIBUTES, and puts the
  shell's own value back;
- `meter doctor` and the dashboard say what `meter status` says of a failing
  OpenTelemetry export;
- the proxy's last line accounts for every call it saw."""

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from taskmeter.handover.pipe import RunAccount
from taskmeter.proxy.runner import summary_line
from taskmeter.store import connection, dashboards
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import BANNER_END, VENV_BIN, RunningProxy, meter, meter_json, proxy_in_front_of, write_config
from tests.test_dashboard import RunningDashboard, page  # noqa: F401 (the page fixture)
from tests.test_otel_export import free_port_closed, start_proxy, wait_for

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
REPLY = {f.name: f for f in ALL}["openai/chat_nonstream_cached_tokens"].body
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, Linux


@pytest.fixture
def upstream():
    with FakeUpstream() as fake:
        fake.routes[CHAT] = Scenario(body=REPLY)
        yield fake


@pytest.fixture(scope="module")
def shared_proxy(tmp_path_factory):
    with FakeUpstream() as upstream:
        upstream.routes[CHAT] = Scenario(body=REPLY)
        running = proxy_in_front_of(tmp_path_factory.mktemp("proxy"), upstream.port)
        yield running
        running.stop()


@pytest.fixture
def proxy(shared_proxy):
    """The module's proxy, holding only what this test makes; a test's newest call is the newest of all (`last`)."""
    shared_proxy.begin_test()
    return shared_proxy


def _chat_calls(proxy: RunningProxy, count: int) -> list[str]:
    """`count` answered calls through the proxy with the openai SDK: their IDs, oldest first."""
    client = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-test", max_retries=0)
    history = [{"role": "user", "content": "Name a prime."}]
    ids = []
    for _ in range(count):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=history)
        ids.append(raw.headers["x-meter-interaction-id"])
        history += [{"role": "assistant", "content": "7"}, {"role": "user", "content": "another"}]
    return ids


def _stored_once(proxy: RunningProxy, ids: list[str]) -> dict[str, dict]:
    """Every call of `ids` stored exactly once, and nothing else since the test began (a shared
    proxy's earlier tests' calls aside: RunningProxy.begin_test): the rows by ID, with `flagged`."""
    rows = proxy.rows(wait_for=0)
    db = connection.connect(proxy.db_path)
    try:
        flagged = {row[0] for row in db.execute("SELECT interaction_id FROM flags")}
    finally:
        db.close()
    assert sorted(row["id"] for row in rows) == sorted(ids)
    return {row["id"]: {**row, "flagged": row["id"] if row["id"] in flagged else None} for row in rows}


# ---------------------------------------------------------------- Ctrl-C


# What PYTHONVERBOSE makes Python itself write to stderr.
PYTHON_VERBOSE = ("#", "import ", "Processing ", "Adding directory", "Python 3.", 'Type "help"')


class Interrupted:
    """A real `meter ARGS` in a session of its own, as a terminal runs it, sent
    Ctrl-C (SIGINT to its whole process group) at a chosen moment of its life.

    Python writes each import as it finishes to stderr (PYTHONPROFILEIMPORTTIME),
    and a few lines more for each (PYTHONVERBOSE), through a pipe shrunk to one
    page: until the test has read the line of the import it waits for, the command
    can run at most a page of output further, a few imports, so the signal lands
    where it was meant to, not after the command has finished."""

    def __init__(self, args: list[str], env: dict, after_import: str | None = None) -> None:
        # Shrunk before the command starts: a pipe holding more than a page cannot be (EBUSY).
        read_end, write_end = os.pipe()
        fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
        try:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "meter"), *args],
                stdout=subprocess.PIPE,
                stderr=write_end,
                env={**env, "PYTHONPROFILEIMPORTTIME": "1", "PYTHONVERBOSE": "1"},
                start_new_session=True,
            )
        finally:
            os.close(write_end)
        self._stderr = os.fdopen(read_end, "rb")
        self.imports: list[str] = []
        self.other_stderr: list[str] = []
        self.stdout: list[str] = []
        self.signalled = threading.Event()
        self._after_import = after_import
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=lambda: self.stdout.extend(map(bytes.decode, self.process.stdout)), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        for raw in self._stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("import time:"):
                module = line.rsplit("|", 1)[1].strip()
                self.imports.append(module)
                if module == self._after_import and not self.signalled.is_set():
                    self.ctrl_c()
            elif not line.startswith(PYTHON_VERBOSE):
                self.other_stderr.append(line)

    def ctrl_c(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)
        self.signalled.set()

    def when(self, condition, what: str, timeout: float = 30) -> None:
        """Ctrl-C once `condition()` holds, polled while the command runs."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"meter ended before {what}: {self.other_stderr}"
            assert time.monotonic() < deadline, f"never {what}"
            time.sleep(0.01)
        self.ctrl_c()

    def end(self, timeout: float = 60) -> int:
        """The exit status, once the command and every process of its group ended
        (killed, and the test failed, if it was never interrupted or outlives the interruption)."""
        try:
            assert self.signalled.wait(timeout), f"meter never imported {self._after_import}: {self.other_stderr}"
            code = self.process.wait(timeout)
        except BaseException:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise
        for reader in self._readers:
            reader.join(timeout)
        deadline = time.monotonic() + timeout
        while _group_alive(self.process.pid):  # a recorder, a syncer: nothing outlives the command
            assert time.monotonic() < deadline, "a process of the interrupted command outlived it"
            time.sleep(0.01)
        return code

    def assert_quiet(self) -> None:
        """No traceback, and at most one line, on stderr."""
        said = [line for line in self.other_stderr if line.strip()]
        assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in said), "\n".join(said)
        assert len(said) <= 1, "\n".join(said)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone but for its exit status; only live processes count.
    return any(_state(pid) not in ("Z", None) for pid in _group_members(pgid))


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _opened(pid: int, path: Path) -> bool:
    """Whether the process has `path` open."""
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def _isolated(tmp_path: Path) -> dict:
    """The environment of a user of this test's own: config, state and database."""
    return {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "config")}


# The moments of a read command: inside main() (sqlite3 is its first import), once
# click is loaded, once the commands' common module is, while the command's module
# loads (importlib loads it, which Python does not time: by one of its imports), and
# once the command runs (its first import). `meter log --follow` is interrupted at work.
STATUS_MOMENTS = ["sqlite3", "click", "taskmeter.cli.common", "taskmeter.store.proxies", "taskmeter.lifecycle"]


@pytest.mark.parametrize("moment", STATUS_MOMENTS)
def test_ctrl_c_during_the_start_of_a_command_exits_130_without_a_traceback(tmp_path, moment):
    db_path = tmp_path / "meter.db"
    connection.connect(db_path).close()
    command = Interrupted(["status", "--db", str(db_path)], _isolated(tmp_path), after_import=moment)
    assert command.end() == 130, command.other_stderr
    command.assert_quiet()


def test_ctrl_c_ends_log_follow_quietly(tmp_path, proxy):
    ids = _chat_calls(proxy, 1)
    proxy.rows(wait_for=1)
    command = Interrupted(["log", "--follow", "--db", str(proxy.db_path)], _isolated(tmp_path))
    command.when(lambda: any(ids[0] in line for line in command.stdout), "printed the call")
    assert command.end() == 130
    command.assert_quiet()
    _stored_once(proxy, ids)


def _proxy_command(tmp_path: Path, upstream: FakeUpstream) -> tuple[list[str], Path]:
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
    db_path = tmp_path / "meter.db"
    return ["proxy", "--port", "0", "--config", str(config), "--db", str(db_path)], db_path


def _nothing_left(tmp_path: Path, db_path: Path, args: list[str]) -> None:
    """No proxy counts as running on the database, no health or pid file is left, and
    `meter start` starts one (then `meter stop` stops it)."""
    assert not db_path.with_name(db_path.name + ".health.json").exists()
    assert not list((tmp_path / "state").rglob("*.pid"))
    env = _isolated(tmp_path)
    status = subprocess.run([str(VENV_BIN / "meter"), "status", "--json", "--db", str(db_path)],
                            capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert status.returncode == 0 and json.loads(status.stdout)["proxies"] == [], status.stderr
    config = args[args.index("--config") + 1]
    started = subprocess.run([str(VENV_BIN / "meter"), "start", "--port", "0", "--config", config, "--db", str(db_path)],
                             capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert started.returncode == 0, started.stderr
    stopped = subprocess.run([str(VENV_BIN / "meter"), "stop", "--config", config, "--db", str(db_path)],
                             capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr


# `meter proxy`'s moments: in main(), loading its command's module, loading its config
# (pydantic), mitmproxy and its runner, just before it runs, and once its recorder runs
# (the health file is made), which may be before it listens or after.
PROXY_MOMENTS = [
    "sqlite3",
    "taskmeter.store.dashboards",
    "taskmeter.config.settings",
    "taskmeter.proxy.runner",
    "taskmeter.team.process",
]


@pytest.mark.parametrize("moment", [*PROXY_MOMENTS, "recorder started"])
def test_ctrl_c_during_proxy_start_up_exits_130_and_leaves_nothing_behind(tmp_path, upstream, moment):
    args, db_path = _proxy_command(tmp_path, upstream)
    health = db_path.with_name(db_path.name + ".health.json")
    env = _isolated(tmp_path)
    if moment == "recorder started":
        command = Interrupted(args, env)
        command.when(health.exists, "made its health file")
    else:
        command = Interrupted(args, env, after_import=moment)
    code = command.end()
    listening = any("listening on" in line for line in command.stdout)
    # Once it listens, Ctrl-C is the way to stop it, as every test's proxy stops: status 0.
    assert code == (0 if listening else 130), command.other_stderr
    command.assert_quiet()
    _nothing_left(tmp_path, db_path, args)


# A command with a Ctrl-C sent while asyncio makes its event loop (asyncio.Runner's first step,
# whichever loop the command asks for): the instant after the last import, which the proxy's
# "taskmeter.team.process" moment above meets now and then, met every time.
CTRL_C_WHILE_THE_LOOP_IS_MADE = """
import asyncio.runners, os, signal, sys
make = asyncio.runners.Runner._lazy_init
def interrupted(runner):
    os.kill(os.getpid(), signal.SIGINT)
    return make(runner)
asyncio.runners.Runner._lazy_init = interrupted
from taskmeter.cli import main
sys.argv[0] = "meter"
main()
"""


@pytest.mark.parametrize("command", ["proxy", "ui"])
def test_ctrl_c_while_a_command_makes_its_event_loop_stops_it_quietly_and_leaves_nothing_behind(tmp_path, upstream, command):
    args, db_path = _proxy_command(tmp_path, upstream)
    if command == "ui":  # Ctrl-C is the way to stop the dashboard: status 0
        connection.connect(db_path).close()
        args = ["ui", "--port", "0", "--db", str(db_path)]
    done = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_THE_LOOP_IS_MADE, *args],
                          env=_isolated(tmp_path), capture_output=True, text=True, timeout=60)  # fmt: skip
    # Not a half-made loop's traceback, nor "coroutine '_serve' (or 'Server.serve') was never awaited".
    assert done.stderr.strip() == "", done.stderr
    if command == "ui":
        assert done.returncode == 0, done
        with contextlib.closing(connection.connect(db_path)) as db:
            assert db.execute("SELECT value FROM state WHERE key = ?", (dashboards.KEY,)).fetchall() == []  # unregistered
    else:
        assert done.returncode == 130 and "listening on" not in done.stdout, done
        _nothing_left(tmp_path, db_path, args)


# A proxy sent SIGTERM (`meter stop`, or an interrupted `meter start`) the moment its recorder has
# started, before the proxy's own handlers are in place: the instant the drill above meets now and then.
SIGTERM_ONCE_THE_RECORDER_STARTS = """
import os, signal, sys
from taskmeter.handover.pipe import Handover
start = Handover.start
def started(handover):
    start(handover)
    os.kill(os.getpid(), signal.SIGTERM)
Handover.start = started
from taskmeter.cli import main
sys.argv[0] = "meter"
main()
"""


def test_sigterm_as_the_recorder_starts_stops_the_proxy_as_any_later_one_and_leaves_nothing_behind(tmp_path, upstream):
    args, db_path = _proxy_command(tmp_path, upstream)
    done = subprocess.run([sys.executable, "-c", SIGTERM_ONCE_THE_RECORDER_STARTS, *args],
                          env=_isolated(tmp_path), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done
    assert "meter: stopped after" in done.stdout, done.stdout  # the run's summary, its recorder stopped
    _nothing_left(tmp_path, db_path, args)


def test_ctrl_c_during_meter_start_stops_the_proxy_it_was_starting(tmp_path, upstream):
    args, db_path = _proxy_command(tmp_path, upstream)
    start = ["start", *args[1:]]
    command = Interrupted(start, _isolated(tmp_path))
    written: list[int] = []  # the PID the pidfile named when Ctrl-C came: the interrupted start removes the file

    def pidfile_written() -> bool:
        for pidfile in (tmp_path / "state").rglob("*.pid"):
            with contextlib.suppress(FileNotFoundError, ValueError):
                written.append(int(pidfile.read_text()))
        return bool(written)

    command.when(pidfile_written, "wrote its pidfile")
    background = written[0]
    assert command.end() == 130
    command.assert_quiet()
    wait_for(lambda: _state(background) in ("Z", None), "the proxy it was starting to stop")
    _nothing_left(tmp_path, db_path, args)


# ---------------------------------------------------------------- last


def test_unflag_and_retag_take_last_as_flag_does(proxy):
    assert meter(proxy, "set-task", "P7-010").returncode == 0
    ids = _chat_calls(proxy, 3)
    proxy.rows(wait_for=3)

    flagged = meter(proxy, "flag", "last")
    assert flagged.returncode == 0 and flagged.stdout.startswith(f"Flagged {ids[2]} as a hallucination"), flagged.stderr
    unflagged = meter(proxy, "unflag", "last")
    assert unflagged.returncode == 0 and unflagged.stdout.splitlines() == [f"Unflagged {ids[2]}."], unflagged.stderr
    again = meter(proxy, "unflag", "LAST")  # as `flag` takes it: any case
    assert again.returncode == 1 and again.stderr.strip() == f"meter: error: interaction {ids[2]} is not flagged"

    moved = meter(proxy, "retag", "last", "--to", "P7-011", "--create")
    assert moved.returncode == 0 and moved.stdout.splitlines() == ["Moved 1 interaction to P7-011."], moved.stderr
    # `last` is of the current task: now its newest call is the second.
    assert meter_json(proxy, "show", "last")["interaction_id"] == ids[1]
    assert meter_json(proxy, "show", "last", "--any")["interaction_id"] == ids[2]
    # A range may end at `last`; --any makes it the newest call of every task.
    ranged = meter(proxy, "retag", "--between", ids[0], "last", "--any", "--to", "P7-012", "--create")
    assert ranged.returncode == 0 and ranged.stdout.splitlines() == ["Moved 3 interactions to P7-012."], ranged.stderr

    refused = meter(proxy, "unflag", ids[0], "--any")
    assert refused.returncode == 1 and "--any goes with `last`" in refused.stderr
    for command in ("unflag", "retag"):
        shown = meter(proxy, command, "--help").stdout
        assert "`last`" in shown and "--any" in shown, shown

    rows = _stored_once(proxy, ids)
    assert {row["task_id"] for row in rows.values()} == {"P7-012"}
    assert not any(row["flagged"] for row in rows.values())


def test_last_is_offered_by_completion_wherever_a_call_is_taken(proxy):
    ids = _chat_calls(proxy, 1)
    proxy.rows(wait_for=1)
    for words in ("meter show ", "meter flag ", "meter unflag ", "meter retag ", "meter retag --between "):
        done = subprocess.run(
            [str(VENV_BIN / "meter")],
            env={**os.environ, "_METER_COMPLETE": "bash_complete", "COMP_WORDS": words + "--db " + str(proxy.db_path) + " ",
                 "COMP_CWORD": str(len(words.split()) + 2), "METER_DB": str(proxy.db_path)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        offered = done.stdout.splitlines()
        assert "plain,last" in offered and f"plain,{ids[0]}" in offered, (words, done.stdout, done.stderr)
    _stored_once(proxy, ids)


# ---------------------------------------------------------------- meter env --task and OTel


def _shell_steps(tmp_path: Path, steps: list[str], environment: dict) -> list[dict]:
    """Each `meter env STEP` evaluated in turn by a real dash; the environment before and after each."""
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    dump = f"{sys.executable} -c 'import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], \"w\"))'"
    meter_env = f"{VENV_BIN / 'meter'} env --db {tmp_path / 'meter.db'}"
    lines = [f"{dump} {dumps / '0.json'}"]
    for number, step in enumerate(steps, 1):
        lines += [f'eval "$({meter_env} {step})"', f"{dump} {dumps / f'{number}.json'}"]
    done = subprocess.run([shutil.which("dash") or "dash", "-c", "\n".join([*lines, "true"])],
                          env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads((dumps / f"{n}.json").read_text()) for n in range(len(steps) + 1)]


def test_env_task_names_the_task_for_the_agents_telemetry_and_unset_puts_the_shells_value_back(tmp_path):
    own = "service.name=my-agent,deployment.environment=dev"
    environment = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8", "OTEL_RESOURCE_ATTRIBUTES": own,
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "user.email", "GIT_CONFIG_VALUE_0": "dev@example.com",
    }  # fmt: skip
    states = _shell_steps(tmp_path, ["--task P1-001", "--task 'P2-003'", "", "--task P1-001", "--unset"], environment)
    initial, first, second, untasked, again, after = states
    named = "taskmeter.task.id={},taskmeter.phase.id={},taskmeter.developer=dev%40example.com"
    assert first["OTEL_RESOURCE_ATTRIBUTES"] == f"{own},{named.format('P1-001', 'P1')}"
    assert first["OPENAI_BASE_URL"].endswith("/t/P1-001/openai/v1")
    # Another task replaces ours, over the shell's own value: never ours twice.
    assert second["OTEL_RESOURCE_ATTRIBUTES"] == f"{own},{named.format('P2-003', 'P2')}"
    # No task: the base URLs name none, and neither does the telemetry.
    assert untasked["OTEL_RESOURCE_ATTRIBUTES"] == own and "/t/" not in untasked["OPENAI_BASE_URL"]
    assert again["OTEL_RESOURCE_ATTRIBUTES"] == f"{own},{named.format('P1-001', 'P1')}"
    assert after == initial


def test_env_task_in_a_shell_without_otel_attributes_unsets_them_again(tmp_path):
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8", "GIT_CONFIG_NOSYSTEM": "1"}
    initial, tasked, after = _shell_steps(tmp_path, ["--task P1-001", "--unset"], environment)
    assert tasked["OTEL_RESOURCE_ATTRIBUTES"] == "taskmeter.task.id=P1-001,taskmeter.phase.id=P1"
    assert "OTEL_RESOURCE_ATTRIBUTES" not in after and after == initial


# ---------------------------------------------------------------- telemetry problems


def test_doctor_and_the_dashboard_say_what_status_says_of_a_failing_export(tmp_path, upstream, page):  # noqa: F811
    endpoint = free_port_closed()
    proxy = start_proxy(tmp_path, upstream, endpoint)
    try:
        ids = _chat_calls(proxy, 2)
        proxy.rows(wait_for=2)

        def status_lines():
            shown = meter(proxy, "status")
            return [line.removeprefix("meter: warning: ") for line in (shown.stdout + shown.stderr).splitlines()
                    if "telemetry:" in line]  # fmt: skip

        # A line per failing endpoint: the metrics' once their first export is due.
        said = wait_for(lambda: (lines := status_lines()) and len(lines) == 2 and lines, "a status line per endpoint")
        assert {line.split(" failing since ")[0] for line in said} == {
            f"telemetry: export to {endpoint}/v1/traces",
            f"telemetry: export to {endpoint}/v1/metrics",
        }, said
        assert all(line.endswith("(connection refused); calls are recorded here all the same") for line in said), said
        problems = [line.split("telemetry: ", 1)[1] for line in said]

        doctor = meter(proxy, "doctor")
        assert doctor.returncode == 1, doctor.stdout
        checks = [line for line in doctor.stdout.splitlines() if line.startswith("FAIL  telemetry ")]
        assert [line.removeprefix("FAIL  telemetry ").strip() for line in checks] == problems, doctor.stdout
        as_json = meter(proxy, "doctor", "--json")
        assert as_json.returncode == 1
        reported = {check["detail"] for check in json.loads(as_json.stdout) if check["name"] == "telemetry"}
        assert reported == set(problems)

        dashboard = RunningDashboard(proxy.db_path)
        try:
            with httpx.Client(base_url=dashboard.origin, headers=dashboard.cookie) as client:
                state = client.get("/proxy").json()
            assert state["state"] == "recording" and state["problems"] == said
            dashboard.goto(page, "/calls/" + ids[0])  # under the bar of every page
            problems = page.locator("#proxy-problems li")
            assert problems.all_inner_texts() == said
            # The page keeps them current: the proxy gone, its export problems go with it.
            assert proxy.stop() == 0
            page.locator("#proxy-state.down").wait_for(timeout=15_000)  # the next look, every 2 s
            assert problems.count() == 0 and not page.locator("#proxy-problems").is_visible()
            assert page.errors == []
        finally:
            dashboard.stop()
    finally:
        proxy.stop()
    _stored_once(proxy, ids)


# ---------------------------------------------------------------- the run's summary


def test_the_run_summary_accounts_for_every_call_seen(tmp_path, upstream):
    proxy = proxy_in_front_of(tmp_path, upstream.port)
    ids = _chat_calls(proxy, 3)
    upstream.routes[CHAT] = Scenario(status=500, body=b'{"error":{"message":"overloaded","type":"server_error"}}')
    failed = httpx.post(f"{proxy.origin}/openai/v1/chat/completions", json={"model": "gpt-4o", "messages": []}, timeout=30)
    ids.append(failed.headers["x-meter-interaction-id"])
    proxy.rows(wait_for=4)
    assert proxy.stop() == 0
    last = proxy.whole_live_view()[-1]
    assert last.startswith("meter: stopped after ") and " min: 4 calls recorded (1 failed), " in last
    assert last.endswith("; all 4 calls seen are stored"), last
    _stored_once(proxy, ids)


def test_the_run_summary_says_which_calls_wait_in_the_spool(tmp_path, upstream):
    """A database that cannot be written (its write lock held past the recorder's
    wait): the calls go to the spool, and the last line says so, with how many
    were stored before."""
    folder = tmp_path / "data"
    folder.mkdir()
    proxy = RunningProxy(
        write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"}),
        folder / "meter.db",
    )
    stored = _chat_calls(proxy, 2)
    proxy.rows(wait_for=2)
    db = connection.connect(proxy.db_path)
    try:  # held write lock: the recorder cannot store, and spools
        db.execute("BEGIN EXCLUSIVE")
        spooled = _chat_calls(proxy, 3)
        spool = proxy.db_path.with_name(proxy.db_path.name + ".spool.jsonl")
        wait_for(lambda: spool.exists() and len(spool.read_text().splitlines()) == 3, "three calls in the spool", 30)
        proxy.stop()
        last = proxy.whole_live_view()[-1]
    finally:
        db.rollback()
        db.close()
    assert " min: 2 calls recorded (0 failed), " in last, last
    assert last.endswith("; of 5 calls seen, 3 wait in the spool (stored once the database can take them)"), last
    assert BANNER_END not in last
    _stored_once(proxy, stored)
    # In the spool, or set aside by the recorder's last replay, which the next recorder finishes.
    waiting = [line for path in folder.glob("meter.db.spool.jsonl*") for line in path.read_text().splitlines()]
    assert sorted(json.loads(line)["id"] for line in waiting) == sorted(spooled)


@pytest.mark.parametrize(
    ("account", "ending"),
    [
        (RunAccount(7, {"calls": 7, "failed": 2, "tokens": 90, "cost": 0.5}, 0, 0, 0), "; all 7 calls seen are stored"),
        (
            RunAccount(9, {"calls": 4, "failed": 0, "tokens": 90, "cost": 0.5}, 1, 2, 1),
            "; of 9 calls seen, 1 waits in the spool (stored once the database can take them),"
            " 2 are in the quarantine (`meter status` says where), 1 was lost, 1 is not accounted for (see the messages above)",
        ),
        (
            RunAccount(3, None, 0, 0, 3),
            ": the database could not be read to count the calls stored; of 3 calls seen, 3 were lost",
        ),
    ],
)
def test_the_run_summary_places_every_call_it_can(account, ending):
    line = summary_line(account, 90)
    assert line.startswith("meter: stopped after 1.5 min") and line.endswith(ending), line
    if account.stored is not None:
        assert f": {account.stored['calls']} calls recorded ({account.stored['failed']} failed), 90 tokens, $0.5000;" in line
