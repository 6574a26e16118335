"""`meter reconcile`: the agents' own logs (as Claude Code 2.1.197, Codex 0.171.0
and Gemini CLI 0.61.0 wrote them, tests/recorded/agent-logs/) against the meter's
calls; the missed turns imported once as agent-log calls; the recorder's
response IDs that pair them."""

import json
import os
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anthropic
import pytest

from taskmeter.handover.call import CapturedCall
from taskmeter.reconcile import claude, codex, gemini
from taskmeter.reconcile.pairing import import_id
from taskmeter.recorder.finalize import Finalizer
from taskmeter.recorder.parse import BodyParser
from taskmeter.store import connection, migrations, tasks
from taskmeter.store.calls import CallRow, store_calls
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from taskmeter.timefmt import to_stored
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.gitrepo import git
from tests.proxy_harness import VENV_BIN, RunningProxy, write_config

pytestmark = pytest.mark.e2e

LOGS = Path(__file__).resolve().parent / "recorded" / "agent-logs"
CLAUDE_LOG = LOGS / "claude-code-2.1.197.jsonl"
CODEX_LOG = next(LOGS.glob("rollout-codex-0.171.0-*.jsonl"))
GEMINI_LOG = next(LOGS.glob("session-gemini-0.61.0-*.jsonl"))
FIXTURE = {f.name: f for f in ALL}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, records: list, tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records) + tail)
    return path


def claude_file(home: Path, name: str = "session") -> Path:
    return home / ".claude" / "projects" / "-work-repo" / f"{name}.jsonl"


def codex_file(home: Path, name: str, archived: bool = False) -> Path:
    folder = home / ".codex" / ("archived_sessions" if archived else "sessions/2026/12/05")
    return folder / f"rollout-{name}.jsonl"


def gemini_file(home: Path, name: str, suffix: str = ".jsonl") -> Path:
    return home / ".gemini" / "tmp" / "work" / "chats" / f"session-{name}{suffix}"


def read(module, home: Path, env: dict | None = None) -> tuple[list, list[str]]:
    warnings: list[str] = []
    return module.read(module.log_files(env or {}, home), warnings.append), warnings


def parsed_usage(fixture_name: str):
    fixture = FIXTURE[fixture_name]
    parser = BodyParser(fixture.protocol, fixture.content_type, None)
    parser.feed(fixture.body)
    return parser.close().usage


def vector(usage) -> tuple:
    return (usage.input_total, usage.cache_read, usage.cache_write, usage.output_total, usage.reasoning)


# ---------------------------------------------------------------- the recorded logs


def test_each_agent_s_recorded_log_gives_the_usage_the_meter_read_from_the_same_response(tmp_path):
    """Each agent ran once against the loopback fake serving a recorded response;
    its log's turn has the usage the recorder reads from that response's bytes."""
    for source, destination in (
        (CLAUDE_LOG, claude_file(tmp_path)),
        (CODEX_LOG, codex_file(tmp_path, "x")),
        (GEMINI_LOG, gemini_file(tmp_path, "x")),
    ):
        destination.parent.mkdir(parents=True)
        shutil.copy(source, destination)
    (tmp_path / ".gemini" / "tmp" / "work" / ".project_root").write_text("/work/repo\n")

    [turn], warnings = read(claude, tmp_path)
    assert warnings == []
    assert vector(turn.usage) == vector(parsed_usage("anthropic/messages_stream_cache_read")) == (1169, 1165, 0, 221, None)
    assert (turn.response_id, turn.model, turn.session, turn.branch, turn.version) == (
        "msg_01XQRA3bs4SB4yTBMwD3dbUi", "claude-3-5-sonnet-20240620", "18dc456f-6814-4b11-83a6-279ba9e3a5ca",
        "feature/P1-010-logs", "2.1.197",
    )  # fmt: skip

    [turn], warnings = read(codex, tmp_path)
    assert warnings == []
    assert (
        vector(turn.usage)
        == vector(parsed_usage("openai_responses/responses_stream_cached_reasoning_websearch"))
        == (9463, 8320, 0, 582, 512)
    )
    assert (turn.response_id, turn.model, turn.session, turn.cwd) == (
        "resp_00a60507bf41223d0068c9d2fbf93481a0ba2a7796ae2cab4c", "gpt-5.4-mini",
        "01a2456d-d8a6-7851-a6bd-78fed0618245", "/tmp/agentruns/codex-work",
    )  # fmt: skip

    [turn], warnings = read(gemini, tmp_path)
    assert warnings == []
    assert vector(turn.usage) == vector(parsed_usage("gemini/stream_sse_thoughts")) == (18, 0, 0, 115, 35)
    assert (turn.model, turn.session, turn.cwd, turn.response_id) == (
        "gemini-2.5-flash", "8aae1471-25e0-48e6-b4b9-df5b08c18e80", "/work/repo", None,
    )  # fmt: skip


