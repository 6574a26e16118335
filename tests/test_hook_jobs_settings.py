"""The hooks' background jobs (`meter hooks git-event` after each commit and checkout, `meter
hooks test-run` after each pytest run) read the [automation] settings alone, without pydantic
or click: checked by the rules `meter config check` applies to them, and never stopped by a
setting they do not read. A job that cannot run leaves one line in the hooks' log."""

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskmeter.store import connection
from tests.gitrepo import background_work_done, git, meter

pytestmark = pytest.mark.e2e  # real git hooks and meter processes

BRANCH = "feature/P1-010-login"
# What the jobs have no use for: the validating config models, the command line's parser, the terminal.
UNWANTED = ("pydantic", "click", "rich", "mitmproxy", "tiktoken", "genai_prices")


def _hooks_log() -> Path:
    return Path(os.environ["XDG_STATE_HOME"]) / "taskmeter" / "hooks.log"


def _use_config(monkeypatch, tmp_path, text: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    monkeypatch.setenv("METER_CONFIG", str(config))


def _commit(repo: Path, name: str) -> str:
    (repo / name).write_text("VALUE = 1\n")
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", name)
    return git(repo, "rev-parse", "HEAD").stdout.strip()


def _commit_tasks(db_path: Path) -> list[tuple[str, str | None]]:
    db = connection.connect(db_path)
    try:
        return [tuple(row) for row in db.execute("SELECT sha, task_id FROM commits ORDER BY committed_at")]
    finally:
        db.close()


def _run_job(arguments: list[str], stdin: str = "") -> list[str]:
    """Run one job as the hooks do (`python -m taskmeter hooks ...`), then name the unwanted modules it loaded."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['meter', *sys.argv[1:]]\n"
        "runpy.run_module('taskmeter', run_name='__main__')\n"
        f"unwanted = {UNWANTED!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in unwanted), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, "hooks", *arguments], input=stdin, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stderr.strip().splitlines()[-1])


def test_the_jobs_load_neither_pydantic_nor_click_and_still_record(repo, db_path):
    git(repo, "checkout", "-q", "-b", BRANCH)
    sha = _commit(repo, "login.py")  # no hooks installed: the job below records it
    assert _run_job(["git-event", "post-commit", "--repo", str(repo), "--db", str(db_path), "--head", sha]) == []
    assert _commit_tasks(db_path) == [(sha, "P1-010")]

    run = {"repo": str(repo), "branch": BRANCH, "at": time.time(), "exit_status": 0, "tests": 3, "failed": 0}
    run |= {"selected": False, "coverage": 91.5, "coverage_target": None}
    assert _run_job(["test-run", "--db", str(db_path)], stdin=json.dumps(run)) == []
    db = connection.connect(db_path)
    try:
        stored = db.execute("SELECT task_id, tests, coverage FROM test_runs").fetchall()
    finally:
        db.close()
    assert [tuple(row) for row in stored] == [("P1-010", 3, 91.5)]
    assert not _hooks_log().exists() or _hooks_log().read_text() == ""


def test_a_setting_the_jobs_do_not_read_never_stops_them(repo, db_path, monkeypatch, tmp_path):
    """A mistake in another section is `meter config check`'s to report (and the proxy's, at its
    start): the commits are still counted against their task."""
    _use_config(monkeypatch, tmp_path, '[proxy]\nport = "not a number"\n[automation]\nmain_branch = "main"\n')
    assert meter("config", "check").returncode == 1  # the file is wrong...
    assert meter("hooks", "install", "--repo", str(repo)).returncode == 0
    git(repo, "checkout", "-q", "-b", BRANCH)
    sha = _commit(repo, "login.py")
    background_work_done(repo)
    assert _commit_tasks(db_path) == [(sha, "P1-010")]  # ...and the hooks recorded all the same


@pytest.mark.parametrize(
    ("setting", "name", "reason"),
    [
        ('branch_pattern = "P1-(("', "automation.branch_pattern: ", "not a regular expression"),
        ("coverage_target = 120", "automation.coverage_target: ", "a percentage of at most 100"),
    ],
)
def test_an_automation_setting_that_breaks_its_rule_is_one_line_in_the_log_and_nothing_recorded(
    repo, db_path, monkeypatch, tmp_path, setting, name, reason
):
    _use_config(monkeypatch, tmp_path, f"[automation]\n{setting}\n")
    checked = meter("config", "check").stderr
    assert name in checked and reason in checked  # the rule `meter config check` applies
    assert meter("hooks", "install", "--repo", str(repo)).returncode == 0
    git(repo, "checkout", "-q", "-b", BRANCH)
    _commit(repo, "login.py")
    background_work_done(repo)
    lines = _hooks_log().read_text().splitlines()
    assert lines and all(f"{name}{reason}" in line for line in lines), lines  # the checkout's and the commit's job each said why
    assert _commit_tasks(db_path) == []
