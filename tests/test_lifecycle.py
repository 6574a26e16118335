"""`meter start` / `meter stop` / `meter status`: the proxy in the background,
with its log and pidfile in the user's state folder."""

import json
import os
import subprocess
import time

import httpx

from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import VENV_BIN, write_config

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