def test_claude_code_repeats_count_once_with_the_largest_output_across_files(tmp_path):
    [line] = [record for record in lines(CLAUDE_LOG) if record["type"] == "assistant"]
    snapshot = json.loads(json.dumps(line))
    snapshot["message"]["usage"]["output_tokens"] = 1  # the early streaming snapshot
    other = json.loads(json.dumps(line))
    other["message"]["id"], other["uuid"] = "msg_second", "u-2"
    write_lines(claude_file(tmp_path), [snapshot, line, line, other])
    # A resumed session copies the earlier turns into its own file.
    write_lines(claude_file(tmp_path, "resumed"), [line, other])
    # CLAUDE_CONFIG_DIR moves the folder: the default one is then not read.
    moved = tmp_path / "moved"
    write_lines(moved / "projects" / "p" / "s.jsonl", [line])

    turns, _ = read(claude, tmp_path)
    assert sorted((t.response_id, t.usage.output_total) for t in turns) == [
        ("msg_01XQRA3bs4SB4yTBMwD3dbUi", 221),
        ("msg_second", 221),
    ]
    turns, _ = read(claude, tmp_path, {"CLAUDE_CONFIG_DIR": str(moved)})
    assert [t.response_id for t in turns] == ["msg_01XQRA3bs4SB4yTBMwD3dbUi"]


def _token_count(at: str, total: list[int], last: list[int] | None) -> dict:
    names = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_output_tokens")
    info = None if last is None else {
        "total_token_usage": dict(zip(names, total, strict=True)),
        "last_token_usage": dict(zip(names, last, strict=True)),
    }  # fmt: skip
    return {"timestamp": at, "type": "event_msg", "payload": {"type": "token_count", "info": info}}


def test_codex_older_rollouts_count_each_moved_total_once_even_archived_and_replayed(tmp_path):
    meta = {"timestamp": "2026-10-01T10:00:00.000Z", "type": "session_meta",
            "payload": {"id": "s-old", "cwd": "/w", "cli_version": "0.88.0", "git": {"branch": "P2-001-x"}}}  # fmt: skip
    context = {"timestamp": "2026-10-01T10:00:00.100Z", "type": "turn_context", "payload": {"model": "gpt-5-codex"}}
    events = [
        _token_count("2026-10-01T10:00:01.000Z", [0, 0, 0, 0], None),  # info null early in a turn
        _token_count("2026-10-01T10:00:02.000Z", [1000, 200, 50, 10], [1000, 200, 50, 10]),
        _token_count("2026-10-01T10:00:02.100Z", [1000, 200, 50, 10], [1000, 200, 50, 10]),  # re-emitted
        _token_count("2026-10-01T10:00:05.000Z", [2500, 1200, 90, 10], [1500, 1000, 40, 0]),
    ]
    write_lines(codex_file(tmp_path, "2026-10-01T10-00-00-s-old"), [meta, context, *events])
    # Archived, and a resumed session's file replaying the same totals: nothing doubles.
    write_lines(codex_file(tmp_path, "2026-10-01T10-00-00-s-old", archived=True), [meta, context, *events])
    turns, warnings = read(codex, tmp_path)
    assert warnings == []
    assert sorted(vector(t.usage) for t in turns) == [(1000, 200, 0, 50, 10), (1500, 1000, 0, 40, 0)]
    assert {(t.model, t.session, t.branch) for t in turns} == {("gpt-5-codex", "s-old", "P2-001-x")}


