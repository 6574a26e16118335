"""Issue 24, "the proxy is down": `meter service install|uninstall|status` writes a
systemd user unit (checked by `systemd-analyze verify`) or a launchd agent
(checked with plistlib), whose command really starts a `meter proxy` that answers
and records a call through the official openai SDK; uninstall removes exactly
what install wrote, install twice changes nothing, a failed write leaves nothing;
`meter status` and `meter doctor` say whether the service is installed and running."""

import json
import os
import plistlib
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from taskmeter.proxy.environment import PING_PATH
from taskmeter.store import connection
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import write_config

CHAT = {f.name: f for f in ALL}["openai/chat_nonstream_cached_tokens"]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A user's home of its own: the service files go there, never the developer's."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.delenv("XDG_CONFIG_HOME")  # systemd's user units: ~/.config/systemd/user
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):  # a corporate proxy is the test's to give
        monkeypatch.delenv(name, raising=False)
    return folder


@pytest.fixture
def upstream():
    with FakeUpstream() as fake:
        fake.routes["/v1/chat/completions"] = Scenario(body=CHAT.body)
        yield fake


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tree(folder: Path) -> dict[str, str]:
    """Every path under `folder` with what it is: a file's text, a link's target."""
    return {
        str(path.relative_to(folder)): (
            f"-> {os.readlink(path)}" if path.is_symlink() else path.read_text() if path.is_file() else "folder"
        )
        for path in sorted(folder.rglob("*"))
    }


def _unit_command(unit: str) -> tuple[list[str], dict[str, str]]:
    """ExecStart's words and the Environment= assignments, as systemd reads them
    (quotes, %% for a %, $$ for a $)."""
    unescape = {"%%": "%", "$$": "$"}
    words, environment = [], {}
    for line in unit.splitlines():
        if line.startswith("ExecStart="):
            words = shlex.split(line.removeprefix("ExecStart="))
        elif line.startswith("Environment="):
            name, _, value = shlex.split(line.removeprefix("Environment="))[0].partition("=")
            environment[name] = value.replace("%%", "%")
    for escaped, plain in unescape.items():
        words = [word.replace(escaped, plain) for word in words]
    return words, environment


