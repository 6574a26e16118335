"""With --host beyond loopback the meter is no open forwarder: a client on the
network may use only the gateway, to the upstreams the config file names (never
a shipped default such as the loopback-only Ollama), unless --allow-from names
its network; even then, this machine's loopback services stay out of reach. The client runs in a network namespace this test makes,
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

pytestmark = pytest.mark.e2e

HOST_ADDRESS, CLIENT_ADDRESS, NETWORK = "169.254.77.1", "169.254.77.2", "169.254.77.0/30"
PLAIN = next(f for f in ALL if f.name == "openai/chat_nonstream_toolcall")

# Run inside the namespace: the ways a client could use the meter.
CLIENT = """
import http.client, json, sys, httpx
meter, loopback_port, network_service = sys.argv[1], sys.argv[2], sys.argv[3]
body = {"model": "gpt-4o-mini", "messages": []}
outcome = {}
outcome["gateway"] = httpx.post(f"http://{meter}/openai/v1/chat/completions", json=body).status_code
# Shipped default upstreams the config file does not name, such as the loopback-only Ollama.
for name in ("ollama", "anthropic"):
    answer = httpx.post(f"http://{meter}/{name}/api/chat", json=body)
    outcome[name] = [answer.status_code, answer.json()["error"]["message"]]
try:
    outcome["absolute_form"] = httpx.post(f"http://127.0.0.1:{loopback_port}/", proxy=f"http://{meter}").status_code
except httpx.HTTPError as exc:
    outcome["absolute_form"] = type(exc).__name__

def tunnel(target):
    host, port = meter.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.set_tunnel(target)
    try:
        connection.request("POST", "/", body=b"")
        return connection.getresponse().read().decode()
    except OSError as exc:
        return str(exc)
    finally:
        connection.close()

outcome["connect_loopback"] = tunnel(f"127.0.0.1:{loopback_port}")
outcome["connect_network"] = tunnel(network_service)
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


def _from_the_network(namespace: str, proxy: RunningProxy, loopback_port: int, network_service: str) -> dict:
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", CLIENT, proxy.address, str(loopback_port), network_service],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _proxy(tmp_path, upstream, *extra: str) -> RunningProxy:
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
    return RunningProxy(config, tmp_path / "meter.db", extra_args=["--host", HOST_ADDRESS, *extra])


def _warning(proxy: RunningProxy) -> str:
    return next(line for line in proxy.stderr().splitlines() if line.startswith("meter: warning: listening on"))


def _network_run(tmp_path, namespace: str, *extra: str) -> tuple[dict, RunningProxy, FakeUpstream]:
    """What the client in `namespace` got, the proxy, and the loopback-only service it tried."""
    with (
        FakeUpstream() as upstream,
        FakeUpstream() as loopback_only_service,
        FakeUpstream(host=HOST_ADDRESS) as network_service,
    ):
        upstream.routes["/v1/chat/completions"] = Scenario(body=PLAIN.body)
        loopback_only_service.routes["/"] = Scenario(body=b"secret")
        network_service.routes["/"] = Scenario(body=b"fine")
        proxy = _proxy(tmp_path, upstream, *extra)
        try:
            service = f"{HOST_ADDRESS}:{network_service.port}"
            outcome = _from_the_network(namespace, proxy, loopback_only_service.port, service)
        finally:
            proxy.stop()
    return outcome, proxy, loopback_only_service


def _refused_defaults(outcome: dict) -> None:
    for name in ("ollama", "anthropic"):
        status, message = outcome[name]
        assert status == 404 and f"upstream {name!r} is served only to clients on this machine" in message


def test_a_network_client_may_use_only_the_gateway_to_upstreams_the_config_names(tmp_path, namespace):
    outcome, proxy, loopback_only_service = _network_run(tmp_path, namespace)
    assert outcome["gateway"] == 200
    _refused_defaults(outcome)
    assert outcome["absolute_form"] == 403
    assert "403" in outcome["connect_loopback"] and "403" in outcome["connect_network"]
    assert loopback_only_service.received == []  # nothing reached the loopback-only service
    warning = _warning(proxy)
    assert "clients not on loopback may use only the gateway to /openai/ (the [upstreams] your config file names)" in warning
    assert "/ollama/" not in warning and "/anthropic/" not in warning


def test_allow_from_lets_a_named_network_use_proxy_mode_but_not_loopback_services(tmp_path, namespace):
    outcome, proxy, loopback_only_service = _network_run(tmp_path, namespace, "--allow-from", NETWORK)
    assert outcome["gateway"] == 200
    _refused_defaults(outcome)
    assert outcome["connect_network"] == "fine"  # an HTTPS-proxy tunnel to a host of the network
    assert outcome["absolute_form"] == 403 and "403" in outcome["connect_loopback"]
    assert loopback_only_service.received == []
    warning = _warning(proxy)
    assert f"those in {NETWORK} may also use it as an HTTPS proxy" in warning and "/openai/" in warning
    assert "may use only the gateway" not in warning


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
