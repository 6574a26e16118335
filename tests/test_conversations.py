"""One conversation is one conversation: a tool loop whose client moves its cache
marker stays one conversation; separate runs of one first prompt are separate
conversations (a conversation belongs to one task and one session); Codex's own
session is kept, and sessions and context switches follow it. Through a real
`meter proxy` and the official SDKs (and the real Codex CLI under `meter run`)
against the loopback fake upstream; the hash itself on requests shaped as the
agents send them."""

import copy
import json
import uuid

import anthropic
import httpx
import openai
import pytest

from taskmeter.protocols.conversation import root_hash
from taskmeter.store import calls, connection, interactions, migrations
from taskmeter.store.calls import CallRow
from taskmeter.store.interactions import Interaction
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import proxy_in_front_of
from tests.test_agents import _home, _installed, _meter_run, _responses_stream

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}
EPHEMERAL = {"type": "ephemeral"}
SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
    {"type": "text", "text": "You are an interactive CLI tool that helps users with software engineering tasks."},
]
TOOLS = [{"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {"path": {}}}}]
TOOL_USE = {
    "id": "msg_01ToolLoop",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6",
    "content": [{"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {"path": "README.md"}}],
    "stop_reason": "tool_use",
    "usage": {"input_tokens": 12, "cache_creation_input_tokens": 900, "cache_read_input_tokens": 0, "output_tokens": 20},
}


def _claude_code_turns(prompt: str = "Fix the failing test in tests/test_math.py") -> tuple[dict, dict]:
    """The first two requests of a Claude Code tool loop, as it sends them: the
    cache marker on the system prompt and on the newest message, which the second
    request moves from the first user message to the tool result it appends."""
    first = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 8192,
        "system": [SYSTEM[0], {**SYSTEM[1], "cache_control": EPHEMERAL}],
        "tools": [{**TOOLS[0], "cache_control": EPHEMERAL}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>As you answer, use the context below.</system-reminder>"},
                    {"type": "text", "text": prompt, "cache_control": EPHEMERAL},
                ],
            }
        ],
    }
    second = copy.deepcopy(first)
    del second["messages"][0]["content"][1]["cache_control"]
    second["messages"] += [
        {"role": "assistant", "content": TOOL_USE["content"]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "# math", "cache_control": EPHEMERAL}],
        },
    ]
    return first, second


# ---------------------------------------------------------------- the root's hash


def test_a_tool_loop_that_moves_its_cache_marker_keeps_its_root():
    first, second = _claude_code_turns()
    assert root_hash("anthropic", first) == root_hash("anthropic", second) is not None
    other, _ = _claude_code_turns("Write a changelog entry")
    assert root_hash("anthropic", other) != root_hash("anthropic", first)


def test_cache_markers_are_ignored_in_every_protocol_that_carries_them():
    # OpenAI-compatible gateways (OpenRouter, LiteLLM) take Anthropic's marker on content parts.
    part = {"type": "text", "text": "Refactor the parser"}
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [part]}]}
    marked = copy.deepcopy(chat)
    marked["messages"][1]["content"][0]["cache_control"] = EPHEMERAL
    assert root_hash("openai_chat", chat) == root_hash("openai_chat", marked)
    # Bedrock Converse marks a cache end with a block of its own.
    converse = {"system": [{"text": "Be brief."}], "messages": [{"role": "user", "content": [{"text": "Refactor"}]}]}
    pointed = copy.deepcopy(converse)
    pointed["system"].append({"cachePoint": {"type": "default"}})
    pointed["messages"][0]["content"].append({"cachePoint": {"type": "default"}})
    assert root_hash("bedrock", converse) == root_hash("bedrock", pointed)
    # What the conversation says still counts.
    converse["messages"][0]["content"][0]["text"] = "Refactor the lexer"
    assert root_hash("bedrock", converse) != root_hash("bedrock", pointed)


# ---------------------------------------------------------------- through a real proxy


@pytest.fixture(scope="module")
def shared_upstream():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def upstream(shared_upstream):
    shared_upstream.forget()
    shared_upstream.routes["/v1/messages"] = Scenario(body=json.dumps(TOOL_USE).encode())
    shared_upstream.routes["/v1/responses"] = Scenario(body=FIXTURE["openai_responses/responses_nonstream_basic"].body)
    return shared_upstream


@pytest.fixture(scope="module")
def shared_proxy(tmp_path_factory, shared_upstream):
    folder = tmp_path_factory.mktemp("conversations")
    running = proxy_in_front_of(folder, shared_upstream.port, ("openai", "anthropic", "gemini"))
    yield running
    assert running.stop() == 0


@pytest.fixture
def proxy(shared_proxy, upstream):
    """The module's proxy (each test has tasks of its own), holding only what this test makes."""
    shared_proxy.begin_test()
    return shared_proxy


def _anthropic(proxy, task: str | None = None) -> "anthropic.Anthropic":
    prefix = f"/t/{task}" if task else ""
    return anthropic.Anthropic(base_url=f"{proxy.origin}{prefix}/anthropic", api_key="sk-test", max_retries=0)


