"""HTTPS_PROXY mode, `meter env` / `meter run`, failures of the database and of the
proxy itself: each with a real proxy process on loopback."""

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from taskmeter.store import connection
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import VENV_BIN, RunningProxy, unread_input, write_config
from tests.tls import make_server_tls

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}
CHAT = "/v1/chat/completions"
CHAT_ARGS = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
TLS_HOST = "127.0.0.2"  # loopback, but not in the NO_PROXY list `meter env` sets


def chat_stream(**kwargs) -> Scenario:
    return Scenario(
        body=FIXTURE["openai/chat_stream_include_usage_toolcall"].body,
        content_type="text/event-stream",
        chunk_size=101,
        **kwargs,
    )


@pytest.fixture
def chat_proxy(tmp_path):
    """A meter proxy whose `openai` upstream answers chat calls with a recorded reply."""
    with FakeUpstream() as upstream:
        upstream.routes[CHAT] = Scenario(body=FIXTURE["openai/chat_nonstream_toolcall"].body)
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
        proxy = RunningProxy(config, tmp_path / "meter.db")
        yield proxy, upstream
        proxy.stop()


@pytest.fixture(scope="module")
def shared_tls_upstream(tmp_path_factory):
    context, ca_path = make_server_tls(tmp_path_factory.mktemp("tls"), TLS_HOST)
    with FakeUpstream(tls_context=context, host=TLS_HOST) as fake:
        fake.ca_path = ca_path
        yield fake


@pytest.fixture
def tls_upstream(shared_tls_upstream):
    shared_tls_upstream.forget()
    return shared_tls_upstream