def _answers_and_records(argv: list[str], environment: dict[str, str], port: int, db_path: Path) -> None:
    """Start what the service would run, as its manager would (no shell, no PATH lookup),
    wait for the gateway to answer, send a real call through it, and find it stored once."""
    assert os.path.isabs(argv[0]) and os.access(argv[0], os.X_OK)
    env = {"HOME": os.environ["HOME"], "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **environment}  # a service manager's
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        origin = f"http://127.0.0.1:{port}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 60
        while True:
            try:
                with opener.open(origin + PING_PATH, timeout=2) as answer:
                    assert json.loads(answer.read()) == {"meter": "ok"}
                    break
            except OSError:
                assert process.poll() is None, f"the service's proxy exited: {process.stderr.read().decode()}"
                assert time.monotonic() < deadline, "the service's proxy never answered"
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"{origin}/t/P24-001/openai/v1", api_key="sk-test", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
        deadline = time.monotonic() + 20
        while True:
            db = connection.connect(db_path)
            try:
                rows = db.execute("SELECT task_id, http_status FROM interactions").fetchall()
            finally:
                db.close()
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [tuple(row) for row in rows] == [("P24-001", 200)]
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, process.stderr.read().decode()


@pytest.mark.e2e  # runs systemd-analyze and the unit's proxy
def test_the_systemd_unit_verifies_and_its_execstart_starts_a_proxy_that_records(meter, home, tmp_path, upstream):
    config = write_config(tmp_path / "my config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
    db_path, port = tmp_path / "data 100%" / "meter.db", _free_port()
    db_path.parent.mkdir()
    result = meter("service", "install", "--no-start", "--port", str(port), "--config", str(config), "--db", str(db_path))
    assert result.code == 0, result.err
    unit_path = home / ".config" / "systemd" / "user" / "taskmeter.service"
    assert f"installed: {unit_path}" in result.out and f"on port {port}, recording to {db_path}" in result.out
    unit = unit_path.read_text()
    assert "Restart=on-failure" in unit and "WantedBy=default.target" in unit
    link = unit_path.parent / "default.target.wants" / "taskmeter.service"
    assert link.is_symlink() and link.resolve() == unit_path  # started at login, as `systemctl --user enable` would

    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    verify = subprocess.run(
        ["systemd-analyze", "--user", "verify", str(unit_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        timeout=60,
    )
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")

    argv, environment = _unit_command(unit)
    assert argv[argv.index("--db") + 1] == str(db_path) and argv[argv.index("--config") + 1] == str(config)
    assert set(environment) <= {"XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"}
    assert environment["XDG_STATE_HOME"] == os.environ["XDG_STATE_HOME"]  # the user's folders: pidfiles, logs
    _answers_and_records(argv, environment, port, db_path)


@pytest.mark.e2e  # runs systemd-analyze
def test_systemd_analyze_finds_a_broken_unit(tmp_path):
    """The verification above can fail: a unit with a bad setting is reported."""
    broken = tmp_path / "taskmeter.service"
    broken.write_text("[Service]\nExecStart=python -m taskmeter proxy\nRestart=sometimes\n")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    verify = subprocess.run(
        ["systemd-analyze", "--user", "verify", str(broken)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        timeout=60,
    )
    assert verify.returncode != 0 or verify.stderr


@pytest.mark.e2e  # runs the agent's proxy
def test_the_launchd_agent_is_a_plist_whose_program_starts_a_proxy_that_records(meter, home, tmp_path, upstream):
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
    db_path, port = tmp_path / "meter.db", _free_port()
    result = meter(
        "service",
        "install",
        "--manager",
        "launchd",
        "--no-start",
        "--port",
        str(port),
        "--config",
        str(config),
        "--db",
        str(db_path),
    )
    assert result.code == 0, result.err
    path = home / "Library" / "LaunchAgents" / "org.taskmeter.proxy.plist"
    with path.open("rb") as file:
        agent = plistlib.load(file)
    assert agent["Label"] == "org.taskmeter.proxy"
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}  # at login; again after a crash
    assert agent["StandardOutPath"] == agent["StandardErrorPath"]
    arguments = agent["ProgramArguments"]
    assert arguments[1:4] == ["-m", "taskmeter", "proxy"] and arguments[arguments.index("--port") + 1] == str(port)
    _answers_and_records(arguments, agent["EnvironmentVariables"], port, db_path)
    assert meter("service", "uninstall").code == 0
    assert _tree(home) == {}


def test_the_service_chains_to_the_corporate_proxy_the_user_had_and_keeps_it_private(meter, home, monkeypatch):
    """A proxy started at login has no shell to find HTTPS_PROXY in: the unit carries
    the corporate proxy as it was before `meter env` pointed the shell at the meter,
    and, its password included, is readable by the user alone."""
    corporate = "http://me:s3cret@proxy.corp.example:3128"
    monkeypatch.setenv("METER_SAVED_HTTPS_PROXY", corporate)  # what `meter env --https-proxy` replaced
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:8877")
    monkeypatch.setenv("NO_PROXY", "intranet.corp.example")
    assert meter("service", "install", "--no-start").code == 0
    unit_path = home / ".config" / "systemd" / "user" / "taskmeter.service"
    _, environment = _unit_command(unit_path.read_text())
    assert (environment["HTTPS_PROXY"], environment["NO_PROXY"]) == (corporate, "intranet.corp.example")
    assert oct(unit_path.stat().st_mode & 0o777) == oct(0o600)


def test_install_twice_changes_nothing_and_uninstall_removes_exactly_what_install_wrote(meter, home, tmp_path):
    theirs = home / ".config" / "systemd" / "user" / "theirs.service"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("[Service]\nExecStart=/bin/true\n")
    before = _tree(home)
    assert meter("service", "install", "--no-start").code == 0
    installed = _tree(home)
    again = meter("service", "install", "--no-start")
    assert again.code == 0 and "already installed" in again.out
    assert _tree(home) == installed
    changed = meter("service", "install", "--no-start", "--port", "9911")
    assert changed.code == 0 and "installed:" in changed.out and "already" not in changed.out
    assert "--port 9911" in (home / ".config/systemd/user/taskmeter.service").read_text()
    removed = meter("service", "uninstall")
    assert removed.code == 0 and "removed" in removed.out
    assert _tree(home) == before  # their unit and the folders that were there stay
    assert meter("service", "uninstall").out.strip() == "no taskmeter service is installed"


def test_uninstall_from_an_empty_home_leaves_it_empty(meter, home):
    assert meter("service", "install", "--no-start").code == 0
    assert meter("service", "uninstall").code == 0
    assert _tree(home) == {}


def test_a_failed_write_leaves_nothing_half_written(meter, home):
    # The start-at-login link cannot be made (a file where its folder goes): after the unit was written.
    wants = home / ".config" / "systemd" / "user" / "default.target.wants"
    wants.parent.mkdir(parents=True)
    wants.write_text("not a folder")
    before = _tree(home)
    failed = meter("service", "install", "--no-start")
    assert failed.code == 1 and "cannot install the service" in failed.err and "nothing changed" in failed.err
    assert failed.err.count("\n") == 1
    assert _tree(home) == before
    # An update that fails keeps the service that was installed, whole.
    wants.unlink()
    assert meter("service", "install", "--no-start").code == 0
    installed = _tree(home)
    (wants / "taskmeter.service").unlink()
    (wants / "taskmeter.service").mkdir()  # in the way of the link
    assert meter("service", "install", "--no-start", "--port", "9912").code == 1
    (wants / "taskmeter.service").rmdir()
    assert _tree(home) == {name: text for name, text in installed.items() if not name.endswith("wants/taskmeter.service")}


def test_a_file_not_ours_is_never_overwritten(meter, home):
    unit = home / ".config" / "systemd" / "user" / "taskmeter.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/usr/bin/someone-else\n")
    result = meter("service", "install", "--no-start")
    assert result.code == 1 and "is not taskmeter's" in result.err
    assert unit.read_text() == "[Service]\nExecStart=/usr/bin/someone-else\n"
    assert meter("service", "uninstall").out.strip() == "no taskmeter service is installed" and unit.exists()


@pytest.mark.e2e  # a real proxy on the service's database
@pytest.mark.e2e  # runs the unit's proxy
def test_status_and_doctor_say_whether_the_service_is_installed_and_running(meter, home, tmp_path, db_path, monkeypatch):
    monkeypatch.chdir(home)  # doctor also checks the hooks of the repository it runs in: none here
    status = meter("status")
    assert "Service: not installed (`meter service install` keeps the proxy running, from login on)" in status.out
    assert "start one with `meter start`, or keep one running with `meter service install`" in status.out
    doctor = meter("doctor")
    assert "ok    service   not installed" in doctor.out
    # The same advice from both (one definition).
    assert "start one with `meter start`, or keep one running with `meter service install`" in doctor.out

    port = str(_free_port())
    assert meter("service", "install", "--no-start", "--port", port).code == 0
    status = meter("status", "--json")
    service = json.loads(status.out)["service"]
    assert service["installed"] is True and service["ok"] is False and "no proxy runs" in service["detail"]
    assert "FAIL  service   installed" in meter("doctor").out
    down = meter("service", "status")
    assert down.code == 1 and down.out.startswith("service: installed (") and "starts at login: yes" in down.out
    unit = (home / ".config/systemd/user/taskmeter.service").read_text()
    argv, environment = _unit_command(unit)
    process = subprocess.Popen(argv, env={**os.environ, **environment}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while "started outside it" not in (line := meter("status").out):
            assert time.monotonic() < deadline, line
            time.sleep(0.1)
        assert f"pid {process.pid}" in line  # not started by systemd: its cgroup does not name the unit
        said = meter("service", "status", "--json")
        assert said.code == 0
        state = json.loads(said.out)
        assert state["installed"] and state["pid"] == process.pid and state["starts_at_login"] is True
        assert state["database"] == str(db_path)
        # Installing again does not start a second proxy beside one started outside the service.
        again = meter("service", "install", "--port", port)
        assert again.code == 0 and "already installed" in again.out
        assert f"not started now: a proxy started outside the service (pid {process.pid}) records to {db_path}" in again.out
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    meter("service", "uninstall")
    assert "Service: not installed" in meter("status").out
    assert meter("service", "status").code == 1


def _start_the_units_proxy(meter, home, db_path):
    """The unit's ExecStart run as its manager would, once `meter status` sees it record."""
    argv, environment = _unit_command((home / ".config/systemd/user/taskmeter.service").read_text())
    process = subprocess.Popen(argv, env={**os.environ, **environment}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while f"pid {process.pid}" not in (line := meter("status").out):
        assert process.poll() is None and time.monotonic() < deadline, line
        time.sleep(0.1)
    return process


@pytest.mark.e2e  # runs the unit's proxy
def test_meter_stop_says_when_the_service_s_proxy_stays_down_until_login(meter, home, db_path, monkeypatch):
    """A proxy the service runs exits cleanly on `meter stop`, which Restart=on-failure
    does not restart: stop says so, and how to start it again. Whether systemd runs a
    process is read from its cgroup, which a test cannot give a process here: the
    cgroup reading is replaced, for the second proxy, by its answer under systemd."""
    from taskmeter import service

    assert meter("service", "install", "--no-start", "--port", str(_free_port())).code == 0
    outside = _start_the_units_proxy(meter, home, db_path)
    stopped = meter("stop")
    assert outside.wait(30) == 0 and f"meter proxy (pid {outside.pid}) stopped" in stopped.out
    assert "the user service ran it" not in stopped.out  # started outside the service
    under_systemd = _start_the_units_proxy(meter, home, db_path)
    monkeypatch.setattr(service, "started_by_service", lambda pid: pid == under_systemd.pid)
    stopped = meter("stop")
    assert under_systemd.wait(30) == 0
    assert "the user service ran it: it stays stopped until your next login" in stopped.out
    assert "`meter service install` starts it again now" in stopped.out
    meter("service", "uninstall")


def test_a_service_for_another_database_is_named(meter, home, tmp_path, monkeypatch):
    assert meter("service", "install", "--no-start", "--db", str(tmp_path / "other.db")).code == 0
    status = meter("status")
    assert f"Service: installed for {tmp_path / 'other.db'}, not this database" in status.out


def test_a_service_whose_interpreter_is_gone_is_broken(meter, home, db_path, monkeypatch):
    monkeypatch.chdir(home)  # doctor also checks the hooks of the repository it runs in: none here
    assert meter("service", "install", "--no-start").code == 0
    unit = home / ".config" / "systemd" / "user" / "taskmeter.service"
    gone = str(home / "deleted-clone" / ".venv" / "bin" / "python")
    unit.write_text(unit.read_text().replace(f"ExecStart={_unit_command(unit.read_text())[0][0]} ", f"ExecStart={gone} "))
    said = f"broken: its interpreter {gone} no longer exists: reinstall with `meter service install`"
    assert f"Service: {said}" in meter("status").out
    assert f"FAIL  service   {said}" in meter("doctor").out
    assert meter("service", "install", "--no-start").code == 0  # the repair it names
    assert "Service: installed (" in meter("status").out


def test_a_service_file_edited_beyond_reading_is_named_and_can_be_rewritten(meter, home, monkeypatch):
    monkeypatch.chdir(home)
    assert meter("service", "install", "--no-start").code == 0
    unit = home / ".config" / "systemd" / "user" / "taskmeter.service"
    unit.write_text(unit.read_text().replace("ExecStart=", "#ExecStart="))
    said = f"{unit} cannot be read: `meter service install` writes it again"
    status = meter("status")
    assert status.code == 0 and f"Service: {said}" in status.out
    assert f"FAIL  service   {said}" in meter("doctor").out
    assert meter("service", "install", "--no-start").code == 0
    assert "ExecStart=" in unit.read_text().replace("#ExecStart=", "")
    assert meter("service", "uninstall").code == 0 and _tree(home) == {}