def test_gemini_keeps_the_last_version_of_a_record_and_rewound_turns_and_reads_old_json(tmp_path):
    header, *records = [r for r in lines(GEMINI_LOG)]
    [turn] = [r for r in records if r.get("type") == "gemini"]
    grown = {**turn, "tokens": {**turn["tokens"], "output": 90, "total": 143}}
    later = {**turn, "id": "second", "timestamp": "2026-12-05T09:10:00.000Z"}
    write_lines(gemini_file(tmp_path, "a"), [header, turn, grown, later, {"$rewindTo": turn["id"]}])
    write_lines(gemini_file(tmp_path, "old", ".json"), [])
    gemini_file(tmp_path, "old", ".json").write_text(
        json.dumps({"sessionId": "legacy", "messages": [{**turn, "id": "m1"}, {"id": "u", "type": "user", "content": "hi"}]})
    )
    turns, warnings = read(gemini, tmp_path)
    assert warnings == []
    assert sorted((t.session, t.key.rsplit(":", 1)[1], t.usage.output_total) for t in turns) == [
        ("8aae1471-25e0-48e6-b4b9-df5b08c18e80", "8e091b8f-48bd-4e90-bce0-a7ff5ec27941", 125),
        ("8aae1471-25e0-48e6-b4b9-df5b08c18e80", "second", 115),
        ("legacy", "m1", 115),
    ]


def test_bad_lines_and_unknown_versions_warn_once_naming_file_and_line_and_the_rest_is_read(tmp_path):
    assistant = next(r for r in lines(CLAUDE_LOG) if r["type"] == "assistant")
    future = {**assistant, "version": "3.0.0", "message": {**assistant["message"], "id": "msg_future"}}
    no_usage = {**assistant, "message": {"id": "msg_bare", "model": "m"}}
    path = write_lines(claude_file(tmp_path), ["{not json", assistant, no_usage, future], tail='{"type":"assistant","mess')
    turns, warnings = read(claude, tmp_path)
    assert sorted(t.response_id for t in turns) == ["msg_01XQRA3bs4SB4yTBMwD3dbUi", "msg_future"]
    # The truncated last line is being written: read next time, not warned about.
    assert warnings == [
        f"{path}:1: not JSON; line skipped",
        f"{path}:3: an assistant line without usage in a form this meter knows; line skipped",
        f"{path}:4: written by Claude Code 3.0.0, a version this meter does not know; read as 2.x",
    ]
    header, *records = lines(GEMINI_LOG)
    [turn] = [r for r in records if r.get("type") == "gemini"]
    strange = {**turn, "id": "strange", "tokens": {"prompt": 5}}  # a shape of tokens this meter does not know
    path = write_lines(gemini_file(tmp_path, "bad"), [header, strange, "not json at all", turn])
    turns, warnings = read(gemini, tmp_path)
    assert [t.usage.output_total for t in turns] == [115]
    assert warnings == [
        f"{path}:3: not JSON; line skipped",
        f"{path}:2: a gemini record in a form this meter does not know; line skipped",
    ]
    rollout = lines(CODEX_LOG)
    rollout[0]["payload"]["cli_version"] = "1.2.0"
    path = write_lines(codex_file(tmp_path, "future"), [rollout[0], "[1, 2]", *rollout[1:]])
    turns, warnings = read(codex, tmp_path)
    assert len(turns) == 1
    assert warnings == [
        f"{path}:1: written by Codex 1.2.0, a version this meter does not know; read as 0.x",
        f"{path}:2: not a JSON object; line skipped",
    ]


# ---------------------------------------------------------------- the response ID the recorder keeps


