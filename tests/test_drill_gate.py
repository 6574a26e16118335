"""Calls that escaped metering through the gateway, and the proxy's exposure: the
second round of hostile drills, each through a real `meter proxy` on loopback
with the loopback fake upstream (and, for web pages, Debian's chromium)."""

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest

from taskmeter.store import connection
from tests.fake_upstream import SHUTDOWN_POLL_SECONDS, FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import VENV_BIN, RunningProxy, write_config
from tests.tls import make_server_tls

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}
CHAT_BODY = FIXTURE["openai/chat_nonstream_toolcall"].body
GEMINI_BODY = FIXTURE["gemini/nonstream_basic"].body
CHAT_REQUEST = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
GEMINI_REQUEST = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()


@pytest.fixture(scope="module")
def shared_upstream():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def upstream(shared_upstream):
    shared_upstream.forget()
    return shared_upstream


def _config(tmp_path, upstream, **proxy_settings):
    origin = f"http://127.0.0.1:{upstream.port}"
    return write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": origin, "gemini": origin}, **proxy_settings)


def _proxy(tmp_path, upstream, **proxy_settings) -> RunningProxy:
    return RunningProxy(_config(tmp_path, upstream, **proxy_settings), tmp_path / "meter.db")


@pytest.fixture(scope="module")
def shared_proxy(tmp_path_factory, shared_upstream):
    running = _proxy(tmp_path_factory.mktemp("gate"), shared_upstream)
    yield running
    running.stop()


@pytest.fixture
def proxy(shared_proxy, upstream):
    """The module's proxy (and upstream), holding only what this test makes."""
    shared_proxy.begin_test()
    return shared_proxy


def _send(proxy: RunningProxy, method: str, target: str, body: bytes = b"", **headers: str):
    """One request exactly as written (http.client leaves the target alone, unlike
    httpx, which normalises paths): (status, headers, parsed JSON or raw body)."""
    host, port = proxy.address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        headers.setdefault("Host", proxy.address)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            connection.putheader(name.replace("_", "-"), value)
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    try:
        data = json.loads(data)
    except ValueError:
        pass
    return response.status, response.headers, data


def _stored_with(proxy: RunningProxy, last_id: str) -> list[dict]:
    """Every stored call, once the call made last is stored: calls are handed over
    and stored in order, so any call made before it that was metered is there too."""
    deadline = time.monotonic() + 10
    while True:
        rows = proxy.rows(wait_for=0)
        if last_id in {row["id"] for row in rows} or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def _query(proxy: RunningProxy, sql: str) -> list[tuple]:
    db = connection.connect(proxy.db_path)
    try:
        return [tuple(row) for row in db.execute(sql)]
    finally:
        db.close()


def _open_fds(proxy: RunningProxy) -> int:
    return len(os.listdir(f"/proc/{proxy.process.pid}/fd"))


class _PeakFds:
    """The most files the proxy held open at once while the block ran, sampled."""

    def __init__(self, proxy: RunningProxy) -> None:
        self._proxy = proxy
        self.before = self.peak = _open_fds(proxy)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, _open_fds(self._proxy))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()

    def settled(self, slack: int = 4) -> bool:
        """Back to what it held before (give or take a kept-alive connection) within 5 s."""
        deadline = time.monotonic() + 5
        while _open_fds(self._proxy) > self.before + slack:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


# ---------------------------------------------------------------- encoded paths

# (what the client sends, the path the upstream receives and answers: a real server decodes it)
ENCODED_CHAT = [
    ("/openai/v1/chat/%63ompletions", "/v1/chat/%63ompletions"),
    ("/openai/v1/chat/c%6fmpletions", "/v1/chat/c%6fmpletions"),
    ("/openai/v1/chat/%43OMPLETIONS", "/v1/chat/%43OMPLETIONS"),
    ("/openai/v1/chat%2Fcompletions", "/v1/chat%2Fcompletions"),
    ("/openai/v1/./chat/completions", "/v1/./chat/completions"),
    ("/openai/v1/x/../chat/completions", "/v1/x/../chat/completions"),
    ("/openai/v1/models/%2E%2E/chat/completions", "/v1/models/%2E%2E/chat/completions"),
    ("/openai/v1/chat/completions/", "/v1/chat/completions/"),
    ("/openai/v1/chat/completions;v=1", "/v1/chat/completions;v=1"),
    ("/openai/v1//chat//completions", "/v1//chat//completions"),
    ("/openai/%761/chat/completions", "/%761/chat/completions"),
    ("/%6Fpenai/v1/chat/completions", "/v1/chat/completions"),
]


