"""`meter run` knows each agent: the real Codex CLI, Gemini CLI and Claude Code (from npm, see
scripts/ensure-agent-clis) run non-interactively under `meter run` against the
loopback fake upstream through a real `meter proxy`; the gateway takes Anthropic
paths with and without /v1; the argv and environment built for the agents that
are not installed here; and `meter doctor --agent`."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from taskmeter import agents
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.meter_forks import METER
from tests.proxy_harness import RunningProxy, proxy_in_front_of

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}
ANTHROPIC_BODY = FIXTURE["anthropic/messages_nonstream_cache"].body
ANTHROPIC_REQUEST = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def shared_upstream():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def upstream(shared_upstream):
    shared_upstream.forget()
    return shared_upstream


@pytest.fixture(scope="module")
def shared_proxy(shared_upstream, tmp_path_factory):
    folder = tmp_path_factory.mktemp("proxy")
    running = proxy_in_front_of(folder, shared_upstream.port, ("openai", "anthropic", "gemini"))
    yield running
    running.stop()


@pytest.fixture
def proxy(shared_proxy, upstream):
    """The module's proxy, holding only what this test makes. Its tests' task IDs are
    two edits apart, so that none is refused as a typo of another's (tasks.creation_refusal)."""
    shared_proxy.begin_test()
    return shared_proxy


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return home


def _meter_run(proxy: RunningProxy, home: Path, task: str, command: list[str], **env: str) -> subprocess.CompletedProcess:
    """`meter run --task TASK -- COMMAND` with HOME at `home`, no key of the developer's, and no proxy of the machine's."""
    environ = {name: value for name, value in os.environ.items() if not name.endswith(("_API_KEY", "_PROXY", "_proxy"))}
    environ.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), **env)
    args = ["run", "--task", task, "--config", str(proxy.config), "--db", str(proxy.db_path), "--", *command]
    return METER.run(args, env=environ, timeout=60, cwd=str(home))


def _header(received, name: str) -> str | None:
    return {key.lower(): value for key, value in received.headers.items()}.get(name)


# ---------------------------------------------------------------- the gateway's two Anthropic forms


def test_the_gateway_takes_anthropic_paths_with_and_without_v1(proxy, upstream):
    """Claude Code appends /v1/messages to ANTHROPIC_BASE_URL; AI-SDK clients such
    as opencode append /messages. Both reach the upstream's /v1/messages, once each."""
    upstream.routes["/v1/messages"] = upstream.routes["/%761/messages"] = Scenario(body=ANTHROPIC_BODY)
    sent = {
        "/anthropic/v1/messages": None,
        "/anthropic/messages": None,
        "/t/P4-001/anthropic/messages?beta=true": "P4-001",
        "/anthropic/%761/messages": None,  # already versioned, as the upstream reads it
    }
    ids = {}
    for path, task in sent.items():
        response = httpx.post(proxy.origin + path, json=ANTHROPIC_REQUEST, headers={"x-api-key": "sk-ant-x"}, timeout=10)
        assert response.status_code == 200, (path, response.text)
        ids[response.headers["x-meter-interaction-id"]] = (path, task)
    received = [r.path.partition("?")[0] for r in upstream.received]
    assert received == ["/v1/messages", "/v1/messages", "/v1/messages", "/%761/messages"]
    rows = proxy.rows(wait_for=len(sent))
    assert sorted(row["id"] for row in rows) == sorted(ids)
    expected = json.loads(ANTHROPIC_BODY)["usage"]
    for row in rows:
        path, task = ids[row["id"]]
        assert (row["provider"], row["task_id"]) == ("anthropic", task), path
        assert row["output_total"] == expected["output_tokens"], path
        assert row["cache_read"] == expected["cache_read_input_tokens"], path


# ---------------------------------------------------------------- Codex CLI


