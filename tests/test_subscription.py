"""Subscription logins through a real `meter proxy`: Codex on a ChatGPT login
(chatgpt.com) and Gemini CLI's Code Assist API (cloudcode-pa.googleapis.com) in
HTTPS-proxy mode, sent by `[intercept.redirect]` to a loopback TLS fake that
holds a certificate for the real host names; Claude on a claude.ai login (an
OAuth bearer) through the gateway. Their cost is the API-equivalent price,
marked so, and spends no USD budget unless the config says so."""

import base64
import json
import os
import shutil
import signal
import sqlite3
import ssl
import subprocess
import time

import anthropic
import httpx
import openai
import pytest

from taskmeter.proxy.routing import classify, subscription_login
from taskmeter.store import connection, migrations, tasks
from tests import proxy_harness
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import VENV_BIN, RunningProxy, write_config
from tests.test_agents import _responses_stream
from tests.tls import make_server_tls

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}
CODEX = FIXTURE["openai_responses/responses_stream_cached_reasoning_websearch"]
CODE_ASSIST = FIXTURE["code_assist/stream_sse_thoughts_wrapped"]
GEMINI_JSON = FIXTURE["gemini/nonstream_cached_thoughts"]
CLAUDE = FIXTURE["anthropic/messages_stream_cache_read"]
CLAUDE_OAUTH_TOKEN = "sk-ant-oat01-" + "Qx7" * 30  # the shape of a claude.ai login's token; never stored
TASK = "SUB-1"
HOSTS = ("chatgpt.com", "cloudcode-pa.googleapis.com")


def normalized(fixture) -> dict:
    return {key: fixture.meta["normalized"][key] for key in ("input_total", "cache_read", "output_total", "reasoning")}


def tokens_of(row: dict) -> dict:
    return {key: row[key] for key in ("input_total", "cache_read", "output_total", "reasoning")}


def header(received, name: str) -> str | None:
    """A header the fake received, by its name in any case (clients differ)."""
    return next((value for key, value in received.headers.items() if key.lower() == name), None)


def meter(proxy: RunningProxy, *args: str) -> subprocess.CompletedProcess:
    return proxy_harness.meter(proxy, *args, env={**os.environ, "METER_CONFIG": str(proxy.config)})


@pytest.fixture
def subscription_hosts(tmp_path):
    """One loopback TLS server holding a certificate for chatgpt.com and
    cloudcode-pa.googleapis.com (by name only), recording the TLS server names it is sent."""
    (tmp_path / "upstream").mkdir()
    context, ca_path = make_server_tls(tmp_path / "upstream", None, HOSTS)
    server_names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    with FakeUpstream(tls_context=context) as fake:
        fake.ca_path, fake.server_names = ca_path, server_names
        fake.routes["/backend-api/codex/responses"] = Scenario(body=CODEX.body, content_type="text/event-stream", chunk_size=512)
        fake.routes["/v1internal:streamGenerateContent"] = Scenario(
            body=CODE_ASSIST.body, content_type="text/event-stream", chunk_size=256
        )
        wrapped = {"response": json.loads(GEMINI_JSON.body), "traceId": "trace-generate-1"}
        fake.routes["/v1internal:generateContent"] = Scenario(body=json.dumps(wrapped).encode())
        fake.routes["/v1internal:countTokens"] = Scenario(body=b'{"totalTokens": 31}')
        yield fake


@pytest.fixture
def anthropic_upstream():
    with FakeUpstream() as fake:
        fake.routes["/v1/messages"] = Scenario(body=CLAUDE.body, content_type="text/event-stream", chunk_size=300)
        yield fake


def start_proxy(tmp_path, subscription_hosts, anthropic_upstream, budgets: str = "") -> RunningProxy:
    config = write_config(
        tmp_path / "config.toml",
        tmp_path / "ca",
        {"anthropic": f"http://127.0.0.1:{anthropic_upstream.port}"},
        upstream_ca=str(subscription_hosts.ca_path),
    )
    redirects = "".join(f'"{host}" = "https://127.0.0.1:{subscription_hosts.port}"\n' for host in HOSTS)
    config.write_text(config.read_text() + f"[intercept.redirect]\n{redirects}[budgets]\n{budgets}")
    return RunningProxy(config, tmp_path / "meter.db")


