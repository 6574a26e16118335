"""Hostile drills, secrets and other users: terminal escapes from the wire, and
the modes of every file and folder the meter makes."""

import grp
import json
import os
import pty
import re
import select
import signal
import stat
import subprocess
import termios
import time
from pathlib import Path

import httpx
import pytest

from taskmeter.store import alerts, connection
from tests.fake_upstream import FakeUpstream, Scenario
from tests.meter_forks import METER
from tests.proxy_harness import VENV_BIN, RunningProxy, write_config

pytestmark = pytest.mark.e2e

# What a hostile upstream (or a prompt it echoes) puts where the terminal shows it:
# clear the screen, set the window title, a C1 CSI, a carriage return that overwrites the line.
CLEAR, TITLE, C1_CSI = "\x1b[2J", "\x1b]0;pwned\x07", "\x9b31m"
HOSTILE_MODEL = f"gpt-4o-mini{CLEAR}{TITLE}"
HOSTILE_TEXT = f"first line\n\tindented{CLEAR}{TITLE}{C1_CSI}\rend"
HOSTILE_ERROR = f"overloaded{CLEAR}{TITLE}\nsecond line"
CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# The only escapes a terminal may get: rich's own colours and bold (SGR), never one from the wire.
SGR = re.compile(r"\x1b\[[0-9;]*m")


def _meter(db_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The real `meter` command, its output to no terminal, which must succeed: a fork of a
    process that imported the CLI once (tests/meter_forks.py)."""
    done = METER.run([*args, "--db", str(db_path)], timeout=60)
    assert done.returncode == 0, (args, done.stderr)
    return done


def _meter_on_a_terminal(db_path: Path, *args: str) -> str:
    """The real `meter` command with a terminal (a pty) as its output: tables, colours and all."""
    leader, follower = pty.openpty()
    modes = termios.tcgetattr(follower)
    modes[1] &= ~termios.OPOST  # as written: no \n turned into \r\n
    termios.tcsetattr(follower, termios.TCSANOW, modes)
    env = {**os.environ, "COLUMNS": "200", "TERM": "xterm-256color"}
    process = subprocess.Popen(
        [str(VENV_BIN / "meter"), *args, "--db", str(db_path)], stdout=follower, stderr=follower, stdin=follower, env=env
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the pty is closed once the command exits
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(60) == 0
    return output.decode()


def _assert_printable(output: str, what: str) -> None:
    """No control character but newline and tab, and no escape but rich's own SGR."""
    found = CONTROLS.search(SGR.sub("", output))
    assert found is None, f"{what}: {found and repr(output[max(0, found.start() - 40) : found.end() + 40])}"


def _follow_lines(db_path: Path, expected_ids: list[str]) -> str:
    """`meter log --follow` until it has shown every call of `expected_ids`, then Ctrl-C."""
    process = subprocess.Popen(
        [str(VENV_BIN / "meter"), "log", "--follow", "-n", "10", "--db", str(db_path)], stdout=subprocess.PIPE, text=False
    )
    output = b""
    deadline = time.monotonic() + 20
    try:
        while not all(call_id.encode() in output for call_id in expected_ids) and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                output += os.read(process.stdout.fileno(), 65536)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # Ctrl-C did not stop it: fail, and leave no process behind
            process.kill()
            process.wait()
            raise
    return output.decode()


def test_terminal_escapes_from_the_wire_reach_no_terminal_and_json_keeps_them(tmp_path):
    answer = {
        "object": "chat.completion",
        "model": HOSTILE_MODEL,
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        "choices": [{"message": {"role": "assistant", "content": HOSTILE_TEXT}}],
    }
    db_path = tmp_path / "meter.db"
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=json.dumps(answer).encode())
        upstream.routes["/v1/failing/chat/completions"] = Scenario(
            body=json.dumps({"error": {"message": HOSTILE_ERROR}}).encode(), status=500
        )
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
        proxy = RunningProxy(config, db_path)
        try:
            request = {"model": HOSTILE_MODEL, "messages": [{"role": "user", "content": f"say{TITLE} it"}]}
            answered = httpx.post(f"{proxy.origin}/t/P1-001/openai/v1/chat/completions", json=request, timeout=10)
            failed = httpx.post(f"{proxy.origin}/t/P1-001/openai/v1/failing/chat/completions", json=request, timeout=10)
            rows = proxy.rows(wait_for=2)
            ids = [answered.headers["x-meter-interaction-id"], failed.headers["x-meter-interaction-id"]]
            deadline = time.monotonic() + 10  # the live view prints a line per stored call
            while sum(any(i in line for _, line in proxy.live_view) for i in ids) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            proxy.stop()
    assert answered.status_code == 200 and failed.status_code == 500
    # Every call stored once, with the exact values that came.
    assert sorted(row["id"] for row in rows) == sorted(ids)
    stored = {row["id"]: row for row in rows}
    assert stored[ids[0]]["model"] == HOSTILE_MODEL and HOSTILE_ERROR.split("\n")[0] in stored[ids[1]]["error"]

    # The proxy's live view: a line for each call, and nothing a terminal would obey.
    live = "\n".join(line for _, line in proxy.live_view)
    assert all(call_id in live for call_id in ids)
    assert "gpt-4o-mini\ufffd[2J\ufffd]0;pwned\ufffd" in live
    _assert_printable(live, "the live view")
    _assert_printable(proxy.stderr(), "the proxy's log")

    # meter log and meter show, piped and on a terminal; meter log --follow.
    for args in (["log"], ["show", ids[0]], ["show", ids[1]]):
        _assert_printable(_meter(db_path, *args).stdout, f"meter {' '.join(args)} piped")
        on_terminal = _meter_on_a_terminal(db_path, *args)
        _assert_printable(on_terminal, f"meter {' '.join(args)} on a terminal")
    shown = _meter(db_path, "show", ids[0]).stdout
    # The body keeps its lines and its indent (rich turns the tab into spaces); the escapes are shown, not obeyed.
    response = shown.split("--- response ---\n")[1].splitlines()
    assert response[0] == "first line"
    assert response[1].lstrip() == "indented\ufffd[2J\ufffd]0;pwned\ufffd\ufffd31m\ufffdend" and response[1][0].isspace()
    follow = _follow_lines(db_path, ids)
    assert all(call_id in follow for call_id in ids)
    _assert_printable(follow, "meter log --follow")

    # --json keeps the exact stored values, escaped as JSON escapes them.
    logged = json.loads(_meter(db_path, "log", "--json").stdout)
    assert {call["interaction_id"]: call["model"] for call in logged}[ids[0]] == HOSTILE_MODEL
    as_json = _meter(db_path, "show", ids[0], "--json").stdout
    assert json.loads(as_json)["text"]["response"] == HOSTILE_TEXT
    assert CONTROLS.search(as_json.replace("\n", "")) is None  # even the C1 CSI is \u009b in the JSON text


