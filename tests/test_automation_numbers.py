"""The numbers the automation fills from git and pytest mean what the developer
means: red-green TDD is not rework (ITERATIONS_COUNT), coverage's default
`fail_under` of 0 is no target (TEST_COVERAGE_TARGET), and DOC_COMPLETENESS
leaves out test files and private helpers. Commits are real git commits (dated
by GIT_COMMITTER_DATE) recorded by the post-commit hook's code; test runs are
handed to testruns as the pytest plugin hands them (the Level 1 end-to-end test
in test_pytest_plugin.py runs real pytest and pytest-cov)."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from taskmeter.automation import git as automation_git
from taskmeter.automation import testruns
from taskmeter.config import load_settings
from taskmeter.store import connection, migrations, tasks
from taskmeter.timefmt import to_stored
from tests.gitrepo import eventually, git, meter, task_row

pytestmark = pytest.mark.e2e

BRANCH = "feature/P1-001-calc"
START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)


def at(minute: float) -> datetime:
    return START + timedelta(minutes=minute)


class Work:
    """One task's work with every moment chosen: dated real commits, and pytest
    sessions handed over as the plugin hands them."""

    def __init__(self, repo: Path, db):
        self.repo, self.db = repo, db
        git(repo, "checkout", "-q", "-b", BRANCH)

    def commit(self, minute: float) -> None:
        (self.repo / "calc.py").write_text(f"STEP = {minute}\n")
        git(self.repo, "add", "calc.py")
        stamp = at(minute).isoformat()
        subprocess.run(
            ["git", "-C", str(self.repo), "commit", "-q", "-m", f"step {minute}"],
            check=True,
            env={**os.environ, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp},
        )
        automation_git.on_commit(self.db, self.repo, "HEAD", BRANCH, load_settings().automation.branch_pattern)

    def run(self, minute: float, exit_status: int, tests: int, fail_under=None, configured=None) -> None:
        run = {
            "repo": str(self.repo),
            "branch": BRANCH,
            "at": at(minute).timestamp(),
            "exit_status": exit_status,
            "tests": tests,
            "failed": 1 if exit_status else 0,
            "selected": False,
            "coverage": 80.0,
            "coverage_target": fail_under,
        }
        testruns.record_run(self.db, run, "P1-001", configured)

    def iterations(self) -> int:
        return tasks.iterations(self.db, "P1-001")


@pytest.fixture
def work(repo, db_path):
    db = connection.connect(db_path)
    yield Work(repo, db)
    db.close()


def test_red_green_tdd_is_the_first_attempt_and_red_after_a_commit_is_rework(work, meter):
    work.commit(0)  # INITIAL_COMPLETION
    work.run(1, 1, tests=1)  # red before any green run: not yet tested
    work.run(2, 0, tests=1)  # TESTS_COMPLETION
    work.run(3, 1, tests=2)  # TDD: a new failing test
    work.run(4, 0, tests=2)
    work.run(5, 1, tests=2)  # broken, no test added, but no commit since the first green run
    assert work.iterations() == 1
    work.commit(6)
    work.run(7, 1, tests=3)  # after the commit, yet it adds a test: TDD again
    work.run(8, 0, tests=3)
    work.run(9, 1, tests=3)  # rework
    work.run(10, 1, tests=2)  # still red, fewer tests: rework
    assert work.iterations() == 3
    assert meter("iteration", "P1-001", "--note", "wrong API").code == 0  # a retry a person records adds to them
    assert work.iterations() == 4
    work.run(11, 0, tests=3)
    assert meter("mark", "approved", "P1-001", "--at", at(12).isoformat()).code == 0
    work.run(13, 1, tests=3)  # after approval: changes nothing
    assert json.loads(meter("task", "P1-001", "--json").out)["iterations_count"] == 4
    # Nothing derived is stored: the count follows the rule whenever it is read.
    kinds = [row["note"] for row in work.db.execute("SELECT note FROM task_events WHERE kind = 'iteration'")]
    assert kinds == ["wrong API"]


SECOND = 1 / 60  # of a minute


def test_a_red_run_in_the_second_git_dates_the_next_commit_to_may_have_come_before_it(work):
    """Git dates a commit to the whole second; pytest dates a run to the microsecond."""
    work.commit(0)
    work.run(1, 0, tests=2)  # TESTS_COMPLETION
    work.run(2 + 0.2 * SECOND, 1, tests=2)  # broken, then fixed and committed within the same second
    work.run(2 + 0.5 * SECOND, 0, tests=2)
    work.commit(2)  # dated 2:00, made at 2:00.9
    assert work.iterations() == 1
    work.run(2 + 1.2 * SECOND, 1, tests=2)  # after the commit's second: rework
    assert work.iterations() == 2


def test_a_commit_in_the_second_of_the_first_green_run_counts_as_made_since_it(work):
    work.commit(0)
    work.run(1 + 0.7 * SECOND, 0, tests=2)  # TESTS_COMPLETION
    work.commit(1)  # dated 1:00, made at 1:00.9
    work.run(2, 1, tests=2)  # broken after that commit: rework
    assert work.iterations() == 2


def test_a_red_run_after_a_validation_a_person_marked_is_rework(work, meter):
    work.commit(0)
    work.run(1, 0, tests=2)  # TESTS_COMPLETION and the meter's own VALIDATION
    work.run(2, 1, tests=2)  # after the meter's VALIDATION only: not rework
    assert work.iterations() == 1
    assert meter("mark", "validated", "P1-001", "--at", at(3).isoformat(), "--force").code == 0
    work.run(4, 1, tests=3)  # adds a test: not rework, validated or not
    work.run(5, 1, tests=2)  # rework
    work.run(6, 0, tests=2)  # a green run never moves a person's VALIDATION
    assert task_row_in(work.db)["validation_at"] == to_stored(at(3))
    work.run(7, 1, tests=2)
    assert work.iterations() == 3


def test_marking_a_milestone_the_meter_set_confirms_it_and_the_meter_moves_it_no_more(work, meter, db_path):
    work.commit(0)  # INITIAL_COMPLETION, from the commit
    work.run(1, 0, tests=2)  # TESTS_COMPLETION and the meter's own VALIDATION
    before = task_row_in(work.db)
    confirmed = meter("mark", "tests", "P1-001")
    assert confirmed.code == 0, confirmed.err
    assert "(confirmed: pytest run at" in confirmed.out
    confirmed = meter("mark", "validated", "P1-001")
    assert confirmed.code == 0 and "(confirmed: pytest run at" in confirmed.out
    after = task_row_in(work.db)
    assert (after["tests_completion_at"], after["validation_at"]) == (before["tests_completion_at"], before["validation_at"])
    work.run(2, 0, tests=2)  # a green run moves a VALIDATION no person has confirmed; this one stays
    assert task_row_in(work.db)["validation_at"] == before["validation_at"]
    work.run(3, 1, tests=2)  # after a person's VALIDATION: rework
    assert work.iterations() == 2
    # --at replaces the meter's time without --force, checked for order like any mark.
    refused = meter("mark", "initial", "P1-001", "--at", at(2).isoformat())
    assert refused.code == 1 and "already has tests" in refused.err
    assert meter("mark", "initial", "P1-001", "--at", at(0).isoformat()).code == 0
    again = meter("mark", "initial", "P1-001", "--at", at(0).isoformat())  # now a person's: --force to replace
    assert again.code == 1 and "already has initial" in again.err


def task_row_in(db) -> dict:
    return dict(db.execute("SELECT * FROM tasks WHERE id = 'P1-001'").fetchone())


def test_a_fail_under_of_zero_is_no_target(work, meter):
    work.commit(0)
    work.run(1, 0, tests=2, fail_under=0.0)  # pytest-cov's report when nobody set fail_under
    assert task_row_in(work.db)["coverage_target"] is None
    assert work.db.execute("SELECT coverage_target FROM test_runs").fetchone()[0] is None
    work.run(2, 0, tests=2, fail_under=0.0, configured=85.0)  # then automation.coverage_target
    assert task_row_in(work.db)["coverage_target"] == 85
    work.run(3, 0, tests=2, fail_under=70.0, configured=85.0)  # coverage's own fail_under comes first
    assert task_row_in(work.db)["coverage_target"] == 70
    assert meter("task", "P1-001", "--coverage-target", "90").code == 0
    work.run(4, 0, tests=2, fail_under=0.0, configured=85.0)  # a person's target is never replaced
    assert task_row_in(work.db)["coverage_target"] == 90
    targets = [row[0] for row in work.db.execute("SELECT coverage_target FROM test_runs ORDER BY id")]
    assert targets == [None, None, 70, None]


@pytest.mark.parametrize("value", ["0", "-5", "100.5"])
def test_a_configured_coverage_target_must_be_a_real_percentage(meter, tmp_path, value):
    config = tmp_path / "config.toml"
    config.write_text(f"[automation]\ncoverage_target = {value}\n")
    result = meter("config", "check", str(config))
    assert result.code == 1 and result.err.count("\n") == 1 and "automation.coverage_target" in result.err
    assert "Traceback" not in result.err


def test_a_configured_coverage_target_is_accepted(meter, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[automation]\ncoverage_target = 85\n")
    assert meter("config", "check", str(config)).code == 0
    assert load_settings(config).automation.coverage_target == 85


def test_m021_drops_stored_red_runs_for_the_rule_and_clears_the_meter_s_zero_targets(db_path, monkeypatch):
    before = [m for m in migrations.MIGRATIONS if m.__name__ < "m021"]
    monkeypatch.setattr(migrations, "MIGRATIONS", before)
    old = connection.connect(db_path)
    stamp = [to_stored(at(minute)) for minute in range(10)]
    with old:
        old.execute("INSERT INTO phases (id, created_at) VALUES ('P1', ?)", (stamp[0],))
        # Coverage targets: P1-001's 0 the meter set; P1-002's 0 the meter set, then a person's 80;
        # P1-003's 0 a person set (no automatic mark).
        for task_id, target in (("P1-001", 0), ("P1-002", 80), ("P1-003", 0)):
            old.execute(
                "INSERT INTO tasks (id, phase_id, created_at, begin_at, initial_completion_at, tests_completion_at,"
                " validation_at, coverage_target) VALUES (?, 'P1', ?, ?, ?, ?, ?, ?)",
                (task_id, stamp[0], stamp[0], stamp[1], stamp[2], stamp[2], target),
            )
        # P1-001: green, then a red TDD run adding a test, stored as an iteration by the old rule, and a person's retry.
        old.executemany(
            "INSERT INTO test_runs (at, repo, task_id, exit_status, tests, failed, full_run, coverage, coverage_target)"
            " VALUES (?, '/r', 'P1-001', ?, ?, ?, 1, 80, 0)",
            [(stamp[2], 0, 2, 0), (stamp[3], 1, 3, 1)],
        )
        old.execute(
            "INSERT INTO task_events (task_id, kind, at, note) VALUES ('P1-001', 'iteration', ?, ?)",
            (stamp[3], f"automatic: pytest run at {stamp[3]}: 3 tests, 1 failed"),
        )
        old.execute(
            "INSERT INTO task_events (task_id, kind, at, note) VALUES ('P1-001', 'iteration', ?, 'wrong API')", (stamp[4],)
        )
        for task_id in ("P1-001", "P1-002"):
            old.execute(
                "INSERT INTO automatic_marks (at, task_id, milestone, value, source)"
                " VALUES (?, ?, 'coverage_target', 0.0, 'pytest run')",
                (stamp[2], task_id),
            )
    assert tasks.iterations(old, "P1-001") == 3  # not migrated yet: the old rule's stored red run counts
    old.close()
    monkeypatch.undo()

    db = connection.connect(db_path)
    try:
        notes = [row[0] for row in db.execute("SELECT note FROM task_events WHERE kind = 'iteration'")]
        targets = dict(db.execute("SELECT id, coverage_target FROM tasks").fetchall())
        run_targets = [row[0] for row in db.execute("SELECT coverage_target FROM test_runs")]
        assert tasks.iterations(db, "P1-001") == 2  # the first attempt and the person's retry
    finally:
        db.close()
    assert notes == ["wrong API"]
    assert targets == {"P1-001": None, "P1-002": 80, "P1-003": 0}
    assert run_targets == [None, None]


# ------------------------------------------------------------------ DOC_COMPLETENESS

DOCUMENTED = '''"""Sums."""


def add(a, b):
    """The sum."""
    return _checked(a) + b


def _checked(value):
    return value


class _Cache:
    def get(self):
        return None


class Total:
    """A running total."""

    def __init__(self):
        self.value = 0

    def __repr__(self):
        return f"Total({self.value})"
'''
UNDOCUMENTED = "def test_one():\n    assert True\n"


def test_doc_completeness_leaves_out_test_files_and_private_helpers(repo, db_path):
    """Through the real post-commit hook: only lib.py counts, and all of its
    public definitions have docstrings. pytest itself collects check_*.py here."""
    (repo / "pyproject.toml").write_text('[tool.pytest.ini_options]\npython_files = ["check_*.py"]\n')
    (repo / "lib.py").write_text(DOCUMENTED)
    for name in ("check_lib.py", "test_lib.py", "lib_test.py", "conftest.py", "tests/conftest.py"):
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_text(UNDOCUMENTED)
    assert meter("hooks", "install", "--repo", str(repo)).returncode == 0
    git(repo, "checkout", "-q", "-b", BRANCH)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "lib")
    task = eventually(lambda: (t := task_row(db_path, "P1-001")) and t["doc_completeness"] is not None and t)
    assert task["doc_completeness"] == 100.0  # the module, add, Total: 3 of 3

    # Every file real pytest collects here is a test file by the meter's rule.
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    files = {line.split("::")[0] for line in collected.splitlines() if "::" in line}
    assert files == {"check_lib.py"}
    patterns = automation_git.python_test_patterns(repo)
    assert all(automation_git.is_test_file(repo / name, patterns) for name in files)


@pytest.mark.parametrize(
    ("files", "tests", "not_tests"),
    [
        ({}, ["test_a.py", "a_test.py", "conftest.py", "sub/conftest.py"], ["a.py", "testing.py", "check_a.py"]),
        ({"pytest.ini": "[pytest]\npython_files = check_*.py\n    *_spec.py\n"}, ["check_a.py", "a_spec.py"], ["a.py"]),
        ({"pyproject.toml": '[tool.pytest]\npython_files = ["check_*.py"]\n'}, ["check_a.py", "test_a.py"], ["a.py"]),
        ({"tox.ini": "[pytest]\npython_files = check_*.py\n"}, ["check_a.py"], ["a.py"]),
        ({"setup.cfg": "[tool:pytest]\npython_files = check_*.py\n"}, ["check_a.py"], ["a.py"]),
        ({"pytest.toml": '[pytest]\npython_files = ["suite/*.py"]\n'}, ["suite/a.py"], ["a.py", "other/a.py"]),
        # pytest reads the first file that configures it: an empty pytest.ini wins over pyproject.toml.
        (
            {"pytest.ini": "[pytest]\n", "pyproject.toml": '[tool.pytest.ini_options]\npython_files = "check_*.py"\n'},
            [],
            ["check_a.py"],
        ),
        # A setup.cfg without a pytest section configures nothing: tox.ini's is read.
        ({"setup.cfg": "[metadata]\nname = x\n", "tox.ini": "[pytest]\npython_files = check_*.py\n"}, ["check_a.py"], []),
        ({"pyproject.toml": "[tool.pytest.ini_options\n"}, ["test_a.py"], ["check_a.py"]),  # unreadable: the defaults
        ({"tox.ini": "[pytest]\npython_files = 'check_*.py\n"}, ["test_a.py"], ["check_a.py"]),  # an unclosed quote
        ({"pytest.toml": "[pytest]\npython_files = 3\n"}, ["test_a.py"], ["a.py"]),  # not patterns
    ],
)
def test_the_repository_s_python_files_setting_is_read_as_pytest_reads_it(tmp_path, files, tests, not_tests):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    patterns = automation_git.python_test_patterns(tmp_path)
    assert [name for name in tests if not automation_git.is_test_file(tmp_path / name, patterns)] == []
    assert [name for name in not_tests if automation_git.is_test_file(tmp_path / name, patterns)] == []
