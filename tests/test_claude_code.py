"""`meter claude install`: the settings it writes, the hooks run as Claude Code
runs them (their documented stdin JSON), and Claude-Code-shaped calls."""

import json
import subprocess

import pytest

from taskmeter.store import calls as store_calls
from taskmeter.store import connection, interactions, tasks
from taskmeter.store.calls import CallRow
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from taskmeter.timefmt import now_stored
from tests.gitrepo import git, meter
from tests.proxy_harness import VENV_BIN

pytestmark = pytest.mark.e2e


def hook(event: str, payload: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "meter"), "claude", "hook", event],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=30,
    )


def _claude_call(n: int, session: str, conversation: str, tokens: int) -> Interaction:
    return Interaction(
        id=f"0000000cc{n:03d}",
        started_at=now_stored(),
        operation="generate",
        http_status=200,
        outcome="complete",
        client_session=session,
        conversation_root=conversation,
        model="claude-haiku-4-5" if conversation == "side" else "claude-sonnet-4-5",
        input_total=tokens,
        output_total=10,
    )


def test_install_keeps_the_user_s_settings_and_chains_their_status_line(repo):
    settings = repo / ".claude" / "settings.local.json"
    settings.parent.mkdir()
    mine = {"permissions": {"allow": ["Bash(ls)"]}, "statusLine": {"type": "command", "command": "echo mine"}}
    settings.write_text(json.dumps(mine))
    for _ in range(2):  # twice: refreshed, never doubled
        assert meter("claude", "install", "--project", str(repo)).returncode == 0
    written = json.loads(settings.read_text())
    assert written["permissions"] == mine["permissions"]
    assert [len(written["hooks"][event]) for event in ("SessionStart", "UserPromptSubmit")] == [1, 1]
    assert not (repo / ".claude" / "settings.json").exists()
    status = subprocess.run(written["statusLine"]["command"], shell=True, input="{}", capture_output=True, text=True)
    assert status.stdout.startswith("NOT METERED") and status.stdout.strip().endswith(" | mine")
    assert meter("claude", "uninstall", "--project", str(repo)).returncode == 0
    assert json.loads(settings.read_text()) == mine


def test_a_session_is_bound_to_its_branch_s_task_and_its_calls_follow(repo, db_path):
    git(repo, "checkout", "-q", "-b", "feature/P5-002-search")
    started = hook(
        "session-start", {"session_id": "cc-7", "hook_event_name": "SessionStart", "source": "startup", "cwd": str(repo)}, repo
    )
    assert started.returncode == 0 and started.stdout == ""  # nothing enters the model's context
    assert meter("set-task", "P5-009").returncode == 0  # another terminal's task
    db = connection.connect(db_path)
    with write_transaction(db):
        store_calls.store_calls(
            db, [CallRow(_claude_call(1, "cc-7", "main", 1000)), CallRow(_claude_call(2, "other", "main", 5))]
        )
    rows = {row["id"]: row for row in db.execute("SELECT id, task_id, attribution FROM interactions")}
    assert (rows["0000000cc001"]["task_id"], rows["0000000cc001"]["attribution"]) == ("P5-002", "session")
    assert rows["0000000cc002"]["task_id"] == "P5-009"
    assert tasks.current_task(db).task_id == "P5-009"
    db.close()
    line = subprocess.run(
        [str(VENV_BIN / "meter"), "statusline"], input=json.dumps({"session_id": "cc-7"}), capture_output=True, text=True
    ).stdout
    assert line.startswith("P5-002 ")  # the session's own task, not the other terminal's


def test_hallucination_prompt_flags_the_session_s_last_main_call_and_is_blocked(repo, db_path):
    db = connection.connect(db_path)
    tasks.set_task(db, "P6-001")
    shape = [("side", 50), ("main", 4000), ("side", 60), ("main", 4200), ("side", 70)]  # a side call after the last turn
    with write_transaction(db):
        store_calls.store_calls(
            db, [CallRow(_claude_call(n, "cc-9", conversation, tokens)) for n, (conversation, tokens) in enumerate(shape)]
        )
    db.close()
    event = {
        "session_id": "cc-9",
        "hook_event_name": "UserPromptSubmit",
        "cwd": str(repo),
        "prompt": "/hallucination invented a flag",
    }
    answered = hook("prompt", event, repo)
    assert answered.returncode == 0
    decision = json.loads(answered.stdout)
    assert decision["decision"] == "block" and "0000000cc003" in decision["reason"] and "invented a flag" in decision["reason"]
    db = connection.connect(db_path)
    assert [row["interaction_id"] for row in db.execute("SELECT interaction_id FROM flags")] == ["0000000cc003"]
    assert interactions.one(db, "0000000cc003")["flag_note"] == "invented a flag"
    db.close()
    ordinary = hook("prompt", {**event, "prompt": "please add tests"}, repo)
    assert ordinary.returncode == 0 and ordinary.stdout == ""
    unknown = hook("prompt", {**event, "session_id": "never-seen"}, repo)
    assert json.loads(unknown.stdout)["reason"].startswith("meter: nothing flagged")


def test_a_broken_hook_input_never_fails_claude_code(repo):
    broken = subprocess.run(
        [str(VENV_BIN / "meter"), "claude", "hook", "prompt"], input="{not json", capture_output=True, text=True, cwd=repo
    )
    assert broken.returncode == 0 and broken.stdout == ""