def _installed(command: str) -> str:
    """The agent CLI, which `make test` installs (scripts/ensure-agent-clis): a test fails loudly without it."""
    path = shutil.which(command)
    assert path, f"{command} is not installed: run scripts/ensure-agent-clis"
    return path


def _responses_stream(response_id: str, text: str, usage: dict) -> bytes:
    """A Responses API SSE stream as Codex reads it: created, one message, completed with usage."""
    response = {
        "id": response_id,
        "object": "response",
        "created_at": 1,
        "status": "in_progress",
        "model": "gpt-5.4",
        "output": [],
    }
    item = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    events = [
        {"type": "response.created", "response": response},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
        {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": text},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": {**response, "status": "completed", "output": [item], "usage": usage}},
    ]
    return b"".join(
        f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': n})}\n\n".encode() for n, e in enumerate(events)
    )


def test_codex_under_meter_run_is_metered_over_http_with_its_usage_and_task(tmp_path, proxy, upstream):
    _installed("codex")
    usage = {
        "input_tokens": 5123,
        "input_tokens_details": {"cached_tokens": 2048},
        "output_tokens": 77,
        "output_tokens_details": {"reasoning_tokens": 31},
        "total_tokens": 5200,
    }
    upstream.routes["/v1/responses"] = Scenario(
        body=_responses_stream("resp_codex_1", "hello from the fake", usage), content_type="text/event-stream", chunk_size=256
    )
    home = _home(tmp_path)
    result = _meter_run(
        proxy, home, "P4-024", ["codex", "exec", "--skip-git-repo-check", "say hi"], OPENAI_API_KEY="sk-test-codex"
    )

    assert result.returncode == 0, result.stderr
    assert "hello from the fake" in result.stdout
    # HTTP+SSE from the start: no WebSocket attempt to fall back from.
    assert "WebSocket" not in result.stderr
    assert [r.path for r in upstream.received] == ["/v1/responses"] * len(upstream.received) and upstream.received
    assert all(_header(r, "authorization") == "Bearer sk-test-codex" for r in upstream.received)
    rows = proxy.rows(wait_for=len(upstream.received))
    assert len(rows) == len(upstream.received)  # each call stored exactly once
    for row in rows:
        assert (row["provider"], row["task_id"], row["attribution"]) == ("openai", "P4-024", "path")
        assert (row["input_total"], row["cache_read"], row["output_total"], row["reasoning"]) == (5123, 2048, 77, 31)
        assert row["usage_source"] == "reported"


# ---------------------------------------------------------------- Gemini CLI


def test_gemini_under_meter_run_is_metered_with_its_usage_and_task_and_its_settings_untouched(tmp_path, proxy, upstream):
    _installed("gemini")
    chunk = {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": "hello from the fake"}]}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": {
            "promptTokenCount": 4321,
            "cachedContentTokenCount": 1000,
            "candidatesTokenCount": 12,
            "thoughtsTokenCount": 5,
            "totalTokenCount": 4338,
        },
        "modelVersion": "gemini-2.5-flash",
    }
    upstream.routes["/v1beta/models/gemini-2.5-flash:streamGenerateContent"] = Scenario(
        body=b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n", content_type="text/event-stream"
    )
    home = _home(tmp_path)
    settings = home / ".gemini" / "settings.json"
    settings.parent.mkdir()
    # An API-key user's settings, as Gemini CLI writes them when the key is chosen.
    settings.write_text(
        '{\n  // mine\n  "security": {"auth": {"selectedType": "gemini-api-key"}},\n  "ui": {"theme": "ANSI"}\n}\n'
    )
    before = settings.read_bytes()

    result = _meter_run(
        proxy,
        home,
        "P4-047",
        ["gemini", "--skip-trust", "-m", "gemini-2.5-flash", "-p", "say hi"],
        GEMINI_API_KEY="test-gemini-key",
    )

    assert result.returncode == 0, result.stderr
    assert "hello from the fake" in result.stdout
    assert settings.read_bytes() == before
    assert upstream.received and all(_header(r, "x-goog-api-key") == "test-gemini-key" for r in upstream.received)
    rows = proxy.rows(wait_for=len(upstream.received))
    assert len(rows) == len(upstream.received) == 1
    row = rows[0]
    assert (row["provider"], row["task_id"], row["model"]) == ("gemini", "P4-047", "gemini-2.5-flash")
    # Gemini states thoughts apart from candidates; the meter counts them in the output.
    assert (row["input_total"], row["cache_read"], row["output_total"], row["reasoning"]) == (4321, 1000, 17, 5)