def test_percent_encoded_and_dotted_paths_are_metered_as_the_upstream_reads_them(proxy, upstream):
    sent = []
    for target, received in ENCODED_CHAT:
        upstream.routes[received] = Scenario(body=CHAT_BODY)
        sent.append((target, "openai", None))
    # Gemini's method as Python's quote() writes it, and the /t/<TASK>/ prefix encoded.
    upstream.routes["/v1beta/models/gemini-2.0-flash%3AgenerateContent"] = Scenario(body=GEMINI_BODY)
    sent.append(("/gemini/v1beta/models/gemini-2.0-flash%3AgenerateContent", "gemini", None))
    sent.append(("/%74/DRILL-7/openai/v1/chat/%63ompletions", "openai", "DRILL-7"))
    sent.append(("/t/DRILL%2D8/%6Fpenai/v1/chat/completions", "openai", "DRILL-8"))

    # Decoded once, as servers do: %2563 is the literal "%63", which the upstream does not serve.
    status, headers, _ = _send(proxy, "POST", "/openai/v1/chat/%2563ompletions", CHAT_REQUEST)
    assert status == 404 and "x-meter-interaction-id" not in headers

    ids = {}
    last = None
    for target, provider, task in sent:
        body = GEMINI_REQUEST if provider == "gemini" else CHAT_REQUEST
        status, headers, _ = _send(proxy, "POST", target, body, Content_Type="application/json")
        assert status == 200, target
        assert headers["x-meter-interaction-id"], f"{target} was not metered"
        last = headers["x-meter-interaction-id"]
        ids[last] = (target, provider, task)

    rows = _stored_with(proxy, last)
    assert sorted(row["id"] for row in rows) == sorted(ids)  # each stored exactly once
    for row in rows:
        target, provider, task = ids[row["id"]]
        assert row["provider"] == provider, target
        assert row["task_id"] == task, target
        assert row["input_total"] and row["output_total"], f"{target}: no usage"


def test_proxy_mode_meters_encoded_paths_and_judges_the_host_it_connects_to(proxy, upstream):
    upstream.routes["/v1/chat/%63ompletions"] = Scenario(body=CHAT_BODY)
    upstream.routes["/v1/chat/completions"] = Scenario(body=CHAT_BODY)
    destination = f"127.0.0.1:{upstream.port}"
    ids = []
    # Absolute form, as an HTTP proxy client sends it; the second names another Host
    # than the one the proxy connects to: the destination decides.
    for target, host in (
        (f"http://{destination}/v1/chat/%63ompletions", destination),
        (f"http://{destination}/v1/chat/completions", "example.com"),
    ):
        status, headers, _ = _send(proxy, "POST", target, CHAT_REQUEST, Host=host)
        assert status == 200 and headers["x-meter-interaction-id"], target
        ids.append(headers["x-meter-interaction-id"])
    rows = _stored_with(proxy, ids[-1])
    assert sorted(row["id"] for row in rows) == sorted(ids)
    assert all(row["input_total"] for row in rows)


# ---------------------------------------------------------------- web pages


