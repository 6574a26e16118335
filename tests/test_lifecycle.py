"""`meter start` / `meter stop` / `meter status`: the proxy in the background,
with its log and pidfile in the user's state folder."""

import json
import os
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest

from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import VENV_BIN, write_config

pytestmark = pytest.mark.e2e

PLAIN = next(f for f in ALL if f.name == "openai/chat_nonstream_toolcall")


def test_start_status_stop(tmp_path):
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "METER_DB": str(tmp_path / "meter.db")}

    def meter(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "meter"), *args], capture_output=True, text=True, timeout=60, env=env)

    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=PLAIN.body)
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
        env["METER_CONFIG"] = str(config)
        started = meter("start", "--port", "0")
        assert started.returncode == 0, started.stderr
        assert "meter proxy started: pid" in started.stdout
        try:
            status = json.loads(meter("status", "--json").stdout)
            (proxy,) = status["proxies"]
            assert status["log"].startswith(str(tmp_path / "state")) and status["pidfile"].endswith(".pid")
            assert open(status["pidfile"]).read().strip() == str(proxy["pid"])
            assert "in the background" in meter("status").stdout
            response = httpx.post(f"http://{proxy['listen']}/openai/v1/chat/completions", json={"model": "m", "messages": []})
            assert response.status_code == 200
            deadline = time.monotonic() + 5
            while response.headers["x-meter-interaction-id"] not in open(status["log"]).read() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert response.headers["x-meter-interaction-id"] in open(status["log"]).read()  # the live view, in the log
            again = meter("start", "--port", "0")
            assert again.returncode == 1 and "already records" in again.stderr
        finally:
            stopped = meter("stop")
        assert stopped.returncode == 0 and f"pid {proxy['pid']}" in stopped.stdout
    assert not os.path.exists(f"/proc/{proxy['pid']}") or open(f"/proc/{proxy['pid']}/stat").read().split()[2] == "Z"
    after = json.loads(meter("status", "--json").stdout)
    assert after["proxies"] == [] and after["pidfile"] is None
    assert "calls recorded" in open(status["log"]).read()  # the summary at the end
    assert "no meter proxy records to" in meter("stop").stdout


def test_doctor_says_what_is_wrong_and_when_all_is_well(tmp_path):
    from tests.proxy_harness import RunningProxy

    env = {
        k: v for k, v in os.environ.items() if not k.endswith(("_BASE_URL", "_PROXY", "_proxy", "_HOST")) and k != "SSL_CERT_FILE"
    }
    env["METER_DB"] = str(tmp_path / "meter.db")
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {})
    env["METER_CONFIG"] = str(config)

    def doctor(extra: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "meter"), "doctor"], capture_output=True, text=True, timeout=60, env={**env, **(extra or {})}
        )

    down = doctor()
    assert down.returncode == 1
    assert "ok    config" in down.stdout and "ok    database" in down.stdout
    assert "FAIL  proxy     no meter proxy records to" in down.stdout

    proxy = RunningProxy(config, tmp_path / "meter.db")
    try:
        unpointed = doctor()
        assert unpointed.returncode == 1 and "FAIL  shell" in unpointed.stdout and "ok    gateway" in unpointed.stdout
        exports = subprocess.run(
            [str(VENV_BIN / "meter"), "env", "--https-proxy"], capture_output=True, text=True, timeout=60, env=env
        ).stdout
        pointed = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())
        well = doctor(pointed)
        assert well.returncode == 0, well.stdout
        assert "ok    shell" in well.stdout and "ok    ca" in well.stdout and "holds the meter's CA" in well.stdout
        wrong_ca = doctor({**pointed, "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"})
        assert wrong_ca.returncode == 1 and "FAIL  ca" in wrong_ca.stdout
    finally:
        proxy.stop()


# Makes one call, prints its ID, then stays until the file argv[1] names exists
# (an empty name: leaves at once), polling with a deadline rather than sleeping a guess.
CALL_AND_WAIT = (
    "import os, sys, time, httpx\n"
    "r = httpx.post(os.environ['OPENAI_BASE_URL'] + '/chat/completions', json={'model': 'm', 'messages': []})\n"
    "print(r.headers['x-meter-interaction-id'], os.environ['OPENAI_BASE_URL'], flush=True)\n"
    "deadline = time.monotonic() + 60\n"
    "while sys.argv[1] and not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
    "    time.sleep(0.05)\n"
)


def test_meter_run_starts_a_proxy_for_its_command_and_two_runs_share_it(tmp_path):
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "METER_DB": str(tmp_path / "meter.db")}
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=PLAIN.body)
        env["METER_CONFIG"] = str(
            write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"}, port=0)
        )

        def run(task: str, stay_until: str = "") -> subprocess.Popen:
            return subprocess.Popen(
                [
                    str(VENV_BIN / "meter"),
                    "run",
                    "--task",
                    task,
                    "--",
                    sys.executable,
                    "-c",
                    CALL_AND_WAIT,
                    stay_until,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )

        release = tmp_path / "release-first"
        first = run("P6-001", str(release))  # starts the proxy, and keeps running until the second is done
        first_line = first.stdout.readline().split()
        second = run("P6-002")  # joins it
        second_out, second_err = second.communicate(timeout=60)
        assert second.returncode == 0, second_err
        second_line = second_out.split()
        status = json.loads(
            subprocess.run([str(VENV_BIN / "meter"), "status", "--json"], capture_output=True, text=True, env=env).stdout
        )
        assert len(status["proxies"]) == 1  # the second run did not stop the first's proxy
        release.touch()
        assert first.wait(60) == 0
    assert first_line[1].split("/t/")[0] == second_line[1].split("/t/")[0]  # one proxy for both
    db = sqlite3.connect(tmp_path / "meter.db")
    tasks_of = dict(db.execute("SELECT id, task_id FROM interactions").fetchall())
    db.close()
    assert tasks_of == {first_line[0]: "P6-001", second_line[0]: "P6-002"}
    after = json.loads(
        subprocess.run([str(VENV_BIN / "meter"), "status", "--json"], capture_output=True, text=True, env=env).stdout
    )
    assert after["proxies"] == []  # the last run to leave stopped the proxy it started


def test_meter_run_uses_a_running_proxy_and_leaves_it_running(tmp_path):
    from tests.proxy_harness import RunningProxy

    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "METER_DB": str(tmp_path / "meter.db")}
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=PLAIN.body)
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
        env["METER_CONFIG"] = str(config)
        proxy = RunningProxy(config, tmp_path / "meter.db")
        try:
            result = subprocess.run(
                [str(VENV_BIN / "meter"), "run", "--", sys.executable, "-c", CALL_AND_WAIT, ""],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.split()[1] == f"{proxy.origin}/openai/v1"
            assert proxy.process.poll() is None  # not ours to stop
        finally:
            proxy.stop()
    failing = subprocess.run([str(VENV_BIN / "meter"), "run", "--", "false"], capture_output=True, env=env, timeout=60)
    assert failing.returncode == 1  # the command's exit status