# ---------------------------------------------------------------- Claude Code

CLAUDE_STREAM = FIXTURE["anthropic/messages_stream_cache_read"]


def test_claude_code_under_meter_run_is_metered_with_its_usage_and_task(tmp_path, proxy, upstream):
    _installed("claude")
    upstream.routes["/v1/messages"] = Scenario(body=CLAUDE_STREAM.body, content_type=CLAUDE_STREAM.content_type, chunk_size=512)
    result = _meter_run(proxy, _home(tmp_path), "P4-068", ["claude", "-p", "say hi"], ANTHROPIC_API_KEY="sk-ant-test-claude")

    assert result.returncode == 0, result.stderr
    assert upstream.received and all(_header(r, "x-api-key") == "sk-ant-test-claude" for r in upstream.received)
    rows = proxy.rows(wait_for=len(upstream.received))
    assert len(rows) == len(upstream.received)
    expected = CLAUDE_STREAM.meta["normalized"]
    for row in rows:
        assert (row["provider"], row["task_id"], row["attribution"]) == ("anthropic", "P4-068", "path")
        assert {name: row[name] for name in ("input_total", "cache_read", "cache_write", "output_total")} == {
            name: expected[name] for name in ("input_total", "cache_read", "cache_write", "output_total")
        }
        assert row["client_session"]  # Claude Code's session header, kept as the meter keeps it


# ---------------------------------------------------------------- the argv and environment per agent

GATEWAY = "http://127.0.0.1:8877/t/P4-020"
METER_ENV = {
    "OPENAI_BASE_URL": GATEWAY + "/openai/v1",
    "ANTHROPIC_BASE_URL": GATEWAY + "/anthropic",
    "GOOGLE_GEMINI_BASE_URL": GATEWAY + "/gemini",
    "HTTPS_PROXY": "http://task:P4-020@127.0.0.1:8877",
}


def _machine(tmp_path: Path, **env: str) -> agents.Machine:
    return agents.Machine(env, _home(tmp_path), tmp_path)


def _prepare(tmp_path: Path, argv: list[str], **env: str):
    return agents.prepare(argv, {**METER_ENV}, _machine(tmp_path, **env))


CODEX_OPTIONS = [
    "-c",
    'model_provider="taskmeter"',
    "-c",
    'model_providers.taskmeter={name="taskmeter", base_url="http://127.0.0.1:8877/t/P4-020/openai/v1", '
    'wire_api="responses", env_key="OPENAI_API_KEY", supports_websockets=false}',
]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["codex", "exec", "hi"], ["codex", *CODEX_OPTIONS, "exec", "hi"]),
        (["/opt/bin/codex"], ["/opt/bin/codex", *CODEX_OPTIONS]),
        (
            ["npx", "-y", "@openai/codex@0.171.0", "exec", "hi"],
            ["npx", "-y", "@openai/codex@0.171.0", *CODEX_OPTIONS, "exec", "hi"],
        ),
        (["pnpm", "dlx", "@openai/codex"], ["pnpm", "dlx", "@openai/codex", *CODEX_OPTIONS]),
        (["npx", "-p", "@openai/codex", "codex", "exec"], ["npx", "-p", "@openai/codex", "codex", *CODEX_OPTIONS, "exec"]),
    ],
)
def test_codex_gets_the_gateway_as_a_provider_without_websockets(tmp_path, argv, expected):
    built, env, agent = _prepare(tmp_path, argv, OPENAI_API_KEY="sk-x")
    assert agent.name == "codex"
    assert built == expected
    assert env == METER_ENV