class _PageServer:
    """A web page on another loopback port: the drill's hostile (or allowed) site."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = b"<!doctype html><title>a page</title><p>hello</p>"
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def page_server():
    server = _PageServer()
    yield server
    server.close()


# What the drill's page did: no-cors POSTs (a "simple" request, sent without a
# preflight, whose answer the page cannot read but whose effect is done), then a
# CORS fetch with JSON and an API key, as a browser-based client sends it.
PAGE_SCRIPT = """async ([meter, body]) => {
    const outcome = {};
    for (const path of ["/t/EVIL-666/openai/v1/chat/completions", "/openai/v1/chat/completions"]) {
        await fetch(meter + path, {method: "POST", mode: "no-cors", body});
    }
    try {
        const answer = await fetch(meter + "/openai/v1/chat/completions", {
            method: "POST", body, headers: {"content-type": "application/json", "authorization": "Bearer sk-page"},
        });
        outcome.status = answer.status;
        outcome.id = answer.headers.get("x-meter-interaction-id");
        outcome.body = await answer.json();
    } catch (error) {
        outcome.error = String(error);
    }
    return outcome;
}"""


def _visit(browser, page_server, proxy) -> dict:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(page_server.origin)
        return page.evaluate(PAGE_SCRIPT, [proxy.origin, CHAT_REQUEST.decode()])
    finally:
        context.close()


def _normal_sdk_call(proxy) -> str:
    client = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-x", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    return raw.headers["x-meter-interaction-id"]


def test_a_web_page_cannot_call_through_the_meter(browser, page_server, proxy, upstream):
    upstream.routes["/v1/chat/completions"] = Scenario(body=CHAT_BODY)
    alerts = _query(proxy, "SELECT count(*) FROM alerts")  # the earlier tests' (the proxy is the module's)
    outcome = _visit(browser, page_server, proxy)
    assert "error" in outcome  # the CORS fetch is refused: no CORS grant for this page
    assert upstream.received == []  # nothing the page sent left the meter
    # What an SDK sends still works, and is the only call stored.
    call_id = _normal_sdk_call(proxy)
    assert [row["id"] for row in _stored_with(proxy, call_id)] == [call_id]
    assert _query(proxy, "SELECT id FROM tasks WHERE id = 'EVIL-666'") == []
    assert _query(proxy, "SELECT count(*) FROM alerts") == alerts  # and no alert
    assert f"refused a call from a web page ('{page_server.origin}')" in proxy.stderr()


# One page's headers here, through a real proxy; each kind of page's, in test_addon_decisions.py.
@pytest.mark.parametrize(
    "headers", [{"Origin": "http://127.0.0.1:5999", "Sec_Fetch_Site": "same-site", "Sec_Fetch_Mode": "no-cors"}]
)
def test_requests_carrying_a_page_origin_are_refused_with_a_json_error(proxy, upstream, headers):
    upstream.routes["/v1/chat/completions"] = Scenario(body=CHAT_BODY)
    status, answer_headers, body = _send(proxy, "POST", "/openai/v1/chat/completions", CHAT_REQUEST, **headers)
    assert status == 403 and "x-meter-interaction-id" not in answer_headers
    assert body["error"]["message"].startswith("taskmeter: refused a call from a web page")
    assert "allowed_origins" in body["error"]["message"]
    # Proxy mode too.
    target = f"http://127.0.0.1:{upstream.port}/v1/chat/completions"
    status, _, body = _send(proxy, "POST", target, CHAT_REQUEST, Host=f"127.0.0.1:{upstream.port}", **headers)
    assert status == 403 and "web page" in body["error"]["message"]
    # A browser's own navigation (Sec-Fetch-Site: none) is no page's doing.
    status, headers, _ = _send(proxy, "POST", "/openai/v1/chat/completions", CHAT_REQUEST, Sec_Fetch_Site="none")
    assert status == 200
    assert len(upstream.received) == 1
    assert [row["id"] for row in _stored_with(proxy, headers["x-meter-interaction-id"])] == [headers["x-meter-interaction-id"]]


def test_an_allowed_origin_gets_cors_answers_and_its_calls_are_metered(tmp_path, browser, page_server, upstream):
    upstream.routes["/v1/chat/completions"] = Scenario(body=CHAT_BODY)
    proxy = _proxy(tmp_path, upstream, allowed_origins=[page_server.origin])
    try:
        outcome = _visit(browser, page_server, proxy)
        assert "error" not in outcome, outcome
        assert outcome["status"] == 200 and outcome["body"]["choices"]
        # Preflight answered by the meter: the upstream saw the three POSTs only.
        assert [received.method for received in upstream.received] == ["POST"] * 3
        rows = _stored_with(proxy, outcome["id"])
        assert outcome["id"] in {row["id"] for row in rows} and len(rows) == 3
        assert _query(proxy, "SELECT id FROM tasks WHERE id = 'EVIL-666'") == [("EVIL-666",)]
        # Another page is still refused, its preflight too.
        status, headers, _ = _send(
            proxy,
            "OPTIONS",
            "/openai/v1/chat/completions",
            Origin="http://127.0.0.1:1",
            Access_Control_Request_Method="POST",
        )
        assert status == 403 and "access-control-allow-origin" not in headers
    finally:
        proxy.stop()


# ---------------------------------------------------------------- self-forwarding

SELF_HOSTS = ["127.1", "0x7f000001", "2130706433", "[::ffff:127.0.0.1]", "localhost.", "127.0.0.2", "0.0.0.0", "[::]"]


def test_the_proxy_never_forwards_to_itself(proxy, upstream):
    upstream.routes["/v1/chat/completions"] = Scenario(body=CHAT_BODY)
    port = proxy.address.rsplit(":", 1)[1]
    gateway_calls = []
    with _PeakFds(proxy) as fds:
        for host in SELF_HOSTS:
            authority = f"{host}:{port}"
            for target in ("/v1/chat/completions", f"http://{authority}/v1/chat/completions"):
                started = time.monotonic()
                status, _, body = _send(proxy, "POST", target, CHAT_REQUEST, Host=authority)
                assert time.monotonic() - started < 2, f"{target} via {authority} was slow to be refused"
                # Addressed to the meter: a gateway request, whose path names no upstream.
                assert status == 404, (authority, target, status, body)
                assert body["error"]["message"].startswith("taskmeter: no upstream named 'v1'"), authority
            # A CONNECT to the meter itself.
            status, _, body = _send(proxy, "CONNECT", authority, Host=authority)
            assert status == 508 and "is this meter itself" in body["error"]["message"], authority
            # Through the gateway to an upstream the meter serves: simply a gateway call.
            status, headers, _ = _send(proxy, "POST", "/openai/v1/chat/completions", CHAT_REQUEST, Host=authority)
            assert status == 200
            gateway_calls.append(headers["x-meter-interaction-id"])
    assert fds.peak <= fds.before + 8, f"{fds.peak - fds.before} files opened at once"
    assert fds.settled()
    # A normal call right after works, and every call is stored once.
    call_id = _normal_sdk_call(proxy)
    rows = _stored_with(proxy, call_id)
    assert sorted(row["id"] for row in rows) == sorted([*gateway_calls, call_id])
    assert len(upstream.received) == len(SELF_HOSTS) + 1


def test_plain_http_goes_only_to_ai_hosts_and_a_returning_request_is_a_loop(proxy, upstream):
    upstream.routes["/v1/chat/completions"] = Scenario(body=CHAT_BODY)
    # A name that is no AI host (any name may resolve to the meter): refused before any connection.
    for host in ("meter-self.example", "vm", "intranet.example"):
        port = proxy.address.rsplit(":", 1)[1]
        for target in ("/v1/chat/completions", f"http://{host}:{port}/v1/chat/completions"):
            status, _, body = _send(proxy, "POST", target, CHAT_REQUEST, Host=f"{host}:{port}")
            assert status == 403 and "only to AI hosts" in body["error"]["message"], (host, target)
    # What the meter forwards in the clear carries its mark; a request that comes
    # back with it (through a name that resolves to the meter) is refused at once.
    status, _, _ = _send(proxy, "POST", "/openai/v1/chat/completions", CHAT_REQUEST)
    assert status == 200
    mark = next(value for name, value in upstream.received[-1].headers.items() if name.lower() == "via")
    assert mark.startswith("1.1 taskmeter-")
    status, headers, body = _send(proxy, "POST", "/openai/v1/chat/completions", CHAT_REQUEST, Via=f"1.0 corp, {mark}")
    assert status == 508 and "forwarding loop" in body["error"]["message"]
    assert "x-meter-interaction-id" not in headers
    # Another proxy's Via is no loop.
    status, headers, _ = _send(proxy, "POST", "/openai/v1/chat/completions", CHAT_REQUEST, Via="1.1 taskmeter-0123456789abcdef")
    assert status == 200
    assert len(upstream.received) == 2
    assert len(_stored_with(proxy, headers["x-meter-interaction-id"])) == 2


def test_an_upstream_that_names_the_meter_itself_is_refused(tmp_path, upstream):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"loop": f"http://127.1:{port}/loop"})
    proxy = RunningProxy(config, tmp_path / "meter.db", extra_args=["--port", str(port)])
    try:
        with _PeakFds(proxy) as fds:
            status, _, body = _send(proxy, "POST", "/loop/v1/chat/completions", CHAT_REQUEST)
        assert status == 508 and "upstream 'loop' is this meter itself" in body["error"]["message"]
        assert fds.peak <= fds.before + 2
    finally:
        proxy.stop()


@pytest.mark.parametrize("origin", ["localhost:5173", "http://localhost:5173/app", "ftp://box", "http://x:port", "*"])
def test_a_malformed_allowed_origin_is_a_one_line_error(tmp_path, origin):
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {}, allowed_origins=[origin])
    result = subprocess.run(
        [str(VENV_BIN / "meter"), "proxy", "--config", str(config), "--db", str(tmp_path / "meter.db")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "proxy.allowed_origins" in result.stderr and "Traceback" not in result.stderr


def test_allowed_origins_apply_on_reload(tmp_path, upstream):
    upstream.routes["/v1/chat/completions"] = Scenario(body=CHAT_BODY)
    page = "http://localhost:5173"
    proxy = _proxy(tmp_path, upstream)
    try:
        status, _, _ = _send(proxy, "POST", "/openai/v1/chat/completions", CHAT_REQUEST, Origin=page)
        assert status == 403
        _config(tmp_path, upstream, allowed_origins=["http://localhost:5173/"])  # the slash is dropped
        proxy.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config reloaded" not in proxy.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "proxy.allowed_origins" in proxy.stderr()
        status, headers, _ = _send(proxy, "POST", "/openai/v1/chat/completions", CHAT_REQUEST, Origin=page)
        assert status == 200 and headers["access-control-allow-origin"] == page
        assert "x-meter-interaction-id" in headers["access-control-expose-headers"]
        assert [row["id"] for row in _stored_with(proxy, headers["x-meter-interaction-id"])] == [
            headers["x-meter-interaction-id"]
        ]
    finally:
        proxy.stop()


def test_https_proxy_mode_refuses_web_pages_too(tmp_path):
    tls_host = "127.0.0.2"
    context, ca_path = make_server_tls(tmp_path, tls_host)
    with FakeUpstream(tls_context=context, host=tls_host) as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=CHAT_BODY)
        config = write_config(
            tmp_path / "config.toml",
            tmp_path / "ca",
            {"corp": f"https://{tls_host}:{upstream.port}"},
            upstream_ca=str(ca_path),
        )
        proxy = RunningProxy(config, tmp_path / "meter.db")
        try:
            bundle = ssl.create_default_context(cafile=tmp_path / "ca" / "ca-bundle.pem")
            with httpx.Client(proxy=proxy.origin, verify=bundle) as client:
                url = f"https://{tls_host}:{upstream.port}/v1/chat/completions"
                refused = client.post(url, content=CHAT_REQUEST, headers={"origin": "https://evil.example"})
                answered = client.post(url, content=CHAT_REQUEST)
        finally:
            proxy.stop()
    assert refused.status_code == 403 and "web page" in refused.json()["error"]["message"]
    assert answered.status_code == 200
    assert [row["id"] for row in _stored_with(proxy, answered.headers["x-meter-interaction-id"])] == [
        answered.headers["x-meter-interaction-id"]
    ]
    assert len(upstream.received) == 1
