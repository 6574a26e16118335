"""The git hooks in a real repository: the branch picks the task, commits mark
INITIAL_COMPLETION and PHASE_FIRST_CODE, a merge into main marks FINAL_APPROVAL;
hooks already there keep running, and git never sees a failure or a delay."""

import subprocess
import time

import pytest

from taskmeter.automation.git import MARKER
from taskmeter.store import connection, tasks
from tests.gitrepo import background_work_done, eventually, git, meter, task_row

pytestmark = pytest.mark.e2e


def test_branch_commit_and_merge_fill_the_record(repo, db_path):
    assert meter("hooks", "install", "--repo", str(repo)).returncode == 0
    started = time.monotonic()
    git(repo, "checkout", "-q", "-b", "feature/P1-010-login")
    assert time.monotonic() - started < 2  # the hook returned at once (the work is in the background)
    eventually(lambda: task_row(db_path, "P1-010"))
    db = connection.connect(db_path)
    assert tasks.current_task(db).task_id == "P1-010"
    db.close()

    (repo / "login.py").write_text("def login():\n    return True\n")
    git(repo, "add", "login.py")
    git(repo, "commit", "-q", "-m", "login")
    sha = git(repo, "rev-parse", "HEAD").stdout.strip()
    task = eventually(lambda: (t := task_row(db_path, "P1-010")) and t["initial_completion_at"] and t)
    db = connection.connect(db_path)
    commit = dict(db.execute("SELECT * FROM commits WHERE sha = ?", (sha,)).fetchone())
    assert (commit["task_id"], commit["branch"], commit["files"], commit["insertions"]) == (
        "P1-010",
        "feature/P1-010-login",
        1,
        2,
    )
    assert task["initial_completion_at"] == commit["committed_at"]
    assert db.execute("SELECT first_code_at FROM phases WHERE id = 'P1'").fetchone()[0] == commit["committed_at"]
    marks = [(row["milestone"], row["value"], row["source"]) for row in db.execute("SELECT * FROM automatic_marks ORDER BY id")]
    assert marks == [
        ("initial", commit["committed_at"], f"commit {sha[:12]}"),
        ("first-code", commit["committed_at"], f"commit {sha[:12]}"),
        ("doc_completeness", 0.0, f"docstrings at {sha[:12]}"),  # login.py: neither module nor function has one
    ]
    db.close()

    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "-m", "merge", "feature/P1-010-login")
    approved = eventually(lambda: (t := task_row(db_path, "P1-010")) and t["final_approval_at"] and t)
    assert approved["final_approval_at"] > commit["committed_at"]
    db = connection.connect(db_path)
    integrated = db.execute("SELECT integration_complete_at FROM phases WHERE id = 'P1'").fetchone()[0]
    assert integrated == approved["final_approval_at"]  # P1's only task is in main
    db.close()


def test_a_person_s_mark_is_never_overwritten(repo, db_path):
    meter("hooks", "install", "--repo", str(repo))
    assert meter("set-task", "P2-001").returncode == 0
    assert meter("mark", "initial", "P2-001").returncode == 0
    typed = task_row(db_path, "P2-001")["initial_completion_at"]
    git(repo, "checkout", "-q", "-b", "P2-001")
    (repo / "a.py").write_text("x = 1\n")
    git(repo, "add", "a.py")
    git(repo, "commit", "-q", "-m", "a")
    db = connection.connect(db_path)
    eventually(lambda: db.execute("SELECT count(*) FROM commits WHERE task_id = 'P2-001'").fetchone()[0])
    db.close()
    assert task_row(db_path, "P2-001")["initial_completion_at"] == typed


def test_existing_hooks_are_chained_kept_and_restored_and_core_hookspath_honoured(repo, db_path, tmp_path):
    hooks = tmp_path / "shared-hooks"
    hooks.mkdir()
    git(repo, "config", "core.hooksPath", str(hooks))
    theirs = hooks / "post-commit"
    theirs.write_text(f"#!/bin/sh\necho ran >> '{tmp_path / 'theirs.log'}'\nexit 3\n")
    theirs.chmod(0o755)
    for _ in range(2):  # installing twice changes nothing
        assert meter("hooks", "install", "--repo", str(repo)).returncode == 0
    assert "exit 3" in (hooks / "post-commit.pre-meter").read_text()
    assert "status=0" in (hooks / "post-commit").read_text()
    (repo / "b.py").write_text("y = 2\n")
    git(repo, "add", "b.py")
    committed = subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "b"], capture_output=True, text=True)
    assert committed.returncode == 0  # a post-commit hook's status never fails the commit
    assert (tmp_path / "theirs.log").read_text() == "ran\n"
    assert "installed" in meter("hooks", "status", "--repo", str(repo)).stdout
    assert meter("hooks", "uninstall", "--repo", str(repo)).returncode == 0
    assert "exit 3" in theirs.read_text() and not (hooks / "post-commit.pre-meter").exists()
    assert "not installed" in meter("hooks", "status", "--repo", str(repo)).stdout


@pytest.mark.parametrize("hooks_path", [None, "shared-hooks"])
def test_hooks_installed_from_a_subfolder_go_where_git_runs_them(repo, db_path, hooks_path):
    """git answers a relative hooks folder relative to the folder it was asked in, not to the top."""
    if hooks_path:
        git(repo, "config", "core.hooksPath", hooks_path)  # relative: to the top, where hooks run
    folder = repo / (hooks_path or ".git/hooks")
    below = repo / "src" / "pkg"
    below.mkdir(parents=True)
    installed = meter("hooks", "install", "--repo", str(below))
    assert installed.returncode == 0, installed.stderr
    assert f"in {folder}\n" in installed.stdout and git_hooks_ours(folder)
    assert f"installed in {folder};" in meter("hooks", "status", "--repo", str(below)).stdout
    (below / "m.py").write_text("x = 1\n")
    git(below, "add", "m.py")
    git(below, "commit", "-q", "-m", "m")
    sha = git(repo, "rev-parse", "HEAD").stdout.strip()
    background_work_done(repo)
    db = connection.connect(db_path)
    assert db.execute("SELECT count(*) FROM commits WHERE sha = ?", (sha,)).fetchone()[0] == 1
    db.close()
    assert meter("hooks", "uninstall", "--repo", str(below)).returncode == 0
    assert not git_hooks_ours(folder)


def git_hooks_ours(folder) -> bool:
    hook = folder / "post-commit"
    return hook.exists() and MARKER in hook.read_text()


def test_file_checkouts_detached_heads_and_other_branches_leave_the_task_alone(repo, db_path):
    meter("hooks", "install", "--repo", str(repo))
    assert meter("set-task", "P3-001").returncode == 0
    git(repo, "checkout", "-q", "README")  # a file checkout (flag 0)
    git(repo, "checkout", "-q", "--detach")
    git(repo, "checkout", "-q", "-b", "docs-cleanup")  # no task in the name
    background_work_done(repo)  # the hooks' jobs have ended: whatever they do is done
    db = connection.connect(db_path)
    assert tasks.current_task(db).task_id == "P3-001"
    db.close()


def test_outside_a_repository_install_is_a_clear_error(tmp_path):
    result = meter("hooks", "install", "--repo", str(tmp_path))
    assert result.returncode == 1 and "is not a git repository" in result.stderr and "Traceback" not in result.stderr
