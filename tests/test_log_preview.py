"""Calls to read (issue 24): `meter log` previews each call, `--search` shows the
line that matched, `--session` narrows to one agent session (the ID a loop alert
names, as it names it), and `meter show` says why the call has its task and which
program made it. Through a real `meter proxy`, the official SDKs and the loopback
fake upstream; the terminal's width through a real pseudo-terminal."""

import fcntl
import json
import os
import pty
import struct
import subprocess
import termios
import uuid

import anthropic
import openai
import pytest

from taskmeter.store import alerts, connection, tasks
from taskmeter.timefmt import now_stored
from tests.fake_upstream import FakeUpstream, Scenario
from tests.proxy_harness import VENV_BIN, RunningProxy, claude_code_turn, meter, meter_json, proxy_in_front_of

pytestmark = pytest.mark.e2e

SESSION = "5f0c1b9e-2d4a-4c3e-9d7a-1b2c3d4e5f60"


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, upstream):
    """The module's proxy: its calls are the three of `calls`, which its tests read."""
    running = proxy_in_front_of(tmp_path_factory.mktemp("calls"), upstream.port)
    yield running
    assert running.stop() == 0


def in_terminal(proxy: RunningProxy, columns: int, *args: str) -> str:
    """`meter ARGS` in a real pseudo-terminal `columns` wide: what a person sees."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    environ = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(
        [str(VENV_BIN / "meter"), *args, "--db", str(proxy.db_path)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**environ, "TERM": "dumb"},
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the command is done
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(30) == 0, output
    return output.decode().replace("\r\n", "\n")


def _message(text: str) -> Scenario:
    body = {
        "id": f"msg_{uuid.uuid4().hex[:12]}",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 120, "output_tokens": 30},
    }
    return Scenario(body=json.dumps(body).encode())


def _chat(text: str) -> Scenario:
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 8, "total_tokens": 58},
    }
    return Scenario(body=json.dumps(body).encode())


def _sdk_chat(proxy: RunningProxy, prompt: str, task: str | None = None) -> None:
    prefix = f"/t/{task}" if task else ""
    client = openai.OpenAI(base_url=f"{proxy.origin}{prefix}/openai/v1", api_key="sk-test", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])


@pytest.fixture(scope="module")
def calls(proxy, upstream):
    """Two Claude Code turns of one session while P3-001 is current, then an SDK chat to /t/P3-002/."""
    assert meter(proxy, "set-task", "P3-001").returncode == 0
    upstream.routes["/v1/messages"] = _message("The parser drops the BOM.\nThen it reads the header.")
    claude_code_turn(proxy, "Why does the CSV import fail on the first column?", SESSION)
    upstream.routes["/v1/messages"] = _message("Fixed: strip the BOM before splitting.")
    claude_code_turn(proxy, "Please fix it", SESSION)
    upstream.routes["/v1/chat/completions"] = _chat("Paris is the capital of France.")
    _sdk_chat(proxy, "What is the capital of France?", task="P3-002")
    rows = proxy.rows(wait_for=3)
    assert len(rows) == len(upstream.received) == 3  # every call stored once
    return {row["model"] + str(index): row for index, row in enumerate(rows)}, rows


def test_the_log_previews_each_response_in_a_wide_terminal_and_not_in_a_narrow_one(proxy, calls):
    wide = in_terminal(proxy, 160, "log")
    assert "Preview" in wide.splitlines()[0]
    assert "Fixed: strip the BOM before splitting." in wide
    assert "The parser drops the BOM." in wide and "Then it reads the header." not in wide  # its first line
    assert "Paris is the capital of France." in wide
    narrow = in_terminal(proxy, 80, "log")
    assert "Preview" not in narrow and "Paris" not in narrow
    asked = in_terminal(proxy, 80, "log", "--preview")
    assert "Preview" in asked.splitlines()[0] and "Paris" in asked
    assert all(len(line) <= 80 for line in asked.splitlines())
    assert "Preview" not in in_terminal(proxy, 160, "log", "--no-preview")
    listed = meter_json(proxy, "log")
    assert [call["preview"] for call in listed] == [
        "Paris is the capital of France.",
        "Fixed: strip the BOM before splitting.",
        "The parser drops the BOM.",
    ]
    piped = meter(proxy, "log").stdout.splitlines()
    assert "Preview" not in piped[0]  # piped output keeps its columns unless asked
    assert meter(proxy, "log", "--preview").stdout.splitlines()[1].endswith("\tParis is the capital of France.")


def test_search_shows_where_the_text_matched(proxy, calls):
    found = meter_json(proxy, "log", "--search", "bom")
    assert [call["match"] for call in found] == [
        {"field": "response", "snippet": "Fixed: strip the BOM before splitting."},
        {"field": "response", "snippet": "The parser drops the BOM."},
    ]
    asked = meter_json(proxy, "log", "--search", "CSV import")
    [call] = asked
    assert call["match"] == {"field": "prompt", "snippet": "Why does the CSV import fail on the first column?"}
    shown = in_terminal(proxy, 140, "log", "--search", "capital")
    assert "Match" in shown.splitlines()[0]
    assert "prompt: What is the capital of France?" in shown  # the first place it is: the question
    assert len(shown.strip().splitlines()) == 2


def test_session_filters_to_the_session_a_loop_alert_names(proxy, calls):
    _, rows = calls
    db = connection.connect(proxy.db_path)
    try:
        alert = alerts.raise_alert(db, "loop", "loop:x", f"loop: session {SESSION} sent 8 calls of near-identical requests")
    finally:
        db.close()
    named = alert["message"].split("session ")[1].split(" ")[0]
    in_session = meter_json(proxy, "log", "--session", named)
    assert len(in_session) == 2 and {call["client_session"] for call in in_session} == {SESSION}
    assert meter_json(proxy, "log", "--session", SESSION[:8]) == in_session  # the short form reports show
    chat = next(row for row in rows if row["model"] == "gpt-4o-mini")
    assert [call["interaction_id"] for call in meter_json(proxy, "log", "--session", chat["session_id"])] == [chat["id"]]
    unknown = meter(proxy, "log", "--session", "no-such-session")
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1 and "unknown session" in unknown.stderr


def test_show_says_why_the_call_has_its_task_and_which_program_made_it(proxy, calls):
    _, rows = calls
    by_model = {row["model"]: row for row in rows}
    claude = meter_json(proxy, "show", by_model["claude-sonnet-4-6"]["id"])
    assert claude["attribution"] == "current"
    assert claude["attribution_reason"] == "P3-001 was the current task when it began (`meter set-task`)"
    assert claude["client_name"] == "Claude Code 2.1.197"
    chat = meter_json(proxy, "show", by_model["gpt-4o-mini"]["id"])
    assert chat["attribution"] == "path" and chat["attribution_reason"].startswith("named by the request: a /t/P3-002/ path")
    assert chat["client_name"] == f"openai-python {openai.__version__}"
    text = meter(proxy, "show", by_model["gpt-4o-mini"]["id"]).stdout
    assert f"Client:       openai-python {openai.__version__} (OpenAI/Python {openai.__version__})" in text
    assert "Attributed:   named by the request: a /t/P3-002/ path" in text


@pytest.fixture
def own_proxy(tmp_path):
    """A proxy of the test's own: it sets tasks and makes a call the module's proxy's log has not."""
    with FakeUpstream() as upstream:
        running = proxy_in_front_of(tmp_path, upstream.port)
        yield running, upstream
        running.stop()


