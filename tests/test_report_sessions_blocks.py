"""Reports people hand on (issue 24): `meter report sessions` gives a line per agent
session (Claude Code, Codex, Gemini CLI) with its tasks, time, calls, tokens and
cost; `meter report blocks` gives the 5-hour windows subscription plans count in,
found as ccusage finds them, with the active one's time left, burn rate and
projection. Both in every format, their --json typed in analytics/records.py, and
neither loads anything heavy. Through a real `meter proxy` and the official SDKs
for the sessions; the blocks' rules over calls stored at known moments."""

import ast
import csv
import io
import json
import os
import subprocess
import sys
import uuid

import openai
import pytest

from taskmeter.analytics import records
from taskmeter.analytics.windows import block_report
from taskmeter.store.calls import CallRow, store_calls
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import RunningProxy, claude_code_turn, meter, meter_json, proxy_in_front_of
from tests.test_read_imports import HEAVY
from tests.test_records import assert_shape

FIXTURE = {f.name: f for f in ALL}
CLAUDE_SESSION = "0b6e2c1a-7f3d-4e9b-8a21-5c4d3e2f1a0b"
CODEX_SESSION = "019a4c2e-codex-session"


# ---------------------------------------------------------------- sessions, through a real proxy


@pytest.fixture
def upstream():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def proxy(tmp_path, upstream):
    running = proxy_in_front_of(tmp_path, upstream.port, providers=("openai", "anthropic", "gemini"))
    yield running
    running.stop()


