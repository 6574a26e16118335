"""A task's life through the real CLI (and a real `meter proxy`, git and the
official SDK where calls and commits are involved): typos need --create,
delete and merge move everything in one transaction, an approved task stops
being current, reopening keeps the approval's history, and re-estimating keeps
the first estimate. A command that fails changes nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from taskmeter.store import connection, migrations, tasks
from taskmeter.store.calls import recompute_context_switches
from tests.conftest import dump
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.gitrepo import eventually, git, task_row
from tests.proxy_harness import VENV_BIN, RunningProxy, write_config
from tests.test_pytest_plugin import project_venv, pytest_run

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
CHAT_TOKENS = 1502  # the recorded answer's prompt + completion tokens
CHAT_ARGS = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as fake:
        fake.routes[CHAT] = Scenario(body=next(f for f in ALL if f.name == "openai/chat_nonstream_cached_tokens").body)
        yield fake


@pytest.fixture
def proxy(tmp_path, upstream, db_path):
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
    running = RunningProxy(config, db_path)
    yield running
    running.stop()


def chat(proxy, task: str | None = None, first: str = "hi") -> None:
    prefix = f"/t/{task}" if task else ""
    client = openai.OpenAI(base_url=f"{proxy.origin}{prefix}/openai/v1", api_key="sk-test", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": first}])


def ok(result):
    assert result.code == 0, result.err
    return result


def stored(db_path) -> list[str]:
    """Every row of every table but the running proxy's own, whose heartbeat ticks on."""
    return [line for line in dump(db_path).splitlines() if not line.startswith('INSERT INTO "proxies"')]


def refused(meter, db_path, *args) -> str:
    """The command fails with one line and the database is exactly as it was."""
    before = stored(db_path)
    result = meter(*args)
    assert result.code == 1 and "Traceback" not in result.err, result
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert stored(db_path) == before
    return result.err


def rollups_match_the_calls(db) -> None:
    """The rollups kept by triggers equal a plain re-computation over the calls."""
    stored = {
        row["task_key"]: (row["interactions"], row["input_total"], row["output_total"])
        for row in db.execute("SELECT * FROM task_usage")
        if row["interactions"] or row["input_total"] or row["output_total"]
    }
    computed = {
        row[0]: tuple(row[1:])
        for row in db.execute(
            "SELECT coalesce(task_id, ''), count(*), sum(input_total), sum(output_total) FROM interactions"
            " WHERE operation = 'generate' GROUP BY 1"
        )
    }
    assert stored == computed
    quarters = dict(
        db.execute("SELECT task_key, sum(ai_interactions) FROM usage_quarters GROUP BY 1 HAVING sum(ai_interactions)")
    )
    assert quarters == {key: value[0] for key, value in computed.items()}
    minutes = {tuple(row) for row in db.execute("SELECT task_id, minute FROM task_activity")}
    assert minutes == {
        tuple(row)
        for row in db.execute("SELECT DISTINCT task_id, substr(started_at, 1, 16) FROM interactions WHERE task_id IS NOT NULL")
    }


# ------------------------------------------------------------ typos need --create


def test_a_new_id_near_an_existing_one_or_in_a_strange_phase_needs_create(meter, db, db_path):
    ok(meter("set-task", "P1-001"))  # the first task of an empty database
    ok(meter("set-task", "P1-002"))  # one edit from P1-001, but the next of P1's numbering
    ok(meter("set-task", "P2-001"))  # the next phase in the same naming
    ok(meter("set-task", "P3.5-001"))  # a new phase in the same naming, not the next number
    err = refused(meter, db_path, "set-task", "P1-00O")
    assert "P1-00O is a new task ID within one edit of P1-001, P1-002" in err and "--create" in err
    assert "one edit of P1-001" in refused(meter, db_path, "set-task", "P1-0001")  # a zero too many
    ok(meter("set-task", "P2-021"))  # any number above the phase's others
    assert "one edit of P2-021" in refused(meter, db_path, "set-task", "P2-012")  # two neighbours swapped
    err = refused(meter, db_path, "set-task", "LOGIN-STUFF")
    assert "would start phase LOGIN, which does not follow this database's phase naming (P1, P2, P3.5)" in err
    assert "phase LOGIN" in refused(meter, db_path, "set-task", "P1-003", "--phase", "LOGIN")

    assert "created" in ok(meter("set-task", "P1-00O", "--create")).out
    assert tasks.current_task(db).task_id == "P1-00O"
    ok(meter("set-task", "P1-001"))  # an existing task is never in question
    assert {row[0] for row in db.execute("SELECT id FROM phases")} == {"P1", "P2", "P3.5"}


