"""With --host beyond loopback the meter is no open forwarder: a client on the
network may use only the gateway to configured upstreams, unless --allow-from
names its network. The client runs in a network namespace this test makes,
joined to the host by a veth pair with link-local addresses of its own; no
address of the machine's real network is used."""

import json
import os
import subprocess
import sys

import pytest

from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import VENV_BIN, RunningProxy, write_config

HOST_ADDRESS, CLIENT_ADDRESS, NETWORK = "169.254.77.1", "169.254.77.2", "169.254.77.0/30"
PLAIN = next(f for f in ALL if f.name == "openai/chat_nonstream_toolcall")

# Run inside the namespace: the three ways a client could use the meter.
CLIENT = """
import json, sys, httpx
meter, secret_port = sys.argv[1], sys.argv[2]
outcome = {}
gateway = httpx.post(f"http://{meter}/openai/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []})
outcome["gateway"] = gateway.status_code
try:
    forwarded = httpx.get(f"http://127.0.0.1:{secret_port}/", proxy=f"http://{meter}")
    outcome["absolute_form"] = forwarded.status_code
except httpx.HTTPError as exc:
    outcome["absolute_form"] = type(exc).__name__
try:
    tunnel = httpx.get(f"https://127.0.0.1:{secret_port}/", proxy=f"http://{meter}", verify=False)
    outcome["connect"] = tunnel.status_code
except httpx.ProxyError as exc:
    outcome["connect"] = str(exc)
except httpx.HTTPError as exc:
    outcome["connect"] = type(exc).__name__
print(json.dumps(outcome))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def namespace():
    name, host_side = f"meter-test-{os.getpid()}", f"mth{os.getpid() % 100000}"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_side, "type", "veth", "peer", "name", "mtc0", "netns", name)
        _ip("addr", "add", f"{HOST_ADDRESS}/30", "dev", host_side)
        _ip("link", "set", host_side, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{CLIENT_ADDRESS}/30", "dev", "mtc0")
        _ip("netns", "exec", name, "ip", "link", "set", "mtc0", "up")
        yield name
    finally:
        subprocess.run(["ip", "link", "del", host_side], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _from_the_network(namespace: str, proxy: RunningProxy, secret_port: int) -> dict:
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", CLIENT, proxy.address, str(secret_port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _proxy(tmp_path, upstream, *extra: str) -> RunningProxy:
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
    return RunningProxy(config, tmp_path / "meter.db", extra_args=["--host", HOST_ADDRESS, *extra])


def test_a_network_client_may_use_only_the_gateway(tmp_path, namespace):
    with FakeUpstream() as upstream, FakeUpstream() as loopback_only_service:
        upstream.routes["/v1/chat/completions"] = Scenario(body=PLAIN.body)
        loopback_only_service.routes["/"] = Scenario(body=b"secret")
        proxy = _proxy(tmp_path, upstream)
        try:
            outcome = _from_the_network(namespace, proxy, loopback_only_service.port)
        finally:
            proxy.stop()
    assert outcome["gateway"] == 200
    assert outcome["absolute_form"] == 403
    assert "403" in str(outcome["connect"])
    assert loopback_only_service.received == []  # nothing reached the loopback-only service
    assert "clients not on loopback may use only the gateway" in proxy.stderr()


def test_allow_from_lets_a_named_network_use_proxy_mode(tmp_path, namespace):
    with FakeUpstream() as upstream, FakeUpstream() as service:
        upstream.routes["/v1/chat/completions"] = Scenario(body=PLAIN.body)
        service.routes["/"] = Scenario(body=b"fine")
        proxy = _proxy(tmp_path, upstream, "--allow-from", NETWORK)
        try:
            outcome = _from_the_network(namespace, proxy, service.port)
        finally:
            proxy.stop()
    assert outcome["gateway"] == 200 and outcome["absolute_form"] != 403
    assert "may use only the gateway" not in proxy.stderr()


def test_a_malformed_allow_from_is_one_line_and_no_proxy(tmp_path):
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {})
    result = subprocess.run(
        [
            str(VENV_BIN / "meter"),
            "proxy",
            "--config",
            str(config),
            "--db",
            str(tmp_path / "m.db"),
            "--allow-from",
            "10.0.0.0/99",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "--allow-from" in result.stderr