def test_titles_notes_and_alerts_are_printed_without_their_escapes(tmp_path):
    db_path = tmp_path / "meter.db"
    _meter(db_path, "set-task", "P1-002", "--title", f"fix it{TITLE}{C1_CSI}")
    _meter(db_path, "phase", "P1", "--surprise", f"it worked{CLEAR}")
    db = connection.connect(db_path)
    alerts.raise_alert(db, "loop", "loop:s1:x", f"loop: session s1{CLEAR} sent 10 calls")
    db.close()
    commands = [["tasks"], ["alerts"], ["status"], ["task", "P1-002"], ["report", "task", "P1-002"], ["phase", "P1"]]
    commands += [["report", "task", "P1-002", "--format", "markdown"], ["report", "phase", "P1"]]
    for args in commands:
        piped = _meter(db_path, *args).stdout
        assert "\ufffd" in piped, args  # the title or the message is there, its escape shown
        _assert_printable(piped, f"meter {' '.join(args)} piped")
        _assert_printable(_meter_on_a_terminal(db_path, *args), f"meter {' '.join(args)} on a terminal")
    assert json.loads(_meter(db_path, "alerts", "--json").stdout)[0]["message"] == f"loop: session s1{CLEAR} sent 10 calls"
    # The status line, and reports as JSON and CSV: JSON escapes the title's controls, keeping its exact value.
    for args in (["statusline"], ["report", "task", "P1-002", "--format", "csv"], ["report", "task", "P1-002", "--json"]):
        _assert_printable(_meter(db_path, *args).stdout, f"meter {' '.join(args)}")
    report = json.loads(_meter(db_path, "report", "task", "P1-002", "--json").stdout)
    assert report["title"] == f"fix it{TITLE}{C1_CSI}"


def _private_environment(root: Path) -> dict:
    """The user's folders (data, state, config, cache) under `root`, none of them made yet."""
    env = {key: value for key, value in os.environ.items() if key not in ("METER_DB", "METER_CONFIG", "HTTPS_PROXY")}
    for name in ("DATA", "STATE", "CONFIG", "CACHE"):
        env[f"XDG_{name}_HOME"] = str(root / name.lower())
    return env