def test_codex_keeps_a_chatgpt_login_and_a_provider_of_its_own(tmp_path):
    codex_home = _home(tmp_path) / ".codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text('model_provider = "azure"\n')
    assert _prepare(tmp_path, ["codex"])[0] == ["codex"]  # the user's Azure provider goes where its table says
    assert _prepare(tmp_path, ["codex", "-c", "model_provider=ollama"])[0] == ["codex", "-c", "model_provider=ollama"]
    (codex_home / "config.toml").unlink()
    (codex_home / "auth.json").write_text(json.dumps({"auth_mode": "chatgpt", "tokens": {"access_token": "t"}}))
    # Subscription calls go to chatgpt.com, not a base URL: HTTPS-proxy mode is their only way.
    assert _prepare(tmp_path, ["codex", "exec", "hi"])[0] == ["codex", "exec", "hi"]


def test_gemini_keeps_its_base_url_only_when_its_settings_name_the_api_key(tmp_path):
    # No auth type: GOOGLE_GEMINI_BASE_URL would make Gemini CLI pick "gateway" and exit 41.
    _, env, agent = _prepare(tmp_path, ["gemini", "-p", "hi"], GEMINI_API_KEY="k")
    assert agent.name == "gemini" and "GOOGLE_GEMINI_BASE_URL" not in env and env["HTTPS_PROXY"]
    settings = _home(tmp_path) / ".gemini" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}}}))
    argv, env, _ = _prepare(tmp_path, ["npx", "@google/gemini-cli", "-p", "hi"])
    assert argv == ["npx", "@google/gemini-cli", "-p", "hi"]
    assert env == METER_ENV
    # The workspace's settings win over the user's, as in Gemini CLI.
    (tmp_path / ".gemini").mkdir()
    (tmp_path / ".gemini" / "settings.json").write_text(json.dumps({"security": {"auth": {"selectedType": "oauth-personal"}}}))
    assert "GOOGLE_GEMINI_BASE_URL" not in _prepare(tmp_path, ["gemini"])[1]


@pytest.mark.parametrize(
    ("argv", "name", "added"),
    [
        (["aider", "--model", "openai/gpt-4o"], "aider", {"OPENAI_API_BASE": GATEWAY + "/openai/v1"}),
        (["uvx", "aider-chat@latest"], "aider", {"OPENAI_API_BASE": GATEWAY + "/openai/v1"}),
        (["uvx", "--from", "aider-chat", "aider", "--model", "x"], "aider", {"OPENAI_API_BASE": GATEWAY + "/openai/v1"}),
        (["/home/me/.local/bin/opencode", "run", "hi"], "opencode", {}),
        (["npx", "opencode-ai"], "opencode", {}),
        (["llm", "-m", "gpt-4o-mini", "hi"], "llm", {}),
        (["claude", "-p", "hi"], "claude", {}),
    ],
)
def test_other_agents_get_the_variables_they_read(tmp_path, argv, name, added):
    built, env, agent = _prepare(tmp_path, argv)
    assert agent.name == name
    assert built == argv
    assert env == {**METER_ENV, **added}


def test_other_commands_are_left_as_they_are(tmp_path):
    for argv in (["python", "-c", "pass"], ["npx", "cowsay"], ["npx"], ["codex-helper"], ["npx", "-c", "codex exec hi"]):
        assert _prepare(tmp_path, argv) == (argv, METER_ENV, None)


# ---------------------------------------------------------------- meter doctor --agent


