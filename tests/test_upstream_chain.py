"""Issue 24, behind a corporate proxy: the meter reaches its upstreams through the
HTTPS_PROXY it found when it started (mitmproxy's upstream mode), with that
proxy's credentials, unless it is the meter itself; loopback and NO_PROXY hosts
directly. Through a real `meter proxy`, the official openai SDK, and a loopback
CONNECT proxy standing in for the corporate one (which alone can resolve the
upstream's name)."""

import asyncio
import base64
import socket
import ssl
import threading

import openai
import pytest

from taskmeter.proxy.chain import UpstreamChain, corporate_proxy
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import RunningProxy, write_config
from tests.tls import make_server_tls

CHAT = {f.name: f for f in ALL}["openai/chat_nonstream_toolcall"]
UPSTREAM_NAME = "models.corp.test"  # no DNS knows it: only the corporate proxy reaches it
UPSTREAM_ADDRESS = "127.0.0.2"
CREDENTIALS = ("j.doe", "s3cret:&more")


class ConnectProxy:
    """A corporate proxy on loopback: CONNECT only, Basic credentials required, its own
    name table; it records each tunnel it opens and each request it refuses."""

    def __init__(self, names: dict[str, str], credentials: tuple[str, str]) -> None:
        self._names = names
        self._expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        self.tunnels: list[str] = []
        self.refused: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = dict(line.split(": ", 1) for line in head[1:] if line)
            if method != "CONNECT" or headers.get("Proxy-Authorization", headers.get("proxy-authorization")) != self._expected:
                self.refused.append(head[0])
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            upstream_reader, upstream_writer = await asyncio.open_connection(self._names.get(host, host), int(port))
            self.tunnels.append(target)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def corporate():
    proxy = ConnectProxy({UPSTREAM_NAME: UPSTREAM_ADDRESS}, CREDENTIALS)
    yield proxy
    proxy.close()


@pytest.mark.e2e
def test_calls_pass_through_the_corporate_proxy_and_are_recorded_once(corporate, tmp_path):
    context, ca_path = make_server_tls(tmp_path, None, (UPSTREAM_NAME,))
    with FakeUpstream(tls_context=context, host=UPSTREAM_ADDRESS) as upstream, FakeUpstream() as local:
        upstream.routes["/v1/chat/completions"] = local.routes["/v1/chat/completions"] = Scenario(body=CHAT.body)
        origin = f"https://{UPSTREAM_NAME}:{upstream.port}"
        config = write_config(
            tmp_path / "config.toml",
            tmp_path / "ca",
            {"corp": origin, "local": f"http://127.0.0.1:{local.port}"},
            upstream_ca=str(ca_path),
        )
        user, password = CREDENTIALS
        https_proxy = f"http://{user}:{password.replace(':', '%3A').replace('&', '%26')}@127.0.0.1:{corporate.port}"
        meter = RunningProxy(config, tmp_path / "meter.db", extra_env={"HTTPS_PROXY": https_proxy, "NO_PROXY": ""})
        try:
            banner = meter.wait_for_output("upstream proxy:")
            assert f"http://127.0.0.1:{corporate.port}" in banner and password not in banner
            ask = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

            gateway = openai.OpenAI(base_url=f"{meter.origin}/corp/v1", api_key="sk-test", max_retries=0)
            through_gateway = gateway.chat.completions.with_raw_response.create(**ask)
            assert through_gateway.parse().choices

            bundle = ssl.create_default_context(cafile=tmp_path / "ca" / "ca-bundle.pem")
            proxied = openai.OpenAI(
                base_url=f"{origin}/v1",
                api_key="sk-test",
                max_retries=0,
                http_client=openai.DefaultHttpxClient(proxy=meter.origin, verify=bundle),
            )
            through_proxy_mode = proxied.chat.completions.with_raw_response.create(**ask)
            assert through_proxy_mode.parse().choices

            # A loopback upstream is reached directly: no corporate proxy can reach this machine's loopback.
            direct = openai.OpenAI(base_url=f"{meter.origin}/local/v1", api_key="sk-test", max_retries=0)
            directly = direct.chat.completions.with_raw_response.create(**ask)

            assert corporate.tunnels == [f"{UPSTREAM_NAME}:{upstream.port}"] * 2 and corporate.refused == []
            assert len(upstream.received) == 2 and len(local.received) == 1
            assert all("proxy-authorization" not in {k.lower() for k in r.headers} for r in local.received)
            calls = [through_gateway, through_proxy_mode, directly]
            rows = meter.rows(wait_for=3)
            assert sorted(row["id"] for row in rows) == sorted(call.headers["x-meter-interaction-id"] for call in calls)
            assert [row["provider"] for row in rows] == ["corp", "corp", "local"]
        finally:
            meter.stop()