def _message(input_tokens: int, output_tokens: int) -> Scenario:
    body = {
        "id": f"msg_{uuid.uuid4().hex[:12]}",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [{"type": "text", "text": "done"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }
    return Scenario(body=json.dumps(body).encode())


def _codex(proxy: RunningProxy, prompt: str) -> None:
    """A turn as Codex sends it: the Responses API, its User-Agent and its session header."""
    client = openai.OpenAI(
        base_url=f"{proxy.origin}/openai/v1",
        api_key="sk-test",
        max_retries=0,
        default_headers={
            "user-agent": "codex_cli_rs/0.169.0 (Debian 12.0.0; x86_64) xterm-256color",
            "session-id": CODEX_SESSION,
        },
    )
    client.responses.create(model="gpt-5-codex", input=prompt)


@pytest.mark.e2e
def test_a_line_per_agent_session_with_its_tasks_calls_tokens_and_cost(proxy, upstream):
    upstream.routes["/v1/messages"] = _message(1000, 100)
    upstream.routes["/v1/responses"] = Scenario(body=FIXTURE["openai_responses/responses_nonstream_basic"].body)
    upstream.routes["/v1/chat/completions"] = Scenario(body=FIXTURE["openai/chat_nonstream_cached_tokens"].body)
    assert meter(proxy, "set-task", "P6-001").returncode == 0
    claude_code_turn(proxy, "first", CLAUDE_SESSION)
    _codex(proxy, "tests")
    assert meter(proxy, "set-task", "P6-002").returncode == 0
    claude_code_turn(proxy, "second", CLAUDE_SESSION)
    plain = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-test", max_retries=0)
    plain.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a script's call"}])
    rows = proxy.rows(wait_for=4)
    assert len(rows) == len(upstream.received) == 4  # every call stored once

    report = meter_json(proxy, "report", "sessions")
    assert_shape(report, records.SessionsReport, "report sessions")
    claude, codex = report["sessions"]  # the SDK script's call is no agent session
    assert (claude["session_id"], claude["agent"], claude["client"]) == (CLAUDE_SESSION, "Claude Code", "Claude Code 2.1.197")
    assert claude["task_ids"] == ["P6-001", "P6-002"] and claude["ai_interactions"] == 2
    assert claude["tokens"]["total"] == 2 * 1100 and claude["models"] == ["claude-sonnet-4-6"]
    of_claude = [row for row in rows if row["client_session"] == CLAUDE_SESSION]
    assert claude["cost_usd"] == pytest.approx(sum(row["cost_usd"] for row in of_claude))
    assert (claude["first_call_at"], claude["last_call_at"]) == (of_claude[0]["started_at"], of_claude[-1]["started_at"])
    assert (codex["session_id"], codex["agent"], codex["client"]) == (CODEX_SESSION, "Codex", "Codex 0.169.0")
    assert codex["task_ids"] == ["P6-001"] and codex["ai_interactions"] == 1
    assert report["totals"]["ai_interactions"] == 3

    one_task = meter_json(proxy, "report", "sessions", "--task", "p6-002")
    [only] = one_task["sessions"]
    assert only["session_id"] == CLAUDE_SESSION and only["ai_interactions"] == 1 and only["task_ids"] == ["P6-002"]
    # The session's ID, whole or as the table shortens it, lists its calls.
    shown = meter(proxy, "report", "sessions").stdout.splitlines()
    assert shown[1].startswith(CLAUDE_SESSION + "\t")  # piped: whole
    listed = meter_json(proxy, "log", "--session", CLAUDE_SESSION[:8])
    assert sorted(call["interaction_id"] for call in listed) == sorted(row["id"] for row in of_claude)

    lines = list(csv.DictReader(io.StringIO(meter(proxy, "report", "sessions", "--format", "csv").stdout)))
    assert [line["session_id"] for line in lines] == [CLAUDE_SESSION, CODEX_SESSION, "total"]
    assert (lines[0]["task_ids"], lines[0]["total_tokens"], lines[2]["ai_interactions"]) == ("P6-001 P6-002", "2200", "3")
    markdown = meter(proxy, "report", "sessions", "--format", "markdown").stdout
    assert markdown.startswith("## Agent sessions\n\n| Session | Agent |") and f"| {CODEX_SESSION} | Codex |" in markdown

    # Made just now, within minutes: one block, active, from the first call's UTC hour.
    [block] = meter_json(proxy, "report", "blocks")["blocks"]
    assert block["active"] and block["start"][:13] == rows[0]["started_at"][:13] and block["start"][13:] == ":00:00.000000Z"
    assert block["ai_interactions"] == 4 and block["first_call_at"] == rows[0]["started_at"]
    assert block["tokens"]["total"] == sum(row["input_total"] + row["output_total"] for row in rows)
    assert block["cost_usd"] == pytest.approx(sum(row["cost_usd"] for row in rows))
    assert 4 * 3600 < block["time_left_seconds"] <= 5 * 3600 and block["projected"]["cost_usd"] >= block["cost_usd"]
    [anthropic_block] = meter_json(proxy, "report", "blocks", "--provider", "anthropic")["blocks"]
    assert anthropic_block["ai_interactions"] == 2


# ---------------------------------------------------------------- blocks, at known moments


def _call(
    db, number: int, at: str, tokens: int | None = 1000, cost: float | None = 0.5, provider="anthropic", status=200, **extra
):
    with write_transaction(db):
        store_calls(
            db,
            [
                CallRow(
                    Interaction(
                        id=f"0000000b{number:04d}",
                        started_at=at,
                        ended_at=at,
                        provider=provider,
                        model="claude-sonnet-4-6",
                        http_status=status,
                        input_total=tokens,
                        output_total=None if tokens is None else 0,
                        cost_usd=cost,
                        usage_source="reported",
                        **extra,
                    )
                )
            ],
        )


def test_blocks_start_at_the_first_call_s_hour_and_end_five_hours_later_or_at_a_pause(db, meter):
    _call(db, 1, "2026-11-20T10:55:30.000000Z")  # a block from 10:00
    _call(db, 2, "2026-11-20T12:55:30.000000Z")
    _call(db, 3, "2026-11-20T15:00:00.000000Z")  # exactly 5 hours after its start: still in it
    _call(db, 4, "2026-11-20T15:00:00.500000Z")  # past 5 hours: a new block, from 15:00
    _call(db, 5, "2026-11-21T09:30:00.000000Z", cost=None)  # after a pause of more than 5 hours: a gap, then a block
    _call(db, 6, "2026-11-21T10:30:00.000000Z", provider="openai", cost=0.25)
    report = block_report(db, now="2026-11-21T11:00:00.000000Z")
    assert_shape(report, records.BlocksReport, "report blocks")
    blocks = report["blocks"]
    assert [(b["start"], b["end"], b["gap"], b["ai_interactions"]) for b in blocks] == [
        ("2026-11-20T10:00:00.000000Z", "2026-11-20T15:00:00.000000Z", False, 3),
        ("2026-11-20T15:00:00.000000Z", "2026-11-20T20:00:00.000000Z", False, 1),
        ("2026-11-20T20:00:00.500000Z", "2026-11-21T09:30:00.000000Z", True, 0),
        ("2026-11-21T09:00:00.000000Z", "2026-11-21T14:00:00.000000Z", False, 2),
    ]
    first, second, _, active = blocks
    assert (first["tokens"]["total"], first["cost_usd"], first["active"]) == (3000, 1.5, False)
    # Burn rate over its first to last call: 3000 tokens and $1.50 in 4 h 4 min 30 s.
    assert first["burn_rate"]["tokens_per_minute"] == pytest.approx(3000 / (4 * 60 + 4.5))
    assert first["burn_rate"]["cost_per_hour_usd"] == pytest.approx(1.5 / (4 + 4.5 / 60))
    assert second["burn_rate"] is None and second["time_left_seconds"] is None  # one call: no rate
    assert active["active"] and active["time_left_seconds"] == 3 * 3600
    assert active["unpriced_interactions"] == 1 and active["cost_usd"] == 0.25
    assert active["burn_rate"] == {"tokens_per_minute": pytest.approx(2000 / 60), "cost_per_hour_usd": pytest.approx(0.25)}
    assert active["projected"] == {"tokens": 2000 + 3 * 2000, "cost_usd": pytest.approx(0.25 + 3 * 0.25)}
    later = block_report(db, now="2026-11-21T14:00:00.000000Z")["blocks"][-1]  # its end: over
    assert not later["active"] and later["time_left_seconds"] is None and later["projected"] is None
    anthropic_only = block_report(db, provider="anthropic", now="2026-11-21T11:00:00.000000Z")["blocks"]
    assert anthropic_only[-1]["ai_interactions"] == 1 and anthropic_only[-1]["cost_usd"] is None

    cli = json.loads(meter("report", "blocks", "--since", "2026-11-21", "--json").out)
    assert [b["start"] for b in cli["blocks"]] == ["2026-11-21T09:00:00.000000Z"]
    lines = list(csv.DictReader(io.StringIO(meter("report", "blocks", "--format", "csv").out)))
    assert [line["state"] for line in lines] == ["done", "done", "gap", "done"]  # now is long after
    assert lines[0]["total_tokens"] == "3000" and lines[0]["cost_usd"] == "1.5"
    markdown = meter("report", "blocks", "--format", "markdown", "--utc").out
    assert markdown.startswith("## 5-hour blocks\n\n| Start | End | State |") and markdown.count("\n| ") == 5


def test_no_calls_and_a_failed_call(db, meter):
    empty = meter("report", "blocks")
    assert empty.code == 0 and "No AI calls recorded yet." in empty.out
    assert "No agent sessions recorded yet." in meter("report", "sessions").out
    _call(db, 1, "2026-11-20T10:00:00.000000Z", tokens=None, cost=None, status=500)
    [block] = json.loads(meter("report", "blocks", "--json").out)["blocks"]
    assert (block["ai_interactions"], block["failed_calls"], block["tokens"]["total"]) == (0, 1, None)


@pytest.mark.e2e
def test_the_new_reports_load_nothing_heavy(tmp_path, db_path):
    """As tests/test_read_imports.py checks the other read commands."""
    from taskmeter.store import connection

    connection.connect(db_path).close()
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['meter', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('taskmeter', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy), file=sys.stderr)\n"
    )
    environ = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "no-config")}
    environ.pop("METER_CONFIG", None)
    for arguments in (
        ["report", "sessions"],
        ["report", "blocks"],
        ["report", "models", "--format", "csv"],
        ["report", "daily", "--format", "markdown"],
        ["log", "--preview", "--search", "x"],
    ):
        done = subprocess.run(
            [sys.executable, "-c", probe, *arguments, "--db", str(db_path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=environ,
        )
        assert "Traceback" not in done.stderr and "meter: error" not in done.stderr, (arguments, done.stderr)
        assert ast.literal_eval(done.stderr.strip().splitlines()[-1]) == [], arguments


@pytest.mark.e2e
def test_the_real_agent_clis_user_agents_and_sessions(tmp_path, proxy, upstream):
    """Claude Code, Codex and Gemini CLI as `make test` installs them (scripts/ensure-agent-clis),
    under `meter run`: each call's client read from the User-Agent the CLI really sends, and
    the agents that name their sessions (Claude Code, Codex) each a line of `report sessions`."""
    from tests.test_agents import CLAUDE_STREAM, _home, _installed, _meter_run, _responses_stream

    for command in ("claude", "codex", "gemini"):
        _installed(command)
    versions = {
        name: subprocess.run([name, "--version"], capture_output=True, text=True, timeout=60).stdout.split()
        for name in ("claude", "codex", "gemini")
    }
    upstream.routes["/v1/messages"] = Scenario(body=CLAUDE_STREAM.body, content_type=CLAUDE_STREAM.content_type)
    usage = {"input_tokens": 100, "output_tokens": 5, "total_tokens": 105}
    upstream.routes["/v1/responses"] = Scenario(
        body=_responses_stream("resp_codex_ua", "hi", usage), content_type="text/event-stream"
    )
    chunk = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 2, "totalTokenCount": 12},
        "modelVersion": "gemini-2.5-flash",
    }
    upstream.routes["/v1beta/models/gemini-2.5-flash:streamGenerateContent"] = Scenario(
        body=b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n", content_type="text/event-stream"
    )
    home = _home(tmp_path)
    settings = home / ".gemini" / "settings.json"  # an API-key user's, as test_agents.py writes it
    settings.parent.mkdir()
    settings.write_text('{"security": {"auth": {"selectedType": "gemini-api-key"}}}\n')
    runs = [
        (["claude", "-p", "say hi"], {"ANTHROPIC_API_KEY": "sk-ant-test"}),
        (["codex", "exec", "--skip-git-repo-check", "say hi"], {"OPENAI_API_KEY": "sk-test"}),
        (["gemini", "--skip-trust", "-m", "gemini-2.5-flash", "-p", "say hi"], {"GEMINI_API_KEY": "test-key"}),
    ]
    for command, keys in runs:
        done = _meter_run(proxy, home, "P6-010", command, **keys)
        assert done.returncode == 0, done.stderr
    rows = proxy.rows(wait_for=len(upstream.received))
    assert len(rows) == len(upstream.received) >= 3  # every call stored once
    named = {meter_json(proxy, "show", row["id"])["client_name"] for row in rows}
    claude_version = next(word for word in versions["claude"] if word[0].isdigit())
    codex_version = next(word for word in versions["codex"] if word[0].isdigit())
    gemini_version = next(word for word in versions["gemini"] if word[0].isdigit())
    assert named == {f"Claude Code {claude_version}", f"Codex {codex_version}", f"Gemini CLI {gemini_version}"}
    sessions = meter_json(proxy, "report", "sessions")["sessions"]
    assert sorted((session["agent"], session["client"]) for session in sessions) == [
        ("Claude Code", f"Claude Code {claude_version}"),
        ("Codex", f"Codex {codex_version}"),
    ]
    assert all(session["task_ids"] == ["P6-010"] for session in sessions)