@pytest.fixture
def proxy(tmp_path, subscription_hosts, anthropic_upstream):
    running = start_proxy(tmp_path, subscription_hosts, anthropic_upstream)
    yield running
    running.stop()


def https_client(proxy: RunningProxy) -> dict:
    """httpx arguments of a client in HTTPS-proxy mode that trusts the meter's CA (as `meter env --https-proxy` sets)."""
    bundle = proxy.config.parent / "ca" / "ca-bundle.pem"
    return dict(proxy=proxy.origin, verify=ssl.create_default_context(cafile=bundle))


def codex_call(proxy: RunningProxy) -> str:
    """A Responses stream as Codex on a ChatGPT login sends it, with the official SDK."""
    client = openai.OpenAI(
        base_url="https://chatgpt.com/backend-api/codex",
        api_key="chatgpt-access-token",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(**https_client(proxy)),
    )
    raw = client.responses.with_raw_response.create(
        model="gpt-5-codex",
        instructions="You are Codex.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "list the files"}]}],
        stream=True,
        store=False,
        extra_headers={"chatgpt-account-id": "acct-1", "originator": "codex_cli_rs", "x-meter-task": TASK},
    )
    events = list(raw.parse())
    assert events[-1].type == "response.completed"
    return raw.headers["x-meter-interaction-id"]


def code_assist_calls(proxy: RunningProxy) -> list[str]:
    """Gemini CLI's three metered Code Assist methods, in its envelope."""
    envelope = CODE_ASSIST.request
    ids = []
    with httpx.Client(**https_client(proxy), headers={"x-meter-task": TASK}) as client:
        base = "https://cloudcode-pa.googleapis.com/v1internal"
        streamed = client.post(f"{base}:streamGenerateContent", params={"alt": "sse"}, json=envelope)
        assert streamed.status_code == 200 and streamed.content == CODE_ASSIST.body
        plain = client.post(f"{base}:generateContent", json={**envelope, "model": "gemini-2.5-pro"})
        counted = client.post(f"{base}:countTokens", json={"request": {"model": "models/gemini-2.5-flash", "contents": []}})
        for response in (streamed, plain, counted):
            assert response.status_code == 200
            ids.append(response.headers["x-meter-interaction-id"])
    return ids


