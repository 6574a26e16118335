"""Edits that mean what a person means, all or nothing (issue 22): every editing
command that fails changes nothing (a full dump of the database, before and
after); phase marks follow the milestones the report shows, and a person's mark
of one the meter derived or saw confirms it; a budget replaces the one before
unless --also; edits print one line; the status line shows the binding budget."""

import json
import re
from datetime import UTC, datetime, timedelta

import openai
import pytest

from taskmeter.store import alerts, connection, interactions
from taskmeter.store.interactions import Interaction
from tests.conftest import dump
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.gitrepo import eventually, git, task_row
from tests.gitrepo import meter as meter_process
from tests.proxy_harness import RunningProxy, write_config


def _ok(meter, *args):
    result = meter(*args)
    assert result.code == 0, result.err
    return result


def _call(db, interaction_id: str, task_id: str) -> None:
    interactions.insert(
        db,
        Interaction(
            id=interaction_id,
            task_id=task_id,
            started_at="2026-01-01T00:00:01.000000Z",
            ended_at="2026-01-01T00:00:01.500000Z",
            model="gpt-4o",
            provider="openai",
            usage_source="reported",
            http_status=200,
            outcome="complete",
            input_total=100,
            output_total=20,
        ),
    )


@pytest.fixture
def history(meter, db_path):
    """A small working history: two phases, tasks with fields and budgets, calls, a flag, an alert."""
    _ok(meter, "set-task", "P1-010", "--title", "login", "--estimate", "1h")
    _ok(meter, "task", "P1-010", "--budget", "10k", "--projected", "users log in")
    _ok(meter, "set-task", "P2-001")
    _ok(meter, "phase", "P2", "--title", "Search", "--budget", "$5")
    db = connection.connect(db_path)
    try:
        _call(db, "00000000aaa1", "P1-010")
        _call(db, "00000000aaa2", "P2-001")
        interactions.flag(db, "00000000aaa1", "invented API")
        alerts.raise_alert(db, "budget", "budget:task:P1-010:80:x", "budget 80% used: P1-010", task_id="P1-010")
    finally:
        db.close()
    _ok(meter, "iteration", "P1-010", "--note", "wrong API")
    return db_path


SOON = (datetime.now(UTC) + timedelta(hours=3)).isoformat()

# Each editing command, failing late: the parts before the failure must not be saved.
FAILING = {
    "task: a budget, then an unknown --unset": ["task", "P1-010", "--budget", "$1", "--title", "x", "--unset", "nonsense"],
    "task: fields and a budget, then a malformed phase": [
        "task",
        "P1-010",
        "--budget",
        "2k",
        "--title",
        "x",
        "--phase",
        "no good!",
    ],
    "task: a title, then --on-exceeded without a budget": ["task", "P2-001", "--title", "x", "--on-exceeded", "block"],
    "task: a title, then --unset budget without one": ["task", "P2-001", "--title", "x", "--unset", "budget"],
    "task: --also without --budget": ["task", "P1-010", "--title", "x", "--also"],
    "task: --budget and --unset budget": ["task", "P1-010", "--budget", "1k", "--unset", "budget"],
    "phase: title and surprise, then a mark out of order": ["phase", "P2", "--title", "X", "--surprise", "Y", "--mark", "docs"],
    "phase: a budget, then a mark in the future": ["phase", "P1", "--budget", "1M", "--win", "w", "--mark", "docs", "--at", SOON],
    "phase: fields, then a contradicting --unset": ["phase", "P1", "--title", "T", "--debt", "d", "--unset", "debt"],
    "mark: out of order": ["mark", "approved", "P1-010"],
    "mark: in the future": ["mark", "initial", "P1-010", "--at", SOON],
    "iteration: an unknown task": ["iteration", "P9-999", "--note", "x"],
    "set-task: a malformed ID": ["set-task", "P1 010", "--title", "x"],
    "flag: an unknown call": ["flag", "ffffffffffff", "--note", "x"],
    "unflag: a call not flagged": ["unflag", "00000000aaa2"],
    "retag: one known call and one unknown": ["retag", "00000000aaa1", "ffffffffffff", "--to", "P2-001"],
    "retag: to a task that does not exist": ["retag", "00000000aaa1", "--to", "P7-001"],
    "alerts clear: one open alert and one unknown": ["alerts", "clear", "1", "99"],
}


@pytest.mark.parametrize("args", FAILING.values(), ids=FAILING.keys())
def test_a_failing_edit_changes_nothing(history, meter, args):
    before = dump(history)
    result = meter(*args)
    assert result.code != 0, result.out
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert dump(history) == before