def test_show_tells_a_bound_session_from_the_current_task(own_proxy):
    """A Claude Code session bound to a task (`meter claude install`'s hook) is its own
    reason, no longer stored as `header` like the x-meter-task header."""
    proxy, upstream = own_proxy
    assert meter(proxy, "set-task", "P3-009").returncode == 0
    assert meter(proxy, "set-task", "P4-100", "--create").returncode == 0  # another terminal's task: the session's wins
    db = connection.connect(proxy.db_path)
    try:
        tasks.bind_session(db, SESSION, "P3-009", now_stored())
    finally:
        db.close()
    upstream.routes["/v1/messages"] = _message("ok")
    claude_code_turn(proxy, "go on", SESSION)
    [row] = proxy.rows(wait_for=1)
    assert len(upstream.received) == 1
    shown = meter_json(proxy, "show", row["id"])
    assert (shown["task_id"], shown["attribution"]) == ("P3-009", "session")
    assert shown["attribution_reason"] == f"its agent session {SESSION} is bound to P3-009 (`meter claude install`)"


def test_each_sdk_s_own_user_agent_names_its_client(tmp_path, monkeypatch):
    """The User-Agent each official SDK installed here really sends, through the proxy,
    read by the one table in taskmeter/clients.py."""
    from google import genai

    from tests.fixtures import ALL

    fixture = {f.name: f for f in ALL}
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = _chat("ok")
        upstream.routes["/v1/messages"] = _message("ok")
        upstream.routes["/v1beta/models/gemini-2.5-flash:generateContent"] = Scenario(body=fixture["gemini/nonstream_basic"].body)
        running = proxy_in_front_of(tmp_path, upstream.port, providers=("openai", "anthropic", "gemini"))
        try:
            _sdk_chat(running, "hi")
            anthropic.Anthropic(base_url=f"{running.origin}/anthropic", api_key="sk-ant-test", max_retries=0).messages.create(
                model="claude-sonnet-4-6", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
            )
            monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", f"{running.origin}/gemini")
            gemini = genai.Client(api_key="sk-test")  # kept: a client left to the collector closes its connection
            gemini.models.generate_content(model="gemini-2.5-flash", contents="hi")
            rows = running.rows(wait_for=3)
            assert len(rows) == len(upstream.received) == 3  # every call stored once
            named = {meter_json(running, "show", row["id"])["client_name"] for row in rows}
        finally:
            running.stop()
    assert named == {
        f"openai-python {openai.__version__}",
        f"anthropic-python {anthropic.__version__}",
        f"google-genai {genai.__version__}",
    }