def claude_calls(proxy: RunningProxy) -> list[str]:
    """Claude on a claude.ai login (OAuth bearer and its beta header), then on an API key."""
    ids = []
    for credentials in ({"auth_token": CLAUDE_OAUTH_TOKEN}, {"api_key": "sk-ant-api03-apikey"}):
        client = anthropic.Anthropic(
            **credentials,
            base_url=f"{proxy.origin}/t/{TASK}/anthropic",
            max_retries=0,
            default_headers={"anthropic-beta": "oauth-2025-04-20"} if "auth_token" in credentials else {},
        )
        raw = client.messages.with_raw_response.create(
            model="claude-opus-4-6", max_tokens=300, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        list(raw.parse())
        ids.append(raw.headers["x-meter-interaction-id"])
    return ids


def test_code_assist_routes_are_not_gemini_routes_and_the_subscription_rule():
    assert classify("POST", "/v1internal:streamGenerateContent").protocol == "code_assist"
    assert classify("POST", "/code_assist/v1internal:generateContent").protocol == "code_assist"
    assert classify("POST", "/v1internal:countTokens").operation == "count_tokens"
    assert classify("POST", "/v1internal:loadCodeAssist") is None  # no usage: not metered
    assert classify("POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent").protocol == "gemini"
    assert classify("POST", "/backend-api/codex/responses").protocol == "openai_responses"
    assert subscription_login("chatgpt", None) and subscription_login("code_assist", "Bearer ya29.x")
    assert subscription_login("anthropic", "Bearer sk-ant-oat01-abc")
    assert not subscription_login("anthropic", None) and not subscription_login("anthropic", "Bearer sk-ant-api03-x")
    assert not subscription_login("openai", "Bearer sk-proj-x")


def test_subscription_calls_are_metered_at_the_api_equivalent_price(proxy, subscription_hosts, anthropic_upstream):
    ids = [codex_call(proxy), *code_assist_calls(proxy), *claude_calls(proxy)]
    rows = {row["id"]: row for row in proxy.rows(wait_for=len(ids))}
    assert sorted(rows) == sorted(ids)  # every call stored, once
    codex, streamed, plain, counted, claude_oauth, claude_key = (rows[i] for i in ids)

    # Codex: the Responses stream, read by the Responses rules, the connection sent to the fake.
    assert (codex["provider"], codex["protocol"], codex["model"]) == ("chatgpt", "openai_responses", "gpt-5-2025-08-07")
    assert tokens_of(codex) == normalized(CODEX) and codex["usage_source"] == "reported"
    assert codex["cost_usd"] > 0 and codex["price_basis"] == "api-equivalent" and codex["task_id"] == TASK
    received = {r.path.split("?")[0]: r for r in subscription_hosts.received}
    codex_request = received["/backend-api/codex/responses"]
    assert codex_request.headers["Host"] == "chatgpt.com"
    assert codex_request.headers["chatgpt-account-id"] == "acct-1"
    # TLS named, and verified, the host the client asked for: the certificate names no address.
    assert set(subscription_hosts.server_names) == set(HOSTS)

    # Code Assist: the envelope unwrapped; the model is the envelope's, the session the CLI's.
    assert (streamed["provider"], streamed["protocol"], streamed["operation"]) == ("code_assist", "code_assist", "generate")
    assert (streamed["model"], streamed["streamed"]) == ("gemini-2.5-flash", 1)
    assert tokens_of(streamed) == normalized(CODE_ASSIST)
    assert streamed["client_session"] == "gemini-cli-session-1" and streamed["session_id"]
    assert streamed["response_id"] == "ru1garvBEoOiqtsP2fznmQw"  # the traceId
    assert streamed["conversation_id"] and streamed["cost_usd"] > 0 and streamed["price_basis"] == "api-equivalent"
    assert received["/v1internal:streamGenerateContent"].headers["Host"] == "cloudcode-pa.googleapis.com"
    assert tokens_of(plain) == normalized(GEMINI_JSON) and plain["response_id"] == "trace-generate-1"
    assert plain["model"] == json.loads(GEMINI_JSON.body)["modelVersion"] and plain["streamed"] == 0
    assert counted["operation"] == "count_tokens" and json.loads(counted["raw_usage"]) == {"counted_input_tokens": 31}

    # Claude on a claude.ai login: bearer and beta header forwarded as sent, the bearer never stored.
    oauth_request, key_request = (r for r in anthropic_upstream.received)
    assert oauth_request.headers["Authorization"] == f"Bearer {CLAUDE_OAUTH_TOKEN}"
    assert oauth_request.headers["anthropic-beta"] == "oauth-2025-04-20" and "x-api-key" not in oauth_request.headers
    assert tokens_of(claude_oauth) == normalized(CLAUDE) and claude_oauth["price_basis"] == "api-equivalent"
    assert claude_key["price_basis"] == "api" and claude_key["cost_usd"] == claude_oauth["cost_usd"] > 0
    proxy.stop()
    for stored in proxy.db_path.parent.glob("meter.db*"):
        assert CLAUDE_OAUTH_TOKEN.encode() not in stored.read_bytes() and b"sk-ant-oat01" not in stored.read_bytes()

    # Shown as such: log and show, and the task's report (its cost split).
    logged = {call["interaction_id"]: call for call in json.loads(meter(proxy, "log", "--json", "--limit", "20").stdout)}
    assert [logged[i]["price_basis"] for i in ids] == ["api-equivalent"] * 5 + ["api"]
    assert json.loads(meter(proxy, "show", ids[0], "--json").stdout)["price_basis"] == "api-equivalent"
    assert (
        "API-equivalent" in meter(proxy, "show", ids[0]).stdout and "API-equivalent" not in meter(proxy, "show", ids[-1]).stdout
    )
    report = json.loads(meter(proxy, "task", TASK, "--json").stdout)
    subscription_cost = sum(rows[i]["cost_usd"] for i in ids[:5] if rows[i]["operation"] == "generate")
    assert report["cost_usd"] == pytest.approx(subscription_cost + claude_key["cost_usd"])
    assert report["cost_api_equivalent_usd"] == pytest.approx(subscription_cost)
    assert "API-equivalent" in meter(proxy, "task", TASK).stdout


@pytest.mark.parametrize("counted", [False, True], ids=["by-default-not", "when-the-config-says-so"])
def test_usd_budgets_leave_out_api_equivalent_cost_unless_the_config_counts_it(
    counted, tmp_path, subscription_hosts, anthropic_upstream
):
    proxy = start_proxy(tmp_path, subscription_hosts, anthropic_upstream, f"count_subscription_usd = {str(counted).lower()}\n")
    try:
        assert meter(proxy, "set-task", TASK).returncode == 0
        assert meter(proxy, "task", TASK, "--budget", "$5", "--budget", "10M").returncode == 0
        ids = [codex_call(proxy), *claude_calls(proxy)]
        rows = {row["id"]: row for row in proxy.rows(wait_for=len(ids))}
        [status] = [b for b in json.loads(meter(proxy, "budget", "--json").stdout) if b["target"] == TASK]
        api_cost = rows[ids[2]]["cost_usd"]
        every_cost = sum(row["cost_usd"] for row in rows.values())
        assert status["usd_used"] == pytest.approx(every_cost if counted else api_cost)
        assert "API-equivalent: subscription calls" in meter(proxy, "status").stdout
        # Token budgets count every call's tokens.
        assert status["tokens_used"] == sum(row["input_total"] + row["output_total"] for row in rows.values())
    finally:
        proxy.stop()


def test_a_redirect_that_is_no_address_is_a_one_line_error(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[intercept.redirect]\n"chatgpt.com" = "127.0.0.1:9"\n')
    result = subprocess.run(
        [str(VENV_BIN / "meter"), "config", "check", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "intercept.redirect" in result.stderr and "https://ADDRESS[:PORT]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_upgrading_marks_stored_calls_api_and_sums_api_equivalent_cost(tmp_path, monkeypatch):
    db_path = tmp_path / "meter.db"
    monkeypatch.setattr(migrations, "MIGRATIONS", [m for m in migrations.MIGRATIONS if m.__name__ < "m015"])
    old = connection.connect(db_path)
    tasks.set_task(old, "P1-001")
    old.execute(
        "INSERT INTO interactions (id, started_at, task_id, input_total, output_total, cost_usd, usage_source)"
        " VALUES ('000000010001', '2026-01-01T00:00:00.000000Z', 'P1-001', 100, 5, 0.25, 'reported')"
    )
    old.close()
    monkeypatch.undo()
    upgraded = connection.connect(db_path)
    assert upgraded.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert upgraded.execute("SELECT price_basis FROM interactions").fetchone()[0] == "api"
    usage = "SELECT cost_usd, api_equivalent_usd FROM task_usage WHERE task_key = ?"
    assert tuple(upgraded.execute(usage, ("P1-001",)).fetchone()) == (0.25, 0)
    upgraded.execute(
        "INSERT INTO interactions (id, started_at, task_id, input_total, output_total, cost_usd, price_basis)"
        " VALUES ('000000010002', '2026-01-01T00:01:00.000000Z', 'P1-001', 40, 2, 0.5, 'api-equivalent')"
    )
    assert tuple(upgraded.execute(usage, ("P1-001",)).fetchone()) == (0.75, 0.5)
    upgraded.execute("UPDATE interactions SET task_id = NULL WHERE id = '000000010002'")
    assert tuple(upgraded.execute(usage, ("P1-001",)).fetchone()) == (0.25, 0)
    assert tuple(upgraded.execute(usage, ("",)).fetchone()) == (0.5, 0.5)
    upgraded.execute("DELETE FROM interactions WHERE id = '000000010002'")
    assert upgraded.execute("SELECT sum(api_equivalent_usd) FROM task_usage").fetchone()[0] == 0
    with pytest.raises(sqlite3.IntegrityError):
        upgraded.execute("INSERT INTO interactions (id, started_at, price_basis) VALUES ('z', 'y', 'free')")


def test_the_real_gemini_cli_on_a_google_login_is_metered_through_code_assist_endpoint(tmp_path):
    """Gemini CLI pointed at the gateway with CODE_ASSIST_ENDPOINT, logged in with
    an access token (GOOGLE_GENAI_USE_GCA, as in Cloud Shell): its setup calls
    pass unmetered, its generation is metered from the envelope."""
    assert shutil.which("gemini"), "gemini is not installed: run scripts/ensure-agent-clis"
    with FakeUpstream() as fake:
        setup = {
            "loadCodeAssist": {"currentTier": {"id": "standard-tier"}, "cloudaicompanionProject": "test-project"},
            "retrieveUserQuota": {"buckets": []},
            "listExperiments": {"experimentIds": [], "flags": []},
        }
        for method, answer in setup.items():
            fake.routes[f"/v1internal:{method}"] = Scenario(body=json.dumps(answer).encode())
        fake.routes["/v1internal:streamGenerateContent"] = Scenario(
            body=CODE_ASSIST.body, content_type="text/event-stream", chunk_size=200
        )
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"code_assist": f"http://127.0.0.1:{fake.port}"})
        proxy = RunningProxy(config, tmp_path / "meter.db")
        try:
            home = tmp_path / "home"
            (home / ".gemini").mkdir(parents=True)
            (home / ".gemini" / "settings.json").write_text(
                json.dumps({"security": {"auth": {"selectedType": "oauth-personal"}}})
            )
            env = {name: value for name, value in os.environ.items() if not name.lower().endswith("_proxy")}
            env.update(
                HOME=str(home),
                XDG_CONFIG_HOME=str(home / ".config"),
                CODE_ASSIST_ENDPOINT=f"{proxy.origin}/t/{TASK}/code_assist",
                GOOGLE_GENAI_USE_GCA="true",
                GOOGLE_CLOUD_ACCESS_TOKEN="ya29.test-access-token",
            )
            result = subprocess.run(
                ["gemini", "--skip-trust", "-m", "gemini-2.5-flash", "-p", "say hi"],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
                cwd=home,
            )
            assert result.returncode == 0, result.stderr[-2000:]
            generations = [r for r in fake.received if ":streamGenerateContent" in r.path]
            assert generations and {r.path.split("?")[0] for r in fake.received} >= {"/v1internal:loadCodeAssist"}
            assert all(header(r, "authorization") == "Bearer ya29.test-access-token" for r in generations)
            rows = proxy.rows(wait_for=len(generations))
            assert len(rows) == len(generations)  # the setup calls state no usage and are not metered
            sent = json.loads(generations[0].body)
            row = rows[0]
            assert (row["provider"], row["protocol"], row["task_id"], row["model"]) == (
                "code_assist",
                "code_assist",
                TASK,
                sent["model"],
            )
            assert tokens_of(row) == normalized(CODE_ASSIST) and row["price_basis"] == "api-equivalent"
            assert row["client_session"] == sent["request"]["session_id"]
        finally:
            proxy.stop()


def _reload(proxy: RunningProxy, config_text: str, times: int) -> None:
    """Write the config and SIGHUP the proxy; return once it has reloaded `times` times in all."""
    proxy.config.write_text(config_text)
    proxy.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while proxy.stderr().count("config reloaded") < times and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.stderr().count("config reloaded") == times, proxy.stderr()


def test_a_redirect_to_plain_http_keeps_the_host_and_one_back_to_the_meter_is_refused(proxy, anthropic_upstream):
    """Redirects apply on reload; an http:// target gets the request in the clear with
    the Host the client named; a redirect that leads back to the meter is a 508."""
    anthropic_upstream.routes["/backend-api/codex/responses"] = Scenario(body=CODEX.body, content_type="text/event-stream")
    base = proxy.config.read_text().split("[intercept.redirect]")[0]
    _reload(proxy, base + f'[intercept.redirect]\n"chatgpt.com" = "http://127.0.0.1:{anthropic_upstream.port}"\n', 1)
    first = codex_call(proxy)
    [row] = proxy.rows(wait_for=1)
    assert (row["id"], row["provider"], row["price_basis"]) == (first, "chatgpt", "api-equivalent")
    assert tokens_of(row) == normalized(CODEX)
    [received] = anthropic_upstream.received
    assert received.headers["Host"] == "chatgpt.com" and received.path == "/backend-api/codex/responses"

    _reload(proxy, base + f'[intercept.redirect]\n"chatgpt.com" = "http://{proxy.address}"\n', 2)
    with pytest.raises(openai.APIStatusError) as refused:
        codex_call(proxy)
    assert refused.value.status_code == 508 and "leads to this meter itself" in refused.value.message
    assert len(anthropic_upstream.received) == 1 and len(proxy.rows(wait_for=1)) == 1


def _jwt(claims: dict) -> str:
    """An unsigned-looking JWT: Codex reads a ChatGPT login's claims without checking the signature."""
    part = lambda data: base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{part('signature')}"


def _answer_gets(fake: FakeUpstream, answers: dict[str, object]) -> list[str]:
    """Let the fake answer GETs: the first answer whose key the path contains, else {}; the paths asked."""
    asked: list[str] = []

    def do_get(handler):
        asked.append(handler.path)
        answer = next((value for key, value in answers.items() if key in handler.path), {})
        body = json.dumps(answer).encode()
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    fake.server.RequestHandlerClass.do_GET = do_get
    return asked


def test_the_real_codex_cli_on_a_chatgpt_login_is_metered_in_https_proxy_mode(tmp_path, subscription_hosts):
    """Codex with a ChatGPT login in ~/.codex/auth.json, under `meter run`: its calls
    to chatgpt.com go through HTTPS-proxy mode (redirected to the fake), and only
    its Responses calls are metered, at the API-equivalent price."""
    assert shutil.which("codex"), "codex is not installed: run scripts/ensure-agent-clis"
    account = {
        "id": "acct-1",
        "structure": "personal",
        "plan_type": "plus",
        "workspace_backend_origin": "https://chatgpt.com",
        "account_routing_override": "NO_CONSTRAINT",
    }
    _answer_gets(subscription_hosts, {"/wham/accounts/check": {"accounts": [account]}, "/codex/models": {"models": []}})
    # Codex reads the Responses stream item by item: the recorded one would need its tools.
    usage = {
        "input_tokens": 5123,
        "input_tokens_details": {"cached_tokens": 2048},
        "output_tokens": 77,
        "output_tokens_details": {"reasoning_tokens": 31},
        "total_tokens": 5200,
    }
    subscription_hosts.routes["/backend-api/codex/responses"] = Scenario(
        body=_responses_stream("resp_chatgpt_1", "hello from chatgpt", usage), content_type="text/event-stream", chunk_size=256
    )
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {}, upstream_ca=str(subscription_hosts.ca_path))
    config.write_text(
        config.read_text() + f'[intercept.redirect]\n"chatgpt.com" = "https://127.0.0.1:{subscription_hosts.port}"\n'
    )
    proxy = RunningProxy(config, tmp_path / "meter.db")
    try:
        home = tmp_path / "home"
        (home / ".codex").mkdir(parents=True)
        claims = {
            "email": "dev@example.com",
            "exp": int(time.time()) + 3600,
            "https://api.openai.com/auth": {"chatgpt_plan_type": "plus", "chatgpt_account_id": "acct-1"},
        }
        login = {
            "OPENAI_API_KEY": None,
            "tokens": {"id_token": _jwt(claims), "access_token": _jwt(claims), "refresh_token": "rt", "account_id": "acct-1"},
            "last_refresh": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (home / ".codex" / "auth.json").write_text(json.dumps(login))
        env = {name: value for name, value in os.environ.items() if not name.endswith(("_API_KEY", "_PROXY", "_proxy"))}
        env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
        result = subprocess.run(
            [str(VENV_BIN / "meter"), "run", "--task", TASK, "--config", str(config), "--db", str(proxy.db_path), "--",
             "codex", "exec", "--skip-git-repo-check", "say hi"],
            capture_output=True, text=True, env=env, cwd=home, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "hello from chatgpt" in result.stdout
        generations = [r for r in subscription_hosts.received if r.path == "/backend-api/codex/responses"]
        assert generations and all(header(r, "host") == "chatgpt.com" for r in subscription_hosts.received)
        rows = proxy.rows(wait_for=len(generations))
        assert len(rows) == len(generations)  # its analytics, plugin and MCP calls are not AI calls
        for row in rows:
            assert (row["provider"], row["protocol"], row["task_id"], row["price_basis"]) == (
                "chatgpt",
                "openai_responses",
                TASK,
                "api-equivalent",
            )
            assert tokens_of(row) == {"input_total": 5123, "cache_read": 2048, "output_total": 77, "reasoning": 31}
            assert row["cost_usd"] > 0 and row["response_id"] == "resp_chatgpt_1"
    finally:
        proxy.stop()