@pytest.mark.parametrize(
    ("fixture_name", "expected"),
    [
        ("anthropic/messages_stream_cache_read", "msg_01XQRA3bs4SB4yTBMwD3dbUi"),
        ("openai/chat_stream_include_usage_httprr", "chatcmpl-C6bjxzOr3Oz1rTiafksd6himIit3q"),
        (
            "openai_responses/responses_stream_cached_reasoning_websearch",
            "resp_00a60507bf41223d0068c9d2fbf93481a0ba2a7796ae2cab4c",
        ),
        ("gemini/stream_sse_thoughts", None),  # read from the body below
    ],
)
def test_the_recorder_keeps_the_provider_s_response_id(fixture_name, expected):
    fixture = FIXTURE[fixture_name]
    if expected is None:
        expected = json.loads(fixture.body.split(b"data: ", 2)[1].split(b"\n", 1)[0])["responseId"]
    call = CapturedCall(
        id="0000000rid001", started=1.0, provider=fixture.meta["provider"], protocol=fixture.protocol, operation="generate",
        method="POST", endpoint="/", status=200, content_type=fixture.content_type, ended=2.0, outcome="complete",
    )  # fmt: skip
    call.response_body = bytearray(fixture.body)
    assert Finalizer().finish(call).interaction.response_id == expected


# ---------------------------------------------------------------- pairing, attribution, import


def _metered(db, n: int, at: datetime, protocol: str, model: str, usage: tuple, **more) -> Interaction:
    row = Interaction(
        id=f"0000000mt{n:03d}", started_at=to_stored(at), ended_at=to_stored(at + timedelta(seconds=2)), protocol=protocol,
        provider={"anthropic": "anthropic", "gemini": "gemini"}.get(protocol, "openai"), model=model, http_status=200,
        outcome="complete", input_total=usage[0], cache_read=usage[1], cache_write=usage[2], output_total=usage[3],
        reasoning=usage[4], usage_source="reported", cost_usd=0.001, **more,
    )  # fmt: skip
    with write_transaction(db):
        store_calls(db, [CallRow(row)])
    return row


def _gemini_turn(n: int, at: datetime, tokens: dict) -> dict:
    return {"id": f"turn-{n}", "timestamp": to_stored(at), "type": "gemini", "model": "gemini-2.5-flash", "tokens": tokens}


def _switch(db, task_id: str, at: datetime) -> None:
    """`meter set-task` as if run at `at`."""
    tasks.set_task(db, task_id)
    db.execute(
        "UPDATE task_events SET at = ? WHERE id = (SELECT max(id) FROM task_events WHERE kind = 'switch')", (to_stored(at),)
    )


def _dump(db) -> list[tuple]:
    return [tuple(row) for row in db.execute("SELECT * FROM interactions ORDER BY id")]