def _tool_loop(client: "anthropic.Anthropic", prompt: str = "Fix the failing test in tests/test_math.py", **headers) -> None:
    """Two steps of a tool loop with the Anthropic SDK: the tool call it answers
    the first step with goes back, with its result, in the second."""
    first, second = _claude_code_turns(prompt)
    answer = client.messages.create(**first, extra_headers=headers)
    assert answer.stop_reason == "tool_use"
    second["messages"][1]["content"] = [block.model_dump() for block in answer.content]
    client.messages.create(**second, extra_headers=headers)


def test_a_tool_loop_with_a_moving_cache_marker_is_one_conversation(proxy, upstream):
    client = _anthropic(proxy, "P5-001")
    _tool_loop(client)
    _tool_loop(client, "Write a changelog entry")

    rows = proxy.rows(wait_for=4)
    assert len(rows) == len(upstream.received) == 4  # each call stored exactly once
    sent = [json.loads(r.body) for r in upstream.received]
    assert "cache_control" in sent[0]["messages"][0]["content"][1]
    assert "cache_control" not in sent[1]["messages"][0]["content"][1] and "cache_control" in sent[1]["messages"][2]["content"][0]
    loop, other = rows[:2], rows[2:]
    assert loop[0]["conversation_id"] == loop[1]["conversation_id"] is not None
    assert loop[0]["session_id"] == loop[1]["session_id"] and not loop[1]["context_switch"]
    assert other[0]["conversation_id"] == other[1]["conversation_id"] != loop[0]["conversation_id"]
    assert [row["input_total"] for row in rows] == [912] * 4


def test_runs_with_one_first_prompt_are_a_conversation_each(proxy, upstream):
    """Two tasks' runs of the same first prompt, and two Claude Code sessions of
    one task: the same root, four conversations; each run's two calls share one."""
    _tool_loop(_anthropic(proxy, "P5-002"))
    _tool_loop(_anthropic(proxy, "P5-003"))
    sessions = [str(uuid.uuid4()), str(uuid.uuid4())]
    for session in sessions:
        _tool_loop(_anthropic(proxy, "P5-004"), **{"x-claude-code-session-id": session})

    rows = proxy.rows(wait_for=8)
    assert len(rows) == len(upstream.received) == 8
    runs = [rows[n : n + 2] for n in range(0, 8, 2)]
    assert len({row["conversation_root"] for row in rows}) == 1
    assert [run[0]["task_id"] for run in runs] == ["P5-002", "P5-003", "P5-004", "P5-004"]
    assert all(run[0]["conversation_id"] == run[1]["conversation_id"] for run in runs)
    assert len({run[0]["conversation_id"] for run in runs}) == 4
    assert [run[0]["session_id"] for run in runs[2:]] == sessions
    # The second session is new to its task: a context switch; its second call is not.
    assert [row["context_switch"] for row in rows[4:]] == [0, 0, 1, 0]


def _responses(proxy, task: str) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{proxy.origin}/t/{task}/openai/v1", api_key="sk-test", max_retries=0)


def test_codex_sessions_are_kept_and_context_switches_follow_them(proxy, upstream):
    """Requests shaped as Codex 0.171 sends them: its session in the `session-id`
    header (and `thread-id`), and in client_metadata; a WebSocket frame has only the body."""
    client = _responses(proxy, "P5-005")
    one, two = str(uuid.uuid4()), str(uuid.uuid4())

    def turn(session: str, headers: bool = True) -> None:
        client.responses.create(
            model="gpt-5.5",
            instructions="You are Codex, a coding agent.",
            input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "say hi"}]}],
            prompt_cache_key=session,
            extra_body={"client_metadata": {"session_id": session, "thread_id": session}},
            extra_headers={"session-id": session, "thread-id": session} if headers else {},
        )

    turn(one)
    turn(two)
    turn(one, headers=False)
    turn(two)

    rows = proxy.rows(wait_for=4)
    assert len(rows) == len(upstream.received) == 4
    assert [row["client_session"] for row in rows] == [one, two, one, two]
    assert [row["session_id"] for row in rows] == [one, two, one, two]
    # Only a session new to the task is a switch; going back to one it had is not.
    assert [row["context_switch"] for row in rows] == [0, 1, 0, 0]
    assert rows[0]["conversation_id"] == rows[2]["conversation_id"] != rows[1]["conversation_id"]
    # Rework after a flag follows the flagged call's session: one's later call, not two's.
    db = connection.connect(proxy.db_path)
    try:
        interactions.flag(db, rows[0]["id"])
        rework = [dict(r) for r in db.execute("SELECT session_key, flagged_id, calls FROM session_rework")]
    finally:
        db.close()
    assert rework == [{"session_key": one, "flagged_id": rows[0]["id"], "calls": 1}]


