"""Git's hooks hand each event to a background job (`meter hooks git-event`), and under
load those jobs can run in any order. Here the jobs of `checkout -b A; commit; checkout
-b B` run deliberately late and out of order, as a busy run of the automation drill saw
them: the commit still counts against A's task, and the developer is left on B's."""

import pytest

from taskmeter.automation import git as git_hooks
from taskmeter.config.settings import load_settings
from taskmeter.store import connection, tasks
from taskmeter.store.connection import write_transaction
from taskmeter.timefmt import now_stored
from tests.gitrepo import background_work_done, git, meter, task_row

pytestmark = pytest.mark.e2e  # real git

EARLIER = "2020-01-01T00:00:00.000000Z"  # tasks made long before the git work here


def job(repo, db_path, hook: str, branch: str, at: str | None, head: str | None = None) -> None:
    """What the hook's background job does when it finally runs (`meter hooks git-event`):
    the branch, HEAD and moment (None: a hook of an older meter) are those the hook saw."""
    automation = load_settings().automation
    db = connection.connect(db_path)
    try:
        if hook == "post-checkout":  # a branch checkout (flag 1)
            git_hooks.on_checkout(db, repo, "1", branch, automation.branch_pattern, automation.main_branch, at)
        else:
            git_hooks.on_commit(db, repo, head or "HEAD", branch, automation.branch_pattern, at)
    finally:
        db.close()


def checkout(repo, *args: str) -> str:
    """`git checkout ARGS`, and the moment its hook saw."""
    git(repo, "checkout", "-q", *args)
    return now_stored()


def commit(repo, name: str) -> tuple[str, str]:
    """A commit, and the moment its hook saw."""
    (repo / name).write_text("x = 1\n")
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", name)
    return git(repo, "rev-parse", "HEAD").stdout.strip(), now_stored()


def make_tasks(db_path, *task_ids: str) -> None:
    db = connection.connect(db_path)
    with write_transaction(db):
        for task_id in task_ids:
            tasks.ensure_task(db, task_id, EARLIER)
    db.close()


def recorded(db_path) -> tuple[dict, str | None]:
    """Each commit's task, and the current task."""
    db = connection.connect(db_path)
    try:
        credited = {row["sha"]: row["task_id"] for row in db.execute("SELECT sha, task_id FROM commits")}
        current = tasks.current_task(db)
        return credited, current.task_id if current else None
    finally:
        db.close()


@pytest.fixture
def history(repo, db_path):
    """P1-020 exists; then `checkout -b feature/P1-030-before`, a commit on it and
    `checkout -b feature/P1-031-after`, whose jobs have not run yet: the moments and SHA
    their hooks saw."""
    make_tasks(db_path, "P1-020")
    before = checkout(repo, "-b", "feature/P1-030-before")
    sha, committed = commit(repo, "before.py")
    after = checkout(repo, "-b", "feature/P1-031-after")
    return before, sha, committed, after


def test_a_commit_whose_job_runs_after_a_later_checkouts_counts_against_its_own_branch(repo, db_path, history):
    before, sha, committed, after = history
    job(repo, db_path, "post-checkout", "feature/P1-031-after", after)  # the last checkout's job first
    job(repo, db_path, "post-commit", "feature/P1-030-before", committed, head=sha)
    job(repo, db_path, "post-checkout", "feature/P1-030-before", before)  # the first checkout's job last
    credited, current = recorded(db_path)
    # P1-030 is one edit from P1-031, which the late job made first, but P1-031 was not
    # there when the commit was made: the branch's task is no typo.
    assert credited[sha] == "P1-030"
    # The first checkout's job ran last, but git had left its branch: the developer is on P1-031.
    assert current == "P1-031"


def test_jobs_in_order_give_the_same_record(repo, db_path, history):
    before, sha, committed, after = history
    job(repo, db_path, "post-checkout", "feature/P1-030-before", before)
    job(repo, db_path, "post-commit", "feature/P1-030-before", committed, head=sha)
    job(repo, db_path, "post-checkout", "feature/P1-031-after", after)
    assert recorded(db_path) == ({sha: "P1-030"}, "P1-031")


def test_a_hook_of_an_older_meter_judges_by_the_tasks_there_are_when_its_job_runs(repo, db_path, history):
    before, sha, committed, after = history
    job(repo, db_path, "post-checkout", "feature/P1-031-after", None)
    job(repo, db_path, "post-commit", "feature/P1-030-before", None, head=sha)
    # It said no moment: P1-030 is one edit from P1-031, so no task, and the current one's.
    assert recorded(db_path) == ({sha: "P1-031"}, "P1-031")


def test_a_branch_that_is_a_typo_of_a_task_made_before_the_commit_is_still_refused(repo, db_path):
    make_tasks(db_path, "P1-020", "P1-031")
    typo = checkout(repo, "-b", "feature/P1-030-typo")
    sha, committed = commit(repo, "typo.py")
    job(repo, db_path, "post-checkout", "feature/P1-030-typo", typo)
    job(repo, db_path, "post-commit", "feature/P1-030-typo", committed, head=sha)
    # P1-030 is one edit from P1-031 and P1-020, both older than the commit: no new task
    # from a branch name; the commit goes to the current task (none here).
    assert recorded(db_path) == ({sha: None}, None)
    assert task_row(db_path, "P1-030") is None


def test_a_checkout_whose_job_runs_after_the_next_checkouts_leaves_the_developer_on_the_last_branch(repo, db_path):
    first = checkout(repo, "-b", "feature/P1-040-first")
    second = checkout(repo, "-b", "feature/P1-050-second")
    job(repo, db_path, "post-checkout", "feature/P1-050-second", second)
    job(repo, db_path, "post-checkout", "feature/P1-040-first", first)  # late: git has left this branch
    # The developer is on P1-050; P1-040 is made, though one edit from P1-050, which did not exist yet.
    assert recorded(db_path)[1] == "P1-050"
    assert task_row(db_path, "P1-040") is not None
    back = checkout(repo, "feature/P1-040-first")  # and back: that job selects it
    job(repo, db_path, "post-checkout", "feature/P1-040-first", back)
    assert recorded(db_path)[1] == "P1-040"


def test_a_hook_says_when_it_ran_and_its_job_reads_it(repo, db_path):
    assert meter("hooks", "install", "--repo", str(repo)).returncode == 0
    hook = (repo / ".git" / "hooks" / "post-checkout").read_text()
    assert "at=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)" in hook and '--at "$at"' in hook
    checkout(repo, "-b", "feature/P1-060-timed")
    background_work_done(repo)
    assert recorded(db_path)[1] == "P1-060"


@pytest.mark.parametrize(
    ("said", "moment"),
    [
        ("2026-12-05T20:55:01.123456789Z", "2026-12-05T20:55:01.123456Z"),  # GNU date
        ("2026-12-05T20:55:01.NZ", "2026-12-05T20:55:02.000000Z"),  # a date without %N: the end of its second
        ("", None),
        ("yesterday", None),
    ],
)
def test_the_moment_a_hook_says(said, moment):
    assert git_hooks._moment(said) == moment