def test_the_corporate_proxy_is_the_one_found_before_any_meter_env():
    corporate = "http://proxy.corp.example:3128"
    assert corporate_proxy({"HTTPS_PROXY": corporate}, 8877).mode == "upstream:http://proxy.corp.example:3128"
    assert corporate_proxy({"https_proxy": "proxy.corp.example:3128"}, 8877).scheme == "http"
    # A shell `meter env --https-proxy` pointed at a meter: the recorded value is the corporate proxy.
    pointed = {"HTTPS_PROXY": "http://127.0.0.1:8877", "METER_SAVED_HTTPS_PROXY": corporate, "METER_SAVED_NO_PROXY": ".corp"}
    found = corporate_proxy(pointed, 0)
    assert (found.host, found.port, found.no_proxy) == ("proxy.corp.example", 3128, ".corp")
    assert corporate_proxy({"HTTPS_PROXY": "http://127.0.0.1:8877", "METER_WAS_UNSET": "HTTPS_PROXY"}, 0) is None
    # The meter itself, or any meter's task form: never chained to.
    assert corporate_proxy({"HTTPS_PROXY": "http://localhost:8877"}, 8877) is None
    assert corporate_proxy({"HTTPS_PROXY": "http://task:P1-001@127.0.0.1:9000"}, 8877) is None
    assert corporate_proxy({"HTTPS_PROXY": "socks5://proxy.corp.example:1080"}, 8877) is None
    assert corporate_proxy({}, 8877) is None
    authorized = corporate_proxy({"HTTPS_PROXY": "https://j.doe:s3cret%3A%26more@proxy.corp.example"}, 8877)
    assert (authorized.scheme, authorized.port) == ("https", 443)
    assert base64.b64decode(authorized.authorization.removeprefix("Basic ")) == b"j.doe:s3cret:&more"


def test_loopback_and_no_proxy_hosts_are_reached_directly():
    found = corporate_proxy({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": ".corp.example, intranet,10.0.0.0/8,*.lab"}, 1)
    chain = UpstreamChain(found)
    # As Python's urllib and curl read it: an entry, with or without `.` or `*.`, names the domain and its subdomains.
    direct = ["127.0.0.1", "localhost", "::1", "api.corp.example", "corp.example", "intranet", "10.1.2.3", "gpu.lab", "lab"]
    through = ["api.openai.com", "notcorp.example", "intranet.evil.com", "11.0.0.1", "glab"]
    assert [host for host in direct + through if chain._is_direct(host)] == direct
    everything = UpstreamChain(corporate_proxy({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}, 1))
    assert everything._is_direct("api.openai.com")


@pytest.mark.e2e
def test_an_https_proxy_that_is_the_meter_itself_is_not_chained_to(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=CHAT.body)
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
        # A shell `meter env --https-proxy` pointed at this very meter, with nothing recorded before it.
        itself = {"HTTPS_PROXY": f"http://localhost:{port}", "METER_WAS_UNSET": "HTTPS_PROXY"}
        meter = RunningProxy(config, tmp_path / "meter.db", extra_env=itself, extra_args=["--port", str(port)])
        try:
            client = openai.OpenAI(base_url=f"{meter.origin}/openai/v1", api_key="sk-test", max_retries=0)
            answer = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            assert [row["id"] for row in meter.rows()] == [answer.headers["x-meter-interaction-id"]]
            banner = [line for _, line in meter.live_view]  # read up to its last line when the proxy started
            assert any(line.startswith("  dashboard:") for line in banner)
            assert not any("upstream proxy" in line for line in banner)
        finally:
            meter.stop()