def test_gemini_cli_code_assist_sessions_are_kept(proxy, upstream):
    """Gemini CLI on a Google login names its session in the Code Assist envelope
    (`request.session_id`); each prompt has its own `user_prompt_id`."""
    upstream.routes["/v1internal:generateContent"] = Scenario(body=FIXTURE["gemini/nonstream_basic"].body)
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    with httpx.Client(base_url=f"{proxy.origin}/t/P5-009/gemini") as client:
        for session in (one, two, one):
            envelope = {
                "model": "gemini-2.5-flash",
                "project": "sunny-lane-1234",
                "user_prompt_id": f"{session}########0",
                "request": {"contents": [{"role": "user", "parts": [{"text": "say hi"}]}], "session_id": session},
            }
            assert client.post("/v1internal:generateContent", json=envelope).status_code == 200

    rows = proxy.rows(wait_for=3)
    assert len(rows) == len(upstream.received) == 3
    assert [row["client_session"] for row in rows] == [row["session_id"] for row in rows] == [one, two, one]
    assert [row["context_switch"] for row in rows] == [0, 1, 0]


def test_a_retagged_call_leaves_its_conversation_for_the_new_task(proxy, upstream):
    _tool_loop(_anthropic(proxy, "P5-006"))
    rows = proxy.rows(wait_for=2)
    db = connection.connect(proxy.db_path)
    try:
        calls.retag(db, [rows[1]["id"]], "P5-007", create=True)
        moved = db.execute("SELECT task_id, conversation_id FROM interactions WHERE id = ?", (rows[1]["id"],)).fetchone()
    finally:
        db.close()
    assert moved["task_id"] == "P5-007" and moved["conversation_id"] not in (None, rows[0]["conversation_id"])


def test_a_conversation_begun_before_the_upgrade_continues_its_session(db_path, monkeypatch):
    first, second = _claude_code_turns()
    root = root_hash("anthropic", first)
    before = [m for m in migrations.MIGRATIONS if m.__name__ < "m016"]
    monkeypatch.setattr(migrations, "MIGRATIONS", before)
    old = connection.connect(db_path)
    with old:
        old.execute(
            "INSERT INTO interactions (id, started_at, task_id, protocol, conversation_id, session_id)"
            " VALUES ('00000005old', '2026-01-01T00:00:00.000000Z', NULL, 'anthropic', ?, '00000005old')",
            (root,),
        )
    old.close()
    monkeypatch.undo()
    db = connection.connect(db_path)
    try:
        later = Interaction(
            id="00000005new",
            started_at="2026-01-01T00:05:00.000000Z",
            protocol="anthropic",
            conversation_root=root_hash("anthropic", second),
        )
        with connection.write_transaction(db):
            calls.store_calls(db, [CallRow(later)])
        rows = {
            r["id"]: dict(r) for r in db.execute("SELECT id, conversation_root, conversation_id, session_id FROM interactions")
        }
    finally:
        db.close()
    assert rows["00000005old"]["conversation_root"] == rows["00000005old"]["conversation_id"] == root
    assert rows["00000005new"]["session_id"] == "00000005old"
    assert rows["00000005new"]["conversation_id"] not in (None, root)


# ---------------------------------------------------------------- the real Codex CLI


def _rollout_sessions(home) -> list[str]:
    """The session IDs in Codex's own logs (the first line of each rollout file)."""
    found = []
    for path in sorted((home / ".codex" / "sessions").rglob("rollout-*.jsonl")):
        first = json.loads(path.read_text().splitlines()[0])
        assert first["type"] == "session_meta"
        found.append(first["payload"]["id"])
    return found


def test_codex_under_meter_run_keeps_its_own_session(tmp_path, proxy, upstream):
    _installed("codex")
    usage = {"input_tokens": 900, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 9, "total_tokens": 909}
    upstream.routes["/v1/responses"] = Scenario(
        body=_responses_stream("resp_codex_session", "hi", usage), content_type="text/event-stream", chunk_size=256
    )
    home = _home(tmp_path)
    for _ in range(2):  # two runs of one prompt in one task
        result = _meter_run(proxy, home, "P8-130", ["codex", "exec", "--skip-git-repo-check", "say hi"], OPENAI_API_KEY="sk-t")
        assert result.returncode == 0, result.stderr

    rows = proxy.rows(wait_for=len(upstream.received))
    assert len(rows) == len(upstream.received) >= 2  # each call stored exactly once
    sent = {r.headers["session-id"] for r in upstream.received}
    logged = _rollout_sessions(home)
    assert len(logged) == 2 and set(logged) == sent
    assert {row["session_id"] for row in rows} == {row["client_session"] for row in rows} == sent
    # The second run's first call starts a session new to the task.
    starts = {session: min((r for r in rows if r["session_id"] == session), key=lambda r: r["started_at"]) for session in sent}
    assert sorted(row["context_switch"] for row in starts.values()) == [0, 1]
    assert len({row["conversation_root"] for row in rows if row["operation"] == "generate"}) == 1
    assert len({row["conversation_id"] for row in rows if row["operation"] == "generate"}) == 2