def _doctor(tmp_path: Path, agent: str, **env: str) -> subprocess.CompletedProcess:
    environ = {name: value for name, value in os.environ.items() if not name.endswith("_API_KEY")}
    environ.update(HOME=str(_home(tmp_path)), METER_DB=str(tmp_path / "meter.db"), XDG_CONFIG_HOME=str(tmp_path / "xdg"), **env)
    return METER.run(["doctor", "--agent", agent], env=environ, timeout=30)


def test_doctor_tells_a_chatgpt_codex_login_from_an_api_key(tmp_path):
    codex_home = _home(tmp_path) / ".codex"
    codex_home.mkdir()
    (codex_home / "auth.json").write_text(json.dumps({"tokens": {"access_token": "t", "refresh_token": "r"}}))
    chatgpt = _doctor(tmp_path, "codex")
    assert chatgpt.returncode == 0  # chatgpt.com is intercepted: tests/test_subscription.py meters it
    line = next(line for line in chatgpt.stdout.splitlines() if "ChatGPT login" in line)
    assert line.startswith("ok") and "chatgpt.com" in line and "HTTPS-proxy mode" in line
    (codex_home / "auth.json").write_text(json.dumps({"auth_mode": "apikey", "OPENAI_API_KEY": "sk-x"}))
    api_key = _doctor(tmp_path, "codex")
    assert "API key (auth.json)" in api_key.stdout and "model_provider=taskmeter" in api_key.stdout
    assert not any(line.startswith("FAIL") and "login" in line for line in api_key.stdout.splitlines())


def test_doctor_on_gemini_logins(tmp_path):
    settings = _home(tmp_path) / ".gemini" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(json.dumps({"security": {"auth": {"selectedType": "oauth-personal"}}}))
    oauth = _doctor(tmp_path, "gemini")
    assert oauth.returncode == 0 and "Code Assist" in oauth.stdout and "metered in HTTPS-proxy mode" in oauth.stdout
    settings.write_text(json.dumps({}))
    unset = _doctor(tmp_path, "gemini", GEMINI_API_KEY="k", GOOGLE_GEMINI_BASE_URL="http://127.0.0.1:8877/gemini")
    assert "exits 41" in unset.stdout and unset.returncode == 1
    settings.write_text(json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}}}))
    api_key = _doctor(tmp_path, "gemini", GEMINI_API_KEY="k")
    assert "metered through the gateway (GOOGLE_GEMINI_BASE_URL)" in api_key.stdout


def test_doctor_on_opencode_providers_sent_elsewhere(tmp_path):
    config = tmp_path / "xdg" / "opencode" / "opencode.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"provider": {"anthropic": {"options": {"baseURL": "https://gw.example/anthropic"}}}}))
    result = _doctor(tmp_path, "opencode")
    assert result.returncode == 1
    assert "sends provider 'anthropic' to https://gw.example/anthropic" in result.stdout


def test_doctor_on_a_claude_ai_login_and_on_agents_the_meter_cannot_reach(tmp_path):
    claude_dir = _home(tmp_path) / ".claude"
    claude_dir.mkdir()
    (claude_dir / ".credentials.json").write_text(json.dumps({"claudeAiOauth": {"accessToken": "t"}}))
    claude = _doctor(tmp_path, "claude")
    assert "claude.ai login (subscription): metered through the gateway" in claude.stdout
    bedrock = _doctor(tmp_path, "claude", CLAUDE_CODE_USE_BEDROCK="1")
    assert bedrock.returncode == 1 and "Bedrock: the meter cannot yet read" in bedrock.stdout
    vertex = _doctor(tmp_path, "claude", CLAUDE_CODE_USE_VERTEX="1")
    assert "Vertex AI: metered in HTTPS-proxy mode" in vertex.stdout
    cursor = _doctor(tmp_path, "cursor")
    assert cursor.returncode == 1 and cursor.stdout.startswith("FAIL") and "Cursor's servers" in cursor.stdout
    unknown = _doctor(tmp_path, "nosuchagent")
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