def test_turns_pair_by_usage_and_time_and_the_missed_ones_import_once_to_their_task(meter, db, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    base = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    _switch(db, "P1-001", base - timedelta(hours=1))
    _switch(db, "P1-002", base + timedelta(minutes=30))
    # The log names the model asked for, the response its version: they agree.
    _metered(db, 1, base, "gemini", "gemini-2.5-flash-001", (18, 0, 0, 115, 35), client="GeminiCLI/0.61.0")
    # Same usage but ten minutes away: not the same call, and the log lacks it.
    lacking = _metered(
        db, 2, base + timedelta(minutes=10), "gemini", "gemini-2.5-flash", (18, 0, 0, 115, 35), client="GeminiCLI/0.61.0"
    )
    _metered(db, 3, base, "gemini", "gemini-2.5-flash", (5, 0, 0, 5, 0), client="python-genai")  # another client
    tokens = {"input": 18, "output": 80, "cached": 0, "thoughts": 35, "tool": 0, "total": 133}
    header = {"sessionId": "g-1", "projectHash": "h", "startTime": to_stored(base), "kind": "main"}
    write_lines(
        gemini_file(tmp_path, "2026-11-20T09-00-g1"),
        [
            header,
            _gemini_turn(1, base + timedelta(seconds=3), tokens),  # the metered call's
            _gemini_turn(2, base + timedelta(minutes=5), {**tokens, "input": 700}),  # missed: P1-001
            _gemini_turn(3, base + timedelta(minutes=40), {**tokens, "output": 9}),  # missed: P1-002
        ],
    )
    before = _dump(db)
    report = json.loads(meter("reconcile", "--agent", "gemini", "--json").out)
    [agent] = report["agents"]
    assert (agent["seen"]["count"], agent["missed"]["count"], agent["meter_only"]["count"]) == (1, 2, 1)
    assert agent["meter_only_calls"] == [lacking.id]
    assert agent["missed"]["tokens"]["total"] == (700 + 115) + (18 + 44)
    assert [(t["task_id"], t["attribution"], t["tokens"]["total"]) for t in agent["missed_turns"]] == [
        ("P1-001", "current", 815), ("P1-002", "current", 62),
    ]  # fmt: skip
    assert agent["missed"]["cost_usd"] > 0 and agent["missed"]["unpriced"] == 0
    assert _dump(db) == before  # reporting changes nothing
    [later] = json.loads(
        meter("reconcile", "--agent", "gemini", "--json", "--since", to_stored(base + timedelta(minutes=20))).out
    )["agents"]
    assert (later["seen"]["count"], later["missed"]["count"], later["meter_only"]["count"]) == (0, 1, 0)

    first = meter("reconcile", "--agent", "gemini", "--import", "--json")
    assert json.loads(first.out)["imported"] == 2
    imported = db.execute("SELECT * FROM interactions WHERE usage_source = 'agent-log' ORDER BY started_at").fetchall()
    assert [(r["task_id"], r["input_total"], r["output_total"], r["reasoning"], r["client_session"]) for r in imported] == [
        ("P1-001", 700, 115, 35, "g-1"), ("P1-002", 18, 44, 35, "g-1"),
    ]  # fmt: skip
    assert all(r["cost_usd"] > 0 and r["price_source"].startswith("genai-prices") for r in imported)
    assert [tuple(r) for r in db.execute("SELECT * FROM interactions WHERE usage_source != 'agent-log' ORDER BY id")] == before
    after_first = _dump(db)

    second = meter("reconcile", "--agent", "gemini", "--import", "--json")
    assert json.loads(second.out)["imported"] == 0
    assert _dump(db) == after_first
    [agent] = json.loads(second.out)["agents"]
    assert (agent["seen"]["count"], agent["missed"]["count"], agent["imported"]["count"]) == (1, 0, 2)

    # Imported calls are calls: every rollup holds them exactly as a scan does.
    assert _task_usage_matches_a_scan(db)
    shown = json.loads(meter("show", imported[0]["id"], "--json").out)
    assert (shown["usage_source"], shown["notes"]) == (
        "agent-log",
        f"imported from Gemini CLI's log {gemini_file(tmp_path, '2026-11-20T09-00-g1')}:3",
    )
    logged = json.loads(meter("log", "--json", "-n", "10").out)
    assert sorted(call["usage_source"] for call in logged) == ["agent-log", "agent-log", "reported", "reported", "reported"]
    task = json.loads(meter("report", "task", "P1-001", "--json").out)
    assert task["tokens_by_source"]["agent_log"] == 815
    assert task["agent_log_share"] == 815 / (815 + 133 + 133 + 10)
    overview = json.loads(meter("report", "--json").out)
    assert overview["phases"][0]["agent_log_share"] == (815 + 62) / (815 + 62 + 133 + 133 + 10)


def _task_usage_matches_a_scan(db) -> bool:
    kept = {
        row["task_key"]: (
            row["interactions"],
            row["input_total"],
            row["output_total"],
            row["agent_log_tokens"],
            round(row["cost_usd"], 9),
        )
        for row in db.execute("SELECT * FROM task_usage WHERE interactions != 0")
    }
    scanned = {
        row[0]: (row[1], row[2], row[3], row[4], round(row[5], 9))
        for row in db.execute(
            "SELECT coalesce(task_id, ''), count(*), sum(input_total), sum(output_total),"
            " sum(CASE WHEN usage_source = 'agent-log' THEN input_total + output_total ELSE 0 END), sum(cost_usd)"
            " FROM interactions WHERE operation = 'generate' GROUP BY 1"
        )
    }
    quarters = db.execute("SELECT sum(ai_interactions), sum(input_total), sum(output_total) FROM usage_quarters").fetchone()
    calls = db.execute("SELECT count(*), sum(input_total), sum(output_total) FROM interactions").fetchone()
    return kept == scanned and tuple(quarters) == tuple(calls)


def test_a_turn_with_no_current_task_goes_to_its_branch_s_task_else_unassigned(meter, db, repo, monkeypatch):
    home = Path(os.environ["HOME"])
    git(repo, "checkout", "-q", "-b", "feature/P4-007-import")
    assistant = next(r for r in lines(CLAUDE_LOG) if r["type"] == "assistant")
    on_branch = {**assistant, "cwd": str(repo), "gitBranch": None}  # the branch of its cwd, now
    logged_branch = {**assistant, "gitBranch": "P4-008-other", "message": {**assistant["message"], "id": "msg_2"}}
    nowhere = {**assistant, "cwd": "/nonexistent", "gitBranch": "main", "message": {**assistant["message"], "id": "msg_3"}}
    write_lines(claude_file(home), [on_branch, logged_branch, nowhere])
    assert meter("reconcile", "--agent", "claude", "--import").code == 0
    rows = db.execute("SELECT response_id, task_id, attribution FROM interactions ORDER BY response_id").fetchall()
    assert [tuple(r) for r in rows] == [
        ("msg_01XQRA3bs4SB4yTBMwD3dbUi", "P4-007", "branch"), ("msg_2", "P4-008", "branch"), ("msg_3", None, "none"),
    ]  # fmt: skip


def test_an_imported_turn_between_calls_moves_the_context_switch_to_where_it_happened(meter, db, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    base = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    _switch(db, "P1-003", base - timedelta(hours=1))
    usage = (1169, 1165, 0, 221, None)
    _metered(db, 1, base, "anthropic", "claude-3-5-sonnet-20240620", usage, client_session="A", response_id="msg_a")
    later = _metered(db, 2, base + timedelta(minutes=9), "anthropic", "claude-3-5-sonnet-20240620", usage,
                     client_session="B", response_id="msg_b2")  # fmt: skip
    assert db.execute("SELECT context_switch FROM interactions WHERE id = ?", (later.id,)).fetchone()[0] == 1
    assistant = next(r for r in lines(CLAUDE_LOG) if r["type"] == "assistant")
    missed = {**assistant, "sessionId": "B", "timestamp": to_stored(base + timedelta(minutes=5)),
              "message": {**assistant["message"], "id": "msg_b1"}}  # fmt: skip
    write_lines(claude_file(tmp_path, "B"), [missed])
    assert json.loads(meter("reconcile", "--import", "--json").out)["imported"] == 1
    switches = db.execute("SELECT response_id, context_switch FROM interactions ORDER BY started_at").fetchall()
    assert [tuple(r) for r in switches] == [("msg_a", 0), ("msg_b1", 1), ("msg_b2", 0)]


def test_an_import_never_overwrites_a_metered_call_that_has_its_id(meter, db, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_lines(claude_file(tmp_path), [next(r for r in lines(CLAUDE_LOG) if r["type"] == "assistant")])
    from taskmeter.reconcile.pairing import read_logs

    [turn] = read_logs(["claude"], {}, tmp_path, None, print)["claude"][1]
    at = datetime.fromisoformat(turn.at)
    taken = Interaction(id=import_id(turn), started_at=turn.at, ended_at=to_stored(at), protocol="anthropic", model="other",
                        input_total=1, output_total=1, usage_source="reported")  # fmt: skip
    with write_transaction(db):
        store_calls(db, [CallRow(taken)])
    before = _dump(db)
    result = meter("reconcile", "--import", "--json")
    assert json.loads(result.out)["imported"] == 0
    assert _dump(db) == before


def test_reconcile_reports_bad_options_in_one_line(meter):
    result = meter("reconcile", "--agent", "cursor")
    assert result.code != 0 and len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err


# ---------------------------------------------------------------- the migration


def test_upgrading_keeps_calls_and_accepts_agent_log_calls(db_path, monkeypatch):
    before = [m for m in migrations.MIGRATIONS if m.__name__ < "m014"]
    monkeypatch.setattr(migrations, "MIGRATIONS", before)
    old = connection.connect(db_path)
    tasks.set_task(old, "P1-001")
    with pytest.raises(sqlite3.IntegrityError):
        old.execute("INSERT INTO interactions (id, started_at, usage_source) VALUES ('x', 'y', 'agent-log')")
    old.execute(
        "INSERT INTO interactions (id, started_at, task_id, input_total, output_total, usage_source)"
        " VALUES ('000000010001', '2026-01-01T00:00:00.000000Z', 'P1-001', 100, 5, 'reported')"
    )
    old.close()
    monkeypatch.undo()
    upgraded = connection.connect(db_path)
    assert upgraded.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert upgraded.execute("SELECT agent_log_tokens, input_total FROM task_usage WHERE task_key = 'P1-001'").fetchone()[:] == (
        0,
        100,
    )
    upgraded.execute(
        "INSERT INTO interactions (id, started_at, task_id, attribution, input_total, output_total, usage_source)"
        " VALUES ('000000010002', '2026-01-01T00:01:00.000000Z', 'P1-001', 'branch', 40, 2, 'agent-log')"
    )
    upgraded.execute("UPDATE interactions SET task_id = NULL WHERE id = '000000010002'")
    assert [tuple(r) for r in upgraded.execute("SELECT task_key, agent_log_tokens FROM task_usage ORDER BY task_key")] == [
        ("", 42),
        ("P1-001", 0),
    ]
    upgraded.execute("DELETE FROM interactions WHERE id = '000000010002'")
    assert upgraded.execute("SELECT sum(agent_log_tokens) FROM task_usage").fetchone()[0] == 0
    with pytest.raises(sqlite3.IntegrityError):
        upgraded.execute("INSERT INTO interactions (id, started_at, usage_source) VALUES ('z', 'y', 'guessed')")


# ---------------------------------------------------------------- end to end through a real proxy


def _stream(message_id: str, usage: dict) -> bytes:
    """The recorded Anthropic stream, as another response: its ID and usage changed."""
    body = FIXTURE["anthropic/messages_stream_cache_read"].body.decode()
    body = body.replace("msg_01XQRA3bs4SB4yTBMwD3dbUi", message_id)
    start = json.dumps({k: usage[k] for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")})[1:-1]
    body = body.replace('"input_tokens":4,"cache_creation_input_tokens":0,"cache_read_input_tokens":1165', start.replace(" ", ""))
    return body.replace('"output_tokens":221', f'"output_tokens":{usage["output_tokens"]}').encode()


def test_end_to_end_the_log_s_turns_the_proxy_never_saw_are_counted_and_imported_once(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("METER_DB", str(tmp_path / "meter.db"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    session = "5f0c2a9e-0000-4000-8000-00000000e2e0"
    template = next(r for r in lines(CLAUDE_LOG) if r["type"] == "assistant")
    log_lines = []
    served = {}
    with FakeUpstream() as upstream:
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"anthropic": f"http://127.0.0.1:{upstream.port}"})
        subprocess.run([str(VENV_BIN / "meter"), "set-task", "P1-010"], check=True, capture_output=True)

        def call(base_url: str, n: int) -> None:
            usage = {
                "input_tokens": 10 + n,
                "cache_creation_input_tokens": 100 * n,
                "cache_read_input_tokens": 1000 + n,
                "output_tokens": 20 + n,
            }
            message_id = f"msg_e2e_{n}"
            upstream.routes["/v1/messages"] = Scenario(body=_stream(message_id, usage), content_type="text/event-stream")
            client = anthropic.Anthropic(base_url=base_url, api_key="sk-ant-test", max_retries=0,
                                         default_headers={"user-agent": "claude-cli/2.1.197 (external, cli)", "x-claude-code-session-id": session})  # fmt: skip
            with client.messages.stream(model="claude-3-5-sonnet-20240620", max_tokens=64, messages=[{"role": "user", "content": f"turn {n}"}]) as stream:  # fmt: skip
                stream.until_done()
            served[message_id] = usage
            line = json.loads(json.dumps(template))
            line.update(
                sessionId=session, uuid=f"u-{n}", timestamp=to_stored(datetime.now(UTC)), cwd=str(tmp_path), gitBranch=None
            )
            line["message"]["id"] = message_id
            line["message"]["usage"].update(usage)
            log_lines.append(line)

        proxy = RunningProxy(config, tmp_path / "meter.db")
        for n in (1, 2):
            call(f"{proxy.origin}/anthropic", n)
        assert len(proxy.rows(wait_for=2)) == 2
        proxy.stop()
        for n in (3, 4):  # the proxy is down: the agent went straight to the provider
            call(f"http://127.0.0.1:{upstream.port}", n)
        proxy = RunningProxy(config, tmp_path / "meter.db")
        call(f"{proxy.origin}/anthropic", 5)
        assert len(proxy.rows(wait_for=3)) == 3
        proxy.stop()
    log_lines.pop()  # turn 5 is in the meter but its line is not in the log (Claude Code cleaned it up)
    write_lines(claude_file(home, session), log_lines, tail='{"parentUuid":"u-4","type":"assi')  # still being written

    def reconcile(*args) -> dict:
        result = subprocess.run(
            [str(VENV_BIN / "meter"), "reconcile", "--json", *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and result.stderr == "", result.stderr
        return json.loads(result.stdout)

    db = connection.connect(tmp_path / "meter.db")
    metered = {row["response_id"]: row for row in db.execute("SELECT * FROM interactions")}
    assert set(metered) == {"msg_e2e_1", "msg_e2e_2", "msg_e2e_5"}

    def tokens(n: int) -> int:
        usage = served[f"msg_e2e_{n}"]
        return sum(usage.values())

    [agent] = reconcile("--agent", "claude")["agents"]
    assert (agent["seen"]["count"], agent["missed"]["count"], agent["meter_only"]["count"]) == (2, 2, 1)
    assert agent["seen"]["tokens"]["total"] == tokens(1) + tokens(2)
    assert agent["missed"]["tokens"]["total"] == tokens(3) + tokens(4)
    assert agent["meter_only"]["tokens"]["total"] == tokens(5)
    assert agent["meter_only_calls"] == [metered["msg_e2e_5"]["id"]]
    assert [(t["session"], t["task_id"], t["tokens"]["cache_write"]) for t in agent["missed_turns"]] == [
        (session, "P1-010", 300),
        (session, "P1-010", 400),
    ]

    assert reconcile("--import")["imported"] == 2
    rows = db.execute("SELECT * FROM interactions ORDER BY started_at").fetchall()
    assert len(rows) == 5
    assert {r["response_id"]: r["usage_source"] for r in rows} == {
        "msg_e2e_1": "reported", "msg_e2e_2": "reported", "msg_e2e_3": "agent-log", "msg_e2e_4": "agent-log", "msg_e2e_5": "reported",
    }  # fmt: skip
    for row in rows:
        usage = served[row["response_id"]]
        assert (row["input_total"], row["cache_read"], row["cache_write"], row["output_total"]) == (
            usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"],
            usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"], usage["output_tokens"],
        )  # fmt: skip
    assert {tuple(r) for r in rows if r["usage_source"] == "reported"} == {tuple(r) for r in metered.values()}
    assert reconcile("--import")["imported"] == 0
    assert db.execute("SELECT count(*) FROM interactions").fetchone()[0] == 5

    report = subprocess.run([str(VENV_BIN / "meter"), "report", "task", "P1-010"], capture_output=True, text=True, timeout=30)
    share = (tokens(3) + tokens(4)) / sum(tokens(n) for n in range(1, 6))
    assert f"agent log {tokens(3) + tokens(4):,} ({share:.1%} of the tokens, from the agents' own logs)" in report.stdout
    db.close()