def test_moving_a_task_to_a_strange_phase_or_pointing_env_at_a_near_typo_needs_create(meter, db, db_path):
    ok(meter("set-task", "P1-001"))
    ok(meter("set-task", "P2-001"))
    assert "P1-001 would move to a new phase LOGIN" in refused(meter, db_path, "task", "P1-001", "--phase", "LOGIN")
    assert "phase LOGIN" in refused(meter, db_path, "set-task", "P1-001", "--phase", "LOGIN")
    assert "within one edit of P1-001" in refused(meter, db_path, "env", "--task", "P1-00l")
    ok(meter("task", "P1-001", "--phase", "P3"))  # a new phase in the same naming
    assert "LOGIN-1" in ok(meter("env", "--task", "LOGIN-1", "--create")).out
    ok(meter("task", "P1-001", "--phase", "LOGIN", "--create"))
    assert tasks.get_task(db, "P1-001")["phase_id"] == "LOGIN"


def test_run_refuses_a_near_typo_before_its_command_starts_and_the_proxy_records_any_task(meter, db, db_path, proxy, tmp_path):
    ok(meter("set-task", "P1-010"))
    chat(proxy)
    proxy.rows(wait_for=1)
    marker = tmp_path / "ran"
    err = refused(meter, db_path, "run", "--task", "P1-01O", "--", "touch", str(marker))
    assert "within one edit of P1-010" in err
    assert not marker.exists()

    # With --create the command runs, its SDK call goes to the new task through the running proxy.
    script = (
        "import openai; openai.OpenAI(max_retries=0).chat.completions.create("
        + ", ".join(f"{k}={v!r}" for k, v in CHAT_ARGS.items())
        + ")"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_PROXY", "_proxy"))} | {"OPENAI_API_KEY": "sk-test"}
    result = subprocess.run(
        [str(VENV_BIN / "meter"), "run", "--task", "P1-01O", "--create", "--config", str(proxy.config), "--db", str(db_path), "--", sys.executable, "-c", script],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # A call naming a near-typo through /t/ is recorded, never refused: the meter must not lose it.
    chat(proxy, "P1-0100")
    rows = proxy.rows(wait_for=3)
    assert len(rows) == 3 and len({row["id"] for row in rows}) == 3  # every call stored once
    assert [row["task_id"] for row in rows] == ["P1-010", "P1-01O", "P1-0100"]
    assert tasks.get_task(db, "P1-0100")["phase_id"] == "P1"


def test_a_branch_naming_a_near_typo_creates_no_task_and_says_why(meter, db, repo, db_path):
    ok(meter("hooks", "install", "--repo", str(repo)))
    ok(meter("set-task", "P1-010"))
    git(repo, "checkout", "-q", "-b", "feature/P1-01-login")  # a zero dropped
    log = Path(os.environ["XDG_STATE_HOME"]) / "taskmeter" / "hooks.log"
    eventually(lambda: log.exists() and "feature/P1-01-login names no task" in log.read_text())
    assert "P1-01 is a new task ID within one edit of P1-010" in log.read_text()
    (repo / "a.py").write_text('"""A."""\n')
    git(repo, "add", "a.py")
    git(repo, "commit", "-q", "-m", "a")
    commit = eventually(lambda: db.execute("SELECT task_id FROM commits").fetchone())
    assert commit["task_id"] == "P1-010"  # the branch names no task: the current one's
    assert task_row(db_path, "P1-01") is None
    git(repo, "checkout", "-q", "-b", "feature/P1-011")  # the next of the numbering: made as always
    eventually(lambda: task_row(db_path, "P1-011"))
    assert tasks.current_task(db).task_id == "P1-011"


# ------------------------------------------------------------ delete and merge


def test_merge_moves_calls_flags_events_and_the_time_it_was_current(meter, db, db_path, proxy):
    ok(meter("set-task", "P1-010", "--estimate", "1h"))
    chat(proxy, first="a")
    ok(meter("set-task", "P1-01O", "--create"))  # the typo, current for a while
    chat(proxy, first="b")
    chat(proxy, first="b")
    ok(meter("iteration", "--note", "redo"))
    ok(meter("mark", "initial"))
    ok(meter("task", "P1-01O", "--budget", "10k"))
    ok(meter("set-task", "P1-010"))
    chat(proxy, first="a")
    rows = proxy.rows(wait_for=4)
    assert len(rows) == 4
    ok(meter("flag", rows[1]["id"], "--note", "invented"))  # the typo task's first call: the second is rework

    err = refused(meter, db_path, "task", "P1-01O", "--delete")
    assert "P1-01O has 2 calls: give --move-calls-to TASK" in err
    assert "unknown task 'P9-999'" in refused(meter, db_path, "task", "P1-01O", "--merge-into", "P9-999")
    assert "own calls" in refused(meter, db_path, "task", "P1-01O", "--merge-into", "p1-01o")
    assert "go alone" in refused(meter, db_path, "task", "P1-01O", "--merge-into", "P1-010", "--title", "x")

    line = ok(meter("task", "P1-01O", "--merge-into", "P1-010")).out
    assert (
        "P1-01O merged into P1-010; 2 calls moved to P1-010; 2 milestone and iteration events moved; P1-010 took its initial"
        in line
    )
    assert db.execute("SELECT count(*) FROM tasks WHERE id = 'P1-01O'").fetchone()[0] == 0
    assert {row[0] for row in db.execute("SELECT task_id FROM interactions")} == {"P1-010"}
    assert db.execute("SELECT count(*) FROM budgets").fetchone()[0] == 0  # its cap went with it
    assert {row[0] for row in db.execute("SELECT task_id FROM task_events WHERE kind = 'switch'")} == {"P1-010"}
    rollups_match_the_calls(db)
    with connection.write_transaction(db):
        assert recompute_context_switches(db, "P1-010") == 0  # already by the rule
    report = json.loads(ok(meter("task", "P1-010", "--json")).out)
    assert report["ai_interactions"] == 4 and report["token_count_used"] == 4 * CHAT_TOKENS
    assert report["iterations_count"] == 2 and report["initial_completion_timestamp"] is not None
    assert (report["hallucination_count"], report["rework_interactions"], report["rework_tokens"]) == (1, 1, CHAT_TOKENS)
    assert report["estimated_duration"] == 3600  # P1-010's own fields stay
    switches = db.execute("SELECT task_id, previous_task_id FROM task_events WHERE kind = 'switch'").fetchall()
    assert [tuple(row) for row in switches] == [("P1-010", None)]  # current all along: no switch, no context switch
    conversations = {row[0] for row in db.execute("SELECT conversation_id FROM interactions")}
    assert len(conversations) == 2  # "a" and "b", each scoped to P1-010 now


def test_merge_moves_commits_and_test_runs_with_the_milestones_they_set(meter, db, repo, db_path):
    project_venv(repo)
    ok(meter("hooks", "install", "--repo", str(repo)))
    ok(meter("set-task", "P1-010"))
    ok(meter("set-task", "P1-01O", "--create"))
    git(repo, "checkout", "-q", "-b", "work")  # a branch that names no task: the current one's work
    (repo / "calc.py").write_text('"""Arithmetic."""\n\n\ndef add(a, b):\n    """The sum."""\n    return a + b\n')
    (repo / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "calc")
    assert pytest_run(repo).returncode == 0
    typo = eventually(lambda: (t := task_row(db_path, "P1-01O")) and t["tests_completion_at"] and t)
    assert "has 1 commit, 1 test run" in refused(meter, db_path, "task", "P1-01O", "--delete")

    line = ok(meter("task", "P1-01O", "--merge-into", "P1-010")).out
    assert "1 commit, 1 test run moved to P1-010" in line and "P1-010 took its initial, tests" in line
    assert [tuple(r) for r in db.execute("SELECT task_id FROM commits UNION ALL SELECT task_id FROM test_runs")] == [
        ("P1-010",),
        ("P1-010",),
    ]
    task = task_row(db_path, "P1-010")
    assert (task["initial_completion_at"], task["tests_completion_at"]) == (
        typo["initial_completion_at"],
        typo["tests_completion_at"],
    )
    sources = [row[0] for row in db.execute("SELECT DISTINCT task_id FROM automatic_marks WHERE task_id IS NOT NULL")]
    assert sources == ["P1-010"]  # the marks behind the milestones taken came along


def test_delete_moves_calls_only_when_told_and_takes_an_empty_phase_along(meter, db, db_path, proxy):
    ok(meter("set-task", "P1-010"))
    chat(proxy, "LOGIN-1")  # a call naming a typo of a task in a new phase: recorded as it came
    assert len(proxy.rows(wait_for=1)) == 1
    assert "LOGIN-1 has 1 call" in refused(meter, db_path, "task", "LOGIN-1", "--delete")
    assert "go alone" in refused(meter, db_path, "task", "LOGIN-1", "--move-calls-to", "P1-010")
    line = ok(meter("task", "LOGIN-1", "--delete", "--move-calls-to", "P1-010")).out
    assert line.strip() == "LOGIN-1 deleted; 1 call moved to P1-010; phase LOGIN had no other task and was deleted."
    assert db.execute("SELECT id FROM phases").fetchall()[0][0] == "P1"
    rollups_match_the_calls(db)

    ok(meter("set-task", "P1-01I", "--create"))
    line = ok(meter("task", "P1-01I", "--delete")).out
    assert line.strip() == "P1-01I deleted; no task is current now."
    assert tasks.current_task(db) is None
    chat(proxy)
    assert proxy.rows(wait_for=2)[-1]["task_id"] is None  # the time it was current is no other task's


# ------------------------------------------------------------ approval and reopening


def statusline(db_path) -> str:
    result = subprocess.run(
        [str(VENV_BIN / "meter"), "statusline", "--db", str(db_path)], input="{}", capture_output=True, text=True
    )
    return result.stdout.strip()


def test_approving_the_current_task_clears_it_and_status_says_so(meter, db, db_path):
    ok(meter("set-task", "P1-010"))
    ok(meter("set-task", "P1-011"))
    assert "P1-010: approved at" in ok(meter("mark", "approved", "--force", "P1-010")).out
    assert tasks.current_task(db).task_id == "P1-011"  # not the current one: nothing changes
    line = ok(meter("mark", "approved", "--force")).out
    assert line.strip().endswith("; no task is current now.")
    assert tasks.current_task(db) is None
    assert "No current task (P1-011 approved)" in ok(meter("status")).out
    assert json.loads(ok(meter("status", "--json")).out)["current_note"] == "P1-011 approved"
    assert "no task (P1-011 approved)" in statusline(db_path)


def test_approving_selects_the_branch_s_next_task(meter, db, db_path, repo, monkeypatch):
    ok(meter("hooks", "install", "--repo", str(repo)))
    ok(meter("set-task", "P1-010"))
    git(repo, "checkout", "-q", "-b", "feature/P1-011")
    eventually(lambda: task_row(db_path, "P1-011"))
    ok(meter("set-task", "P1-010"))
    monkeypatch.chdir(repo)
    line = ok(meter("mark", "approved", "--force")).out
    assert "P1-010: approved at" in line and "; P1-011 (this branch's task) is current now." in line
    assert tasks.current_task(db).task_id == "P1-011"
    assert "since P1-010 approved" in ok(meter("status")).out


def test_reopen_keeps_the_approval_in_history_and_working_time_resumes(meter, db, db_path, proxy):
    ok(meter("set-task", "P1-010"))
    assert "P1-010 is not approved" in refused(meter, db_path, "task", "P1-010", "--reopen")
    ok(meter("mark", "approved", "--force"))
    approved = json.loads(ok(meter("task", "P1-010", "--json")).out)
    chat(proxy, "P1-010")  # work after the approval, from a second terminal
    proxy.rows(wait_for=1)
    line = ok(meter("task", "P1-010", "--reopen")).out
    assert "P1-010 reopened: its approval of" in line and "working time resumes" in line
    reopened = json.loads(ok(meter("task", "P1-010", "--json")).out)
    assert reopened["status"] == "open" and reopened["final_approval_timestamp"] is None
    assert reopened["actual_duration"] > approved["actual_duration"]  # the call after the approval is working time
    assert reopened["approvals"][0]["approved_at"] == approved["final_approval_timestamp"]
    assert reopened["after_approval"] is None
    ok(meter("mark", "approved", "P1-010", "--force"))
    report = json.loads(ok(meter("task", "P1-010", "--json")).out)
    assert [a["reopened_at"] is None for a in report["approvals"]] == [False, True]
    assert report["approvals"][1]["approved_at"] == report["final_approval_timestamp"]
    text = ok(meter("task", "P1-010")).out
    assert "APPROVALS:" in text and "(reopened " in text and "(in force)" in text


def test_a_merge_does_not_reapprove_a_reopened_task_until_a_new_commit_is_in(meter, db, repo, db_path):
    ok(meter("hooks", "install", "--repo", str(repo)))
    git(repo, "checkout", "-q", "-b", "feature/P1-010")
    eventually(lambda: task_row(db_path, "P1-010"))

    def commit_and_merge(name: str) -> None:
        git(repo, "checkout", "-q", "feature/P1-010")
        (repo / f"{name}.py").write_text(f'"""{name}."""\n')
        git(repo, "add", f"{name}.py")
        git(repo, "commit", "-q", "-m", name)
        eventually(lambda: db.execute("SELECT 1 FROM commits WHERE branch = 'feature/P1-010' AND sha = ?", (head(),)).fetchone())
        git(repo, "checkout", "-q", "main")
        git(repo, "merge", "-q", "--no-ff", "-m", f"merge {name}", "feature/P1-010")
        eventually(lambda: task_row(db_path, "P1-010")["final_approval_at"])
        eventually(lambda: tasks.current_task(db) is None)  # approved by the merge: current no more
        assert "no task (P1-010 approved)" in statusline(db_path)

    def head() -> str:
        return git(repo, "rev-parse", "HEAD").stdout.strip()

    commit_and_merge("a")
    ok(meter("task", "P1-010", "--reopen"))
    # The post-merge hook's work, run here to its end: main still holds only the commit that approved it.
    hook = [sys.executable, "-m", "taskmeter.automation.git", "--repo", str(repo), "--db", str(db_path), "post-merge"]
    subprocess.run(hook, check=True, timeout=30)
    assert task_row(db_path, "P1-010")["final_approval_at"] is None
    commit_and_merge("b")
    report = json.loads(ok(meter("task", "P1-010", "--json")).out)
    assert len(report["approvals"]) == 2 and report["approvals"][0]["reopened_at"] is not None


# ------------------------------------------------------------ estimates


def test_re_estimating_keeps_the_first_estimate_for_the_seed_s_fields(meter, db):
    ok(meter("set-task", "P1-010", "--estimate", "15m"))
    ok(meter("set-task", "P1-010", "--estimate", "30m"))
    ok(meter("task", "P1-010", "--estimate", "45m"))
    ok(meter("mark", "approved", "--force"))
    report = json.loads(ok(meter("task", "P1-010", "--json")).out)
    assert report["estimated_duration"] == 900 and report["estimate_latest"] == 2700
    assert [e["estimate_seconds"] for e in report["estimates"]] == [900, 1800, 2700]
    assert report["variance"] == pytest.approx(report["actual_duration"] - 900)
    assert report["efficiency_ratio"] == pytest.approx(report["actual_duration"] / 900)
    phase = json.loads(ok(meter("phase", "P1", "--json")).out)
    assert phase["estimated_total"] == 900
    assert "ESTIMATE_LATEST:   0.75 hours (45m) (estimates in order: 15m -> 30m -> 45m)" in ok(meter("task", "P1-010")).out
    ok(meter("task", "P1-010", "--unset", "estimate"))
    assert json.loads(ok(meter("task", "P1-010", "--json")).out)["estimated_duration"] is None


def test_m018_keeps_an_older_database_s_estimate_as_the_first(db_path, monkeypatch, meter):
    with monkeypatch.context() as before_m018:
        before_m018.setattr(migrations, "MIGRATIONS", [m for m in migrations.MIGRATIONS if m.__name__ < "m018"])
        old = connection.connect(db_path)
        with old:
            old.execute("INSERT INTO phases (id, created_at) VALUES ('P1', '2026-01-01T09:00:00.000000Z')")
            old.execute(
                "INSERT INTO tasks (id, phase_id, created_at, begin_at, estimate_seconds)"
                " VALUES ('P1-010', 'P1', '2026-01-01T09:00:00.000000Z', '2026-01-01T09:00:00.000000Z', 600)"
            )
        old.close()
    ok(meter("task", "P1-010", "--estimate", "20m"))  # opening it upgrades it
    report = json.loads(ok(meter("task", "P1-010", "--json")).out)
    assert report["estimates"] == [
        {"set_at": "2026-01-01T09:00:00.000000Z", "estimate_seconds": 600},
        {"set_at": report["estimates"][1]["set_at"], "estimate_seconds": 1200},
    ]
    assert report["estimated_duration"] == 600