@pytest.fixture(scope="module")
def shared_tls_proxy(shared_tls_upstream, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls-proxy")
    config = write_config(
        folder / "config.toml",
        folder / "ca",
        {"corp": f"https://{TLS_HOST}:{shared_tls_upstream.port}"},
        upstream_ca=str(shared_tls_upstream.ca_path),
    )
    running = RunningProxy(config, folder / "meter.db")
    yield running
    running.stop()


@pytest.fixture
def tls_proxy(shared_tls_proxy, tls_upstream):
    """The module's proxy in front of the TLS upstream, holding only what this test makes."""
    shared_tls_proxy.begin_test()
    return shared_tls_proxy


def test_https_proxy_mode_meters_tls_traffic_with_the_meter_ca(tls_proxy, tls_upstream):
    tls_upstream.routes[CHAT] = chat_stream()
    bundle = tls_proxy.config.parent / "ca" / "ca-bundle.pem"
    client = openai.OpenAI(
        base_url=f"https://{TLS_HOST}:{tls_upstream.port}/v1",
        api_key="sk-x",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(proxy=tls_proxy.origin, verify=ssl.create_default_context(cafile=bundle)),
    )
    raw = client.chat.completions.with_raw_response.create(**CHAT_ARGS, stream=True)
    chunks = list(raw.parse())
    assert chunks and all(c.choices or c.usage is None for c in chunks)  # usage chunk stripped
    stored = tls_proxy.rows()[0]
    assert stored["id"] == raw.headers["x-meter-interaction-id"]
    assert (stored["provider"], stored["input_total"], stored["output_total"]) == ("corp", 54, 20)
    ca_files = sorted((tls_proxy.config.parent / "ca").glob("mitmproxy-ca*"))
    assert ca_files and all(oct(f.stat().st_mode & 0o777) == "0o600" for f in ca_files)


def test_hosts_that_are_not_ai_hosts_pass_as_blind_tunnels(tls_proxy, tls_upstream, tmp_path):
    # A TLS server the meter does not know: the client must see *its* certificate.
    (tmp_path / "other").mkdir()
    context, ca_path = make_server_tls(tmp_path / "other", "127.0.0.3")
    with FakeUpstream(tls_context=context, host="127.0.0.3") as other:
        other.routes[CHAT] = Scenario(body=b'{"ok":true}')
        response = httpx.post(
            f"https://127.0.0.3:{other.port}{CHAT}",
            json={},
            proxy=tls_proxy.origin,
            verify=ssl.create_default_context(cafile=ca_path),
        )
        assert response.json() == {"ok": True}
    assert "x-meter-interaction-id" not in response.headers
    # A metered call after it is stored: calls are stored in the order they end, so the tunnel had its chance.
    tls_upstream.routes[CHAT] = Scenario(body=FIXTURE["openai/chat_nonstream_toolcall"].body)
    later = httpx.post(f"{tls_proxy.origin}/corp{CHAT}", json=CHAT_ARGS).headers["x-meter-interaction-id"]
    assert [row["id"] for row in tls_proxy.rows(wait_for=1)] == [later]


def test_meter_run_sets_the_environment_and_attributes_its_calls(tls_proxy, tls_upstream):
    tls_upstream.routes[CHAT] = chat_stream()
    script = (
        "import openai, os, sys\n"
        f"c = openai.OpenAI(base_url='https://{TLS_HOST}:{tls_upstream.port}/v1', api_key='sk-x', max_retries=0)\n"
        "r = c.chat.completions.with_raw_response.create(model='m', messages=[{'role': 'user', 'content': 'hi'}])\n"
        "print(r.headers['x-meter-interaction-id'])\n"
        "print(os.environ['OPENAI_BASE_URL'])\n"
    )
    tls_upstream.routes[CHAT] = Scenario(body=FIXTURE["openai/chat_nonstream_toolcall"].body)
    result = subprocess.run(
        [
            str(VENV_BIN / "meter"),
            "run",
            "--task",
            "P5-001",
            "--config",
            str(tls_proxy.config),
            "--db",
            str(tls_proxy.db_path),
            "--",
            sys.executable,
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    interaction_id, base_url = result.stdout.split()
    assert base_url == f"{tls_proxy.origin}/t/P5-001/openai/v1"
    stored = tls_proxy.rows()[0]
    assert stored["id"] == interaction_id
    assert (stored["task_id"], stored["attribution"], stored["input_total"]) == ("P5-001", "path", 92)


def test_meter_env_prints_exports_for_the_running_proxy(tls_proxy):
    def env(*args):
        return subprocess.run(
            [str(VENV_BIN / "meter"), "env", "--config", str(tls_proxy.config), "--db", str(tls_proxy.db_path), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    sh = env()
    assert sh.returncode == 0
    assert f"export OPENAI_BASE_URL={tls_proxy.origin}/openai/v1" in sh.stdout
    assert f"export ANTHROPIC_BASE_URL={tls_proxy.origin}/anthropic" in sh.stdout
    assert f"export GOOGLE_GEMINI_BASE_URL={tls_proxy.origin}/gemini" in sh.stdout
    assert f"export OLLAMA_HOST={tls_proxy.origin}/ollama" in sh.stdout
    # The shell's other clients (git, pip, curl) are left alone unless asked.
    assert "HTTPS_PROXY" not in sh.stdout and "SSL_CERT_FILE" not in sh.stdout
    proxied = env("--https-proxy").stdout
    assert f"export HTTPS_PROXY={tls_proxy.origin}" in proxied
    assert "ca-bundle.pem" in proxied and "NODE_EXTRA_CA_CERTS=" in proxied
    assert f"set -gx HTTPS_PROXY {tls_proxy.origin};" in env("--https-proxy", "--shell", "fish").stdout
    assert f"$env:HTTPS_PROXY = '{tls_proxy.origin}'" in env("--https-proxy", "--shell", "powershell").stdout
    assert f"set -gx OPENAI_BASE_URL {tls_proxy.origin}/openai/v1;" in env("--shell", "fish").stdout
    assert "/t/P1-002/openai/v1" in env("--task", "P1-002").stdout
    bad = env("--task", "no good")
    assert bad.returncode == 1 and bad.stderr.startswith("meter: error: malformed task ID")


def _stops_listening(proxy: RunningProxy) -> None:
    """Once stopping, the proxy closes its port (the calls in flight go on)."""
    deadline = time.monotonic() + 10
    while proxy.listening():
        assert time.monotonic() < deadline, "the proxy still listens"
        time.sleep(0.02)


def _stored_call(db_path: Path, interaction_id: str) -> dict:
    db = connection.connect(db_path)
    try:
        return dict(db.execute("SELECT * FROM interactions WHERE id = ?", (interaction_id,)).fetchone())
    finally:
        db.close()


def test_a_stop_lets_the_stream_in_flight_finish_and_takes_no_new_call(chat_proxy, tmp_path):
    proxy, upstream = chat_proxy
    upstream.routes[CHAT] = chat_stream(delay=0.04)  # about 2 s
    asked = {**CHAT_ARGS, "stream": True, "stream_options": {"include_usage": True}}  # the stream comes unchanged
    with httpx.stream("POST", f"{proxy.origin}/openai/v1/chat/completions", json=asked) as response:
        interaction_id = response.headers["x-meter-interaction-id"]
        chunks = response.iter_raw()  # keep a reference: dropping it closes the stream
        received = next(chunks)
        proxy.process.send_signal(signal.SIGTERM)
        _stops_listening(proxy)
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"{proxy.origin}/openai/v1/chat/completions", json=CHAT_ARGS)
        received += b"".join(chunks)
    assert proxy.process.wait(20) == 0
    assert received == FIXTURE["openai/chat_stream_include_usage_toolcall"].body
    assert _stored_call(tmp_path / "meter.db", interaction_id)["outcome"] == "complete"
    assert "in flight may finish" in proxy.stderr() and "Traceback" not in proxy.stderr()


def test_a_second_signal_cuts_the_calls_in_flight_as_aborted(chat_proxy, tmp_path):
    proxy, upstream = chat_proxy
    upstream.routes[CHAT] = chat_stream(delay=0.2)  # about 10 s
    with httpx.stream("POST", f"{proxy.origin}/openai/v1/chat/completions", json={**CHAT_ARGS, "stream": True}) as response:
        interaction_id = response.headers["x-meter-interaction-id"]
        chunks = response.iter_raw()
        next(chunks)
        proxy.process.send_signal(signal.SIGINT)
        _stops_listening(proxy)  # the first signal was taken: the next one is a second
        started = time.monotonic()
        assert proxy.stop(signal.SIGINT) == 0
        assert time.monotonic() - started < 5
    stored = _stored_call(tmp_path / "meter.db", interaction_id)
    assert stored["outcome"] == "aborted" and "shut down" in stored["error"]
    db = connection.connect(tmp_path / "meter.db")
    assert db.execute("SELECT count(*) FROM proxies").fetchone()[0] == 0  # unregistered
    db.close()


def test_calls_still_in_flight_when_the_grace_period_ends_are_aborted(tmp_path):
    with FakeUpstream() as upstream:
        upstream.routes[CHAT] = chat_stream(delay=0.2)
        config = write_config(
            tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"}, shutdown_grace_seconds=1
        )
        proxy = RunningProxy(config, tmp_path / "meter.db")
        with httpx.stream("POST", f"{proxy.origin}/openai/v1/chat/completions", json={**CHAT_ARGS, "stream": True}) as response:
            interaction_id = response.headers["x-meter-interaction-id"]
            chunks = response.iter_raw()
            next(chunks)
            started = time.monotonic()
            assert proxy.stop(signal.SIGTERM) == 0
            assert 0.9 < time.monotonic() - started < 6
    assert _stored_call(tmp_path / "meter.db", interaction_id)["outcome"] == "aborted"


def _spool_appears(folder: Path) -> Path:
    """The recorder keeps calls in the spool while the database cannot take them."""
    spool = folder / "meter.db.spool.jsonl"
    deadline = time.monotonic() + 15
    while not spool.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spool.exists()
    return spool


def test_calls_survive_a_locked_database_and_are_stored_once_it_frees(chat_proxy, tmp_path):
    proxy, _ = chat_proxy
    blocker = connection.connect(tmp_path / "meter.db")
    blocker.execute("BEGIN EXCLUSIVE")  # nobody else may write (or read) now
    ids = _post_calls(proxy, 5)  # the clients never notice
    spool = _spool_appears(tmp_path)
    blocker.execute("ROLLBACK")
    blocker.close()
    stored = proxy.rows(wait_for=5, timeout=20)
    assert sorted(r["id"] for r in stored) == sorted(ids)
    assert all(r["input_total"] == 92 for r in stored)
    deadline = time.monotonic() + 10
    while spool.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not spool.exists()


def test_port_in_use_is_a_one_line_error(tmp_path):
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {})
    first = RunningProxy(config, tmp_path / "meter.db")
    try:
        port = first.address.rsplit(":", 1)[1]
        result = subprocess.run(
            [str(VENV_BIN / "meter"), "proxy", "--port", port, "--config", str(config), "--db", str(tmp_path / "other.db")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1
        assert (
            result.stderr.strip()
            == f"meter: error: port {port} on 127.0.0.1 is already in use: is another `meter proxy` running? Try --port"
        )
    finally:
        first.stop()


@pytest.mark.parametrize(
    "content, message",
    [
        ("[proxy]\nport = 99999\n", "proxy.port: Input should be less than or equal to 65535"),
        ('[upstreams]\nvllm = "ftp://box"\n', "must be an http:// or https:// URL"),
        ("[proxy\n", "is not valid TOML"),
        ("[proxy]\ncolour = 1\n", "proxy.colour: Extra inputs are not permitted"),
    ],
)
def test_bad_config_is_a_one_line_error(tmp_path, content, message):
    config = tmp_path / "config.toml"
    config.write_text(content)
    result = subprocess.run(
        [str(VENV_BIN / "meter"), "proxy", "--config", str(config), "--db", str(tmp_path / "meter.db")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and message in result.stderr and result.stderr.count("\n") == 1


def _recorders(pid: int) -> list[int]:
    """The proxy's recorder child process."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _replaced(proxy, recorder: int) -> None:
    """The proxy has seen its recorder die and started another."""
    deadline = time.monotonic() + 15
    while recorder in (children := _recorders(proxy.process.pid)) or not children:
        assert time.monotonic() < deadline, "the dead recorder was not replaced"
        time.sleep(0.02)


def _post_calls(proxy, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        response = httpx.post(f"{proxy.origin}/openai/v1/chat/completions", json=CHAT_ARGS, timeout=10)
        assert response.status_code == 200
        ids.append(response.headers["x-meter-interaction-id"])
    return ids


def test_a_recorder_process_that_dies_is_replaced(chat_proxy, tmp_path):
    proxy, _ = chat_proxy
    before = _post_calls(proxy, 3)
    assert len(proxy.rows(wait_for=3)) == 3
    (recorder,) = _recorders(proxy.process.pid)
    os.kill(recorder, signal.SIGKILL)
    _replaced(proxy, recorder)
    after = _post_calls(proxy, 3)
    stored = {r["id"] for r in proxy.rows(wait_for=6, timeout=30)}
    assert set(before) <= stored and set(after) <= stored
    assert _recorders(proxy.process.pid) != [recorder]


def test_calls_handed_over_survive_the_proxy_being_killed(chat_proxy, tmp_path):
    proxy, _ = chat_proxy
    try:
        (recorder,) = _recorders(proxy.process.pid)
        ids = _post_calls(proxy, 5)
        for interaction_id in ids:  # handed over: the recorder has them (its live view shows each)
            proxy.wait_for_output(interaction_id)
    finally:
        proxy.process.kill()
        proxy.process.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{recorder}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    db = connection.connect(tmp_path / "meter.db")
    stored = {row[0] for row in db.execute("SELECT id FROM interactions")}
    db.close()
    assert set(ids) <= stored


def _immutable(paths, on: bool) -> None:
    """Read-only even for root (tests run as root, which ignores file modes)."""
    for path in paths:
        if path.exists():
            subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


def test_database_made_read_only_while_traffic_flows_loses_nothing(chat_proxy, tmp_path):
    db_path = tmp_path / "meter.db"
    files = [db_path, tmp_path / "meter.db-wal"]
    proxy, _ = chat_proxy
    first = _post_calls(proxy, 2)
    proxy.rows(wait_for=2)
    _immutable(files, True)
    try:
        during = _post_calls(proxy, 4)  # the clients notice nothing
        _spool_appears(tmp_path)
    finally:
        _immutable(files, False)
    after = _post_calls(proxy, 2)
    stored = {r["id"] for r in proxy.rows(wait_for=8, timeout=30)}
    assert set(first + during + after) <= stored


def test_calls_a_dying_recorder_never_stored_are_sent_to_the_next(chat_proxy, tmp_path):
    proxy, _ = chat_proxy
    (recorder,) = _recorders(proxy.process.pid)
    os.kill(recorder, signal.SIGSTOP)  # it receives nothing and acknowledges nothing
    ids = _post_calls(proxy, 4)
    deadline = time.monotonic() + 15
    while not all(interaction_id.encode() in unread_input(recorder) for interaction_id in ids):
        assert time.monotonic() < deadline, "the calls were never handed over"
        time.sleep(0.02)
    os.kill(recorder, signal.SIGKILL)  # with the four calls handed over, unread
    stored = {r["id"] for r in proxy.rows(wait_for=4, timeout=30)}
    assert set(ids) <= stored
    assert len(stored) == 4  # resent once, stored once


def test_meter_env_does_not_load_the_proxy(tmp_path):
    """`eval "$(meter env)"` runs in every new shell: it must not import mitmproxy."""
    script = (
        "import sys\n"
        f"sys.argv = ['meter', 'env', '--db', {str(tmp_path / 'meter.db')!r}]\n"
        "from taskmeter.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('LOADED' if any(m.split('.')[0] == 'mitmproxy' for m in sys.modules) else 'LEAN', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "OPENAI_BASE_URL=" in result.stdout
    assert result.stderr.strip().endswith("LEAN")


def test_meter_env_and_its_undo_in_a_real_shell(tls_proxy):
    meter = f"{VENV_BIN / 'meter'} env --config {tls_proxy.config} --db {tls_proxy.db_path}"
    script = (
        f'eval "$({meter})"; echo "base=$OPENAI_BASE_URL proxy=${{HTTPS_PROXY:-none}}"; '
        f'eval "$({meter} --https-proxy)"; echo "proxy=$HTTPS_PROXY ca=${{SSL_CERT_FILE:+set}}"; '
        f'eval "$({meter} --unset)"; echo "after=${{OPENAI_BASE_URL:-none}} ${{HTTPS_PROXY:-none}} ${{SSL_CERT_FILE:-none}}"'
    )
    result = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        # SSL_CERT_FILE unset before, as the last line expects (`--unset` puts back one that was set).
        env={**{k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}, "HTTPS_PROXY": ""},
    )
    first, second, third = result.stdout.splitlines()
    assert first == f"base={tls_proxy.origin}/openai/v1 proxy=none"
    assert second == f"proxy={tls_proxy.origin} ca=set"
    assert third == "after=none none none"
    # A fish shell where `meter env --https-proxy` set both (and recorded that they were unset before).
    pointed = {"OPENAI_BASE_URL": "x", "HTTPS_PROXY": "x", "METER_WAS_UNSET": "OPENAI_BASE_URL HTTPS_PROXY"}
    fish = subprocess.run(
        [str(VENV_BIN / "meter"), "env", "--unset", "--shell", "fish"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **pointed},
    )
    assert "set -e OPENAI_BASE_URL;" in fish.stdout and "set -e HTTPS_PROXY;" in fish.stdout


def test_the_proxy_sums_up_its_run_at_the_end_and_quiet_prints_nothing(tmp_path):
    with FakeUpstream() as upstream:
        upstream.routes[CHAT] = Scenario(body=FIXTURE["openai/chat_nonstream_toolcall"].body)
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
        loud = RunningProxy(config, tmp_path / "meter.db")
        _post_calls(loud, 2)
        loud.rows(wait_for=2)
        assert loud.stop() == 0
        quiet = RunningProxy(config, tmp_path / "quiet.db", extra_args=["--quiet"])
        _post_calls(quiet, 2)
        quiet.rows(wait_for=2)
        assert quiet.stop() == 0
    lines = loud.whole_live_view()
    assert len([line for line in lines if "gpt-4o-mini" in line]) == 2
    assert "2 calls recorded (0 failed), 218 tokens" in lines[-1]
    quiet_lines = quiet.whole_live_view()
    assert quiet_lines and all(
        line.startswith(("  gateway:", "  proxy:", "  dashboard:")) for line in quiet_lines
    )  # the banner only


def test_a_second_proxy_on_the_same_database_is_refused(tmp_path):
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {})
    first = RunningProxy(config, tmp_path / "meter.db")
    try:
        result = subprocess.run(
            [str(VENV_BIN / "meter"), "proxy", "--port", "0", "--config", str(config), "--db", str(tmp_path / "meter.db")],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        first.stop()
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert (
        f"a meter proxy already records to {tmp_path / 'meter.db'} (pid {first.process.pid} on {first.address})" in result.stderr
    )


def test_sighup_reloads_the_config_and_names_what_needs_a_restart(tmp_path):
    with FakeUpstream() as upstream:
        upstream.routes["/extra" + CHAT] = Scenario(body=FIXTURE["openai/chat_nonstream_toolcall"].body)
        origin = f"http://127.0.0.1:{upstream.port}"
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": origin})
        proxy = RunningProxy(config, tmp_path / "meter.db")
        try:
            before = httpx.post(f"{proxy.origin}/extra/v1/chat/completions", json=CHAT_ARGS)
            assert before.status_code == 404 and "reload the proxy" in before.json()["error"]["message"]
            write_config(config, tmp_path / "ca", {"openai": origin, "extra": f"{origin}/extra"}, port=9)
            proxy.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "config reloaded" not in proxy.stderr() and time.monotonic() < deadline:
                time.sleep(0.05)
            after = httpx.post(f"{proxy.origin}/extra/v1/chat/completions", json=CHAT_ARGS)
            assert after.status_code == 200 and proxy.rows(wait_for=1)[-1]["provider"] == "extra"
            assert "upstreams.extra applied" in proxy.stderr() and "restart to apply: proxy.port" in proxy.stderr()
            config.write_text("[proxy\n")  # a broken file changes nothing
            proxy.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "config not reloaded" not in proxy.stderr() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "config not reloaded" in proxy.stderr()
            assert httpx.post(f"{proxy.origin}/extra/v1/chat/completions", json=CHAT_ARGS).status_code == 200
        finally:
            assert proxy.stop() == 0


def test_addon_methods_named_after_mitmproxy_events_are_meant_as_hooks():
    """mitmproxy calls any addon method named after one of its events: a
    `configure` or `update` meant otherwise would be called with option names or
    flows (once, an `update` cost the proxy 1.4 ms of CPU per call in errors)."""
    import mitmproxy.proxy.layers.http  # noqa: F401  (declares the HTTP events)
    import mitmproxy.proxy.server_hooks  # noqa: F401  (declares the connection events)
    from mitmproxy import hooks

    from taskmeter.proxy import addons, refusals

    meant = {
        addons.Gateway: {"http_connect", "requestheaders", "responseheaders", "server_connect", "client_disconnected"},
        addons.TaskAttribution: {"http_connect", "client_disconnected", "requestheaders"},
        addons.Capture: {"requestheaders", "request", "responseheaders", "response", "error", "done"},
        refusals.Guard: {"request", "responseheaders"},
    }
    assert "update" in hooks.all_hooks and "configure" in hooks.all_hooks
    for addon, events in meant.items():
        assert {name for name in vars(addon) if name in hooks.all_hooks} == events, addon.__name__