def test_config_init_over_an_existing_file_changes_nothing(meter, tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text("# mine\n")
    result = meter("config", "init", "--config", str(config))
    assert result.code == 1 and "exists" in result.err
    assert config.read_text() == "# mine\n"


def test_the_failed_phase_edit_of_the_issue_saves_nothing(history, meter, db_path):
    """`meter phase P2 --title X --surprise Y --mark docs` saved title and surprise, then exited 1."""
    failed = meter("phase", "P2", "--title", "X", "--surprise", "Y", "--mark", "docs")
    assert failed.code == 1 and "no first-code yet" in failed.err  # not "no begin yet": P2's begin is derived
    report = json.loads(_ok(meter, "phase", "P2", "--json").out)
    assert report["title"] == "Search" and report["biggest_surprise"] is None


# ---------------------------------------------------------------- phase marks


@pytest.mark.e2e
def test_phase_marks_follow_the_milestones_the_report_shows(repo, db_path):
    """A real git repository: the branch makes P2-001, its commit gives PHASE_FIRST_CODE,
    the merge PHASE_INTEGRATION_COMPLETE; PHASE_BEGIN is derived from the task."""
    assert meter_process("hooks", "install", "--repo", str(repo)).returncode == 0
    git(repo, "checkout", "-q", "-b", "feature/P2-001-search")
    eventually(lambda: task_row(db_path, "P2-001"))
    (repo / "search.py").write_text('"""Search."""\n')
    git(repo, "add", "search.py")
    git(repo, "commit", "-q", "-m", "search")
    eventually(lambda: (task_row(db_path, "P2-001") or {}).get("initial_completion_at"))
    report = json.loads(meter_process("phase", "P2", "--json").stdout)
    derived_begin, first_code = report["phase_begin"], report["phase_first_code"]
    assert derived_begin == task_row(db_path, "P2-001")["begin_at"] and first_code is not None

    # tests-passing after first-code: the derived begin counts, no "no begin yet".
    marked = meter_process("phase", "P2", "--mark", "tests-passing")
    assert marked.returncode == 0, marked.stderr
    assert re.fullmatch(r"P2: tests-passing at \S+\.\n", marked.stdout)

    # Marking the derived begin confirms it: its time stays, and the line says so.
    confirmed = meter_process("phase", "P2", "--mark", "begin")
    assert confirmed.returncode == 0, confirmed.stderr
    assert "(confirmed: the earliest begin of its tasks)" in confirmed.stdout
    # The meter's first-code, from the commit, likewise.
    sha = git(repo, "rev-parse", "HEAD").stdout.strip()
    seen = meter_process("phase", "P2", "--mark", "first-code")
    assert seen.returncode == 0 and f"(confirmed: commit {sha[:12]})" in seen.stdout
    after = json.loads(meter_process("phase", "P2", "--json").stdout)
    assert (after["phase_begin"], after["phase_first_code"]) == (derived_begin, first_code)
    db = connection.connect(db_path)
    marks = [tuple(row) for row in db.execute("SELECT milestone, value, confirmed FROM phase_marks ORDER BY id")]
    db.close()
    assert marks == [
        ("tests-passing", after["phase_tests_passing"], None),
        ("begin", derived_begin, "the earliest begin of its tasks"),
        ("first-code", first_code, f"commit {sha[:12]}"),
    ]
    # Now they are a person's: marking again needs --force.
    again = meter_process("phase", "P2", "--mark", "begin")
    assert again.returncode == 1 and "already has begin" in again.stderr


def test_at_overrides_a_derived_milestone_and_order_checks_use_what_the_report_shows(meter, db_path):
    _ok(meter, "set-task", "P3-001")
    begin = json.loads(_ok(meter, "phase", "P3", "--json").out)["phase_begin"]
    # Before the derived begin: first-code cannot be.
    early = (datetime.fromisoformat(begin) - timedelta(minutes=5)).isoformat()
    refused = meter("phase", "P3", "--mark", "first-code", "--at", early)
    assert refused.code == 1 and "before phase P3 began" in refused.err
    # A person's --at replaces the derived begin, without --force.
    moved = _ok(meter, "phase", "P3", "--mark", "begin", "--at", early)
    assert "confirmed" not in moved.out
    moved_begin = json.loads(_ok(meter, "phase", "P3", "--json").out)["phase_begin"]
    assert datetime.fromisoformat(moved_begin) == datetime.fromisoformat(early)


# ---------------------------------------------------------------- budgets and confirmation lines


def _budget_row(db_path, target):
    db = connection.connect(db_path)
    try:
        row = db.execute("SELECT tokens, usd, on_exceeded FROM budgets WHERE target = ?", (target,)).fetchone()
        return tuple(row) if row else None
    finally:
        db.close()


def test_a_budget_of_a_new_unit_replaces_the_old_one_unless_also(meter, db_path):
    _ok(meter, "set-task", "P1-010")
    line = _ok(meter, "task", "P1-010", "--budget", "10k", "--on-exceeded", "block", "--estimate", "1h30m").out
    assert line == "P1-010: budget 10,000 tokens (block); estimate 1h 30m.\n"
    replaced = _ok(meter, "task", "P1-010", "--budget", "$1").out
    assert replaced == "P1-010: budget $1.00 (block), was 10,000 tokens.\n"
    assert _budget_row(db_path, "P1-010") == (None, 1.0, "block")
    both = _ok(meter, "task", "P1-010", "--budget", "20k", "--also").out
    assert both == "P1-010: budget 20,000 tokens and $1.00 (block).\n"  # --also replaced nothing
    same_unit = _ok(meter, "task", "P1-010", "--budget", "$2", "--also").out
    assert same_unit == "P1-010: budget 20,000 tokens and $2.00 (block), was 20,000 tokens and $1.00.\n"
    removed = _ok(meter, "task", "P1-010", "--unset", "budget").out
    assert removed == "P1-010: budget removed (was 20,000 tokens and $2.00).\n"
    assert _budget_row(db_path, "P1-010") is None


def test_edits_print_one_line_show_and_json_print_the_record(meter):
    _ok(meter, "set-task", "P1-010")
    line = _ok(meter, "task", "P1-010", "--title", "Login", "--coverage-target", "80", "--perf-met", "yes").out
    assert line == "P1-010: title 'Login'; coverage-target 80%; perf-met yes.\n"
    assert _ok(meter, "task", "P1-010", "--unset", "title").out == "P1-010: title cleared.\n"
    shown = _ok(meter, "task", "P1-010", "--lessons", "small steps", "--show").out
    assert shown.startswith("P1-010: lessons 'small steps'.\n") and "=== TIMESTAMPS (ISO 8601 Format) ===" in shown
    assert "=== TIMESTAMPS (ISO 8601 Format) ===" in _ok(meter, "task", "P1-010").out  # viewing: the record
    record = json.loads(_ok(meter, "task", "P1-010", "--blockers", "none", "--json").out)
    assert record["blockers_encountered"] == "none"
    phase_line = _ok(meter, "phase", "P1", "--title", "Foundation", "--budget", "$50").out
    assert phase_line == "P1: budget $50.00 (warn by default); title 'Foundation'.\n"
    assert "=== META-LEARNING ===" in _ok(meter, "phase", "P1").out


# ---------------------------------------------------------------- the binding budget, through a real proxy

CHAT = "/v1/chat/completions"


@pytest.mark.e2e
def test_the_status_line_status_and_budget_show_the_budget_that_binds(tmp_path, meter, db_path, monkeypatch):
    body = next(f for f in ALL if f.name == "openai/chat_nonstream_cached_tokens").body  # 1,502 tokens
    with FakeUpstream() as upstream:
        upstream.routes[CHAT] = Scenario(body=body)
        origin = f"http://127.0.0.1:{upstream.port}"
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": origin})
        proxy = RunningProxy(config, db_path)
        try:
            _ok(meter, "set-task", "P4-001")
            _ok(meter, "task", "P4-001", "--budget", "1M")  # its own: almost nothing used
            _ok(meter, "phase", "P4", "--budget", "1581")  # the phase's: 95% after one call
            client = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-test")
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            rows = proxy.rows(wait_for=1)
        finally:
            proxy.stop()
    assert [row["task_id"] for row in rows] == ["P4-001"]  # stored once, on its task
    line = _ok(meter, "statusline").out
    assert "phase P4 budget 95%" in line and "budget 0%" not in line
    status = json.loads(_ok(meter, "status", "--json").out)
    assert (status["budget"]["scope"], status["budget"]["target"]) == ("phase", "P4")
    assert "The budget that binds P4-001 (the current task): phase P4, 95% used." in _ok(meter, "budget").err


def test_a_write_transaction_inside_another_commits_with_it_or_not_at_all(db):
    def titles():
        return [row[0] for row in db.execute("SELECT title FROM phases ORDER BY id")]

    db.execute("INSERT INTO phases (id, created_at) VALUES ('P1', '2026-01-01T00:00:00.000000Z')")
    with pytest.raises(RuntimeError), connection.write_transaction(db):
        db.execute("UPDATE phases SET title = 'outer'")
        with connection.write_transaction(db):
            db.execute("UPDATE phases SET title = 'inner'")
        raise RuntimeError("a later check fails")
    assert titles() == [None] and not db.in_transaction
    with connection.write_transaction(db):
        db.execute("UPDATE phases SET title = 'outer'")
        with pytest.raises(RuntimeError), connection.write_transaction(db):
            db.execute("UPDATE phases SET title = 'inner'")
            raise RuntimeError("the inner part fails, and the outer goes on")
    assert titles() == ["outer"]
