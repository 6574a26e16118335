"""The pytest plugin with real pytest and pytest-cov runs in a real repository:
green, a selected run, red, green, then a merge, with an AI call through a real
proxy on the way. The record fills itself: 17 of the 24 Level 1 fields."""

import os
import re
import subprocess

import coverage
import openai

from taskmeter.automation import venvs
from taskmeter.store import db as store_db
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.gitrepo import eventually, git, make_venv, meter, task_row
from tests.proxy_harness import RunningProxy, write_config

CALC = '"""Arithmetic."""\n\n\ndef add(a, b):\n    """The sum."""\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n'

GREEN = (
    "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\ndef test_add_zero():\n    assert add(0, 0) == 0\n"
)


def project_venv(repo):
    """The project's own virtualenv, without taskmeter, where `meter hooks install` finds it."""
    with open(repo / ".git" / "info" / "exclude", "a") as exclude:
        exclude.write(".venv/\n")
    return make_venv(repo / ".venv", with_taskmeter=False).parent.parent


def pytest_run(folder, *args: str) -> subprocess.CompletedProcess:
    python = folder / ".venv" / "bin" / "python"
    command = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--cov=calc", "--cov-report=term", *args]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)


def _runs(db_path) -> list[dict]:
    db = store_db.connect(db_path)
    try:
        return [dict(row) for row in db.execute("SELECT * FROM test_runs ORDER BY id")]
    finally:
        db.close()


HUMAN_JUDGEMENTS = [
    "PERFORMANCE_TARGET",
    "PERFORMANCE_ACTUAL",
    "PROJECTED_OUTCOME",
    "ACTUAL_OUTCOME",
    "SUCCESS_CRITERIA",
    "BLOCKERS_ENCOUNTERED",
    "LESSONS_LEARNED",
]


def ai_call_through_a_real_proxy(db_path, tmp_path) -> None:
    """One OpenAI SDK call through `meter proxy`, while the branch's task is current."""
    body = next(f for f in ALL if f.name == "openai/chat_nonstream_cached_tokens").body
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=body)
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
        proxy = RunningProxy(config, db_path)
        try:
            client = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-test", max_retries=0)
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "write calc"}])
            proxy.rows(wait_for=1)
        finally:
            proxy.stop()


def test_commits_and_test_runs_fill_the_level_1_record(repo, db_path, tmp_path):
    project_venv(repo)
    assert meter("hooks", "install", "--repo", str(repo)).returncode == 0
    git(repo, "checkout", "-q", "-b", "feature/P1-010-calc")
    eventually(lambda: task_row(db_path, "P1-010"))
    assert meter("task", "P1-010", "--estimate", "2h").returncode == 0
    (repo / "calc.py").write_text(CALC)
    (repo / "test_calc.py").write_text(GREEN)
    (repo / "pyproject.toml").write_text("[tool.coverage.report]\nfail_under = 50\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "calc")
    eventually(lambda: (t := task_row(db_path, "P1-010")) and t["initial_completion_at"])
    ai_call_through_a_real_proxy(db_path, tmp_path)

    green = pytest_run(repo)
    assert green.returncode == 0, green.stdout + green.stderr
    printed = int(re.search(r"^TOTAL\s+\d+\s+\d+\s+(\d+)%", green.stdout, re.MULTILINE).group(1))
    task = eventually(lambda: (t := task_row(db_path, "P1-010")) and t["tests_completion_at"] and t)
    data = coverage.Coverage(data_file=str(repo / ".coverage"))
    data.load()
    measured = data.report(file=open(os.devnull, "w"))  # noqa: SIM115
    assert task["coverage_actual"] == round(measured, 2) and round(measured) == printed == 75  # sub() is not tested
    assert task["coverage_target"] == 50
    first_tests = task["tests_completion_at"]

    assert pytest_run(repo, "-k", "zero").returncode == 0  # a selection: recorded, not a full run
    eventually(lambda: len(_runs(db_path)) == 2)
    assert _runs(db_path)[-1]["full_run"] == 0

    (repo / "test_calc.py").write_text(GREEN.replace("== 5", "== 6"))
    assert pytest_run(repo).returncode == 1
    eventually(lambda: task_row(db_path, "P1-010") and len(_runs(db_path)) == 3)
    (repo / "test_calc.py").write_text(GREEN)
    assert pytest_run(repo).returncode == 0
    eventually(lambda: len(_runs(db_path)) == 4)
    task = task_row(db_path, "P1-010")
    assert task["tests_completion_at"] == first_tests and task["validation_at"] > first_tests
    assert [(r["exit_status"], r["tests"], r["failed"], r["full_run"]) for r in _runs(db_path)] == [
        (0, 2, 0, 1),
        (0, 1, 0, 0),  # -k: one test selected, not a full run
        (1, 2, 1, 1),
        (0, 2, 0, 1),
    ]

    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "tests")
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "-m", "merge", "feature/P1-010-calc")
    eventually(lambda: task_row(db_path, "P1-010")["final_approval_at"])
    report = __import__("json").loads(meter("task", "P1-010", "--json").stdout)
    assert report["iterations_count"] == 2  # the red full run after TESTS_COMPLETION
    filled = {name for name in report if report[name] is not None}
    for name in (
        "begin_timestamp",
        "initial_completion_timestamp",
        "tests_completion_timestamp",
        "validation_timestamp",
        "final_approval_timestamp",
        "estimated_duration",
        "actual_duration",
        "variance",
        "efficiency_ratio",
        "test_coverage_target",
        "test_coverage_actual",
        "doc_completeness",
    ):
        assert name in filled, name
    # Docstrings of the files the task's commits touched: calc.py 2 of 3, test_calc.py 0 of 3.
    assert report["doc_completeness"] == 33.3
    # Every Level 1 field but the seven human judgements: 17 of 24.
    assert sorted(report["tracking_completeness"]["missing"]) == sorted(HUMAN_JUDGEMENTS)


def test_outside_an_enrolled_repository_the_plugin_does_nothing(repo, db_path):
    venvs.install(project_venv(repo))  # installed for another repository, say
    (repo / "calc.py").write_text(CALC)
    (repo / "test_calc.py").write_text(GREEN)
    result = pytest_run(repo)
    assert result.returncode == 0 and "taskmeter" not in result.stdout + result.stderr
    import time

    time.sleep(1.5)
    assert not db_path.exists() or _runs(db_path) == []