def _with_umask_000(env: dict, *args: str, **popen) -> subprocess.Popen:
    """`meter ARGS` as a user whose umask takes no bit away."""
    return subprocess.Popen(["sh", "-c", 'umask 000 && exec "$@"', "sh", str(VENV_BIN / "meter"), *args], env=env, **popen)


def _run_with_umask_000(env: dict, *args: str) -> str:
    process = _with_umask_000(env, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, (args, out, err)
    return out


def test_every_file_and_folder_a_run_makes_is_the_users_alone_whatever_the_umask(tmp_path):
    root = tmp_path / "home"
    root.mkdir(mode=0o700)
    env = _private_environment(root)
    answer = {"object": "chat.completion", "model": "gpt-4o-mini", "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    answer["choices"] = [{"message": {"role": "assistant", "content": "hi"}}]
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=json.dumps(answer).encode())
        _run_with_umask_000(env, "config", "init")
        config = root / "config" / "taskmeter" / "config.toml"
        config.write_text(f'[proxy]\nport = 0\n[upstreams]\nopenai = "http://127.0.0.1:{upstream.port}"\n')  # its mode stays
        started = _run_with_umask_000(env, "start")
        listen = started.split(" on ")[1].split(",")[0]
        try:
            reply = httpx.post(f"http://{listen}/openai/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []})
            assert reply.status_code == 200
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not json.loads(_run_with_umask_000(env, "log", "--json")):
                time.sleep(0.1)
            dashboard = _with_umask_000(env, "ui", "--port", "0", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                url = dashboard.stdout.readline().split("dashboard on ")[1].split()[0]
                assert httpx.get(url, follow_redirects=True).status_code == 200
                status = json.loads(_run_with_umask_000(env, "status", "--json"))
            finally:
                dashboard.send_signal(signal.SIGINT)
                dashboard.wait(10)
        finally:
            _run_with_umask_000(env, "stop")
        _run_with_umask_000(env, "run", "--", "true")  # a proxy started for a run, and stopped after it
    assert status["task"] is None and status["pidfile"] and status["log"] and status["dashboard"] == url
    logged = json.loads(_run_with_umask_000(env, "log", "--json"))
    assert [call["interaction_id"] for call in logged] == [reply.headers["x-meter-interaction-id"]]
    made = sorted(root.rglob("*"))
    expected = [
        root / "data" / "taskmeter" / "meter.db",
        root / "data" / "taskmeter" / "mitmproxy" / "mitmproxy-ca.pem",
        root / "data" / "taskmeter" / "mitmproxy" / "ca-bundle.pem",
        Path(status["log"]),
        config,
    ]
    assert set(expected) <= set(made) and Path(status["log"]).parent.parent == root / "state"
    loose = {str(path.relative_to(root)): f"{stat.S_IMODE(path.lstat().st_mode):04o}" for path in made}
    assert {path: mode for path, mode in loose.items() if int(mode, 8) & 0o077} == {}


def _check_config(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "meter"), "proxy", "--port", "0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_config_other_users_may_change_is_refused_in_one_line(tmp_path):
    """Another account that could edit the config could set alert_command (run as the user)
    or send the user's API keys to its own upstream: the meter refuses the config instead."""
    folder = tmp_path / "shared"
    folder.mkdir()
    config = folder / "config.toml"
    marker = tmp_path / "ran"
    config.write_text(f'[alerts]\nalert_command = ["touch", "{marker}"]\n[proxy]\nport = 0\n')
    own_group = os.getgid()
    shared_group = grp.getgrnam("staff").gr_gid  # not named after the user: others may be in it
    for file_mode, folder_mode, owner, group, refusal in [
        (0o664, 0o700, os.getuid(), shared_group, f"other users may change {config} (mode 0664); refused: `chmod go-w {config}`"),
        (0o646, 0o700, os.getuid(), own_group, f"other users may change {config} (mode 0646)"),
        (0o600, 0o777, os.getuid(), own_group, f"other users may change {folder} (mode 0777)"),
        (0o600, 0o700, 65534, own_group, f"{config} belongs to another user (uid 65534); refused"),
    ]:
        config.chmod(file_mode)
        folder.chmod(folder_mode)
        os.chown(config, owner, group)
        refused = _check_config(config)
        assert refused.returncode == 1 and refusal in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
        assert refused.stdout == ""  # the proxy never started
    # Readable by others is fine, so is a sticky folder such as /tmp (nobody else can change
    # the file), and so is the user's own private group, which umask 002 assumes.
    os.chown(config, os.getuid(), own_group)
    config.chmod(0o664)
    folder.chmod(0o1777)
    accepted = subprocess.run(
        [str(VENV_BIN / "meter"), "config", "check", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert accepted.returncode == 0, accepted.stderr
    assert not marker.exists()
