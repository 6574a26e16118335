"""The pytest plugin with real pytest and pytest-cov runs in a real repository:
green, a selected run, red-green TDD, a red run before and one after a commit,
then a merge, with an AI call through a real proxy on the way, and a task with
no coverage `fail_under`. The record fills itself: 17 of the 24 Level 1 fields."""

import json
import os
import re
import subprocess
import time

import coverage
import openai
import pytest

from taskmeter.automation import venvs
from taskmeter.store import connection, tasks
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.gitrepo import background_work_done, eventually, git, make_venv, meter, task_row
from tests.proxy_harness import RunningProxy, write_config

pytestmark = pytest.mark.e2e

CALC = '"""Arithmetic."""\n\n\ndef add(a, b):\n    """The sum."""\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n'

GREEN = (
    "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\ndef test_add_zero():\n    assert add(0, 0) == 0\n"
)
# Red-green TDD: each test is written before the function it tests (imported inside, so the
# run is red, not a collection error), then the function.
TEST_MUL = "\n\ndef test_mul():\n    from calc import mul\n\n    assert mul(2, 3) == 6\n"
MUL = "\n\ndef mul(a, b):\n    return a * b\n"
TEST_DIV = "\n\ndef test_div(two):\n    from calc import div\n\n    assert div(6, two) == 3\n"
DIV = (
    '\n\ndef div(a, b):\n    """The quotient."""\n    return a / _nonzero(b)\n\n\n'
    'def _nonzero(b):\n    if b == 0:\n        raise ZeroDivisionError("b is 0")\n    return b\n'
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
    db = connection.connect(db_path)
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


def _write(repo, name: str, text: str) -> None:
    (repo / name).write_text(text)


def _full_run(repo, db_path, expected_status: int) -> subprocess.CompletedProcess:
    """A full run, once the plugin's background job has recorded it."""
    recorded = len(_runs(db_path))
    result = pytest_run(repo)
    assert result.returncode == expected_status, result.stdout + result.stderr
    eventually(lambda: len(_runs(db_path)) == recorded + 1)
    return result


def _measured(repo) -> float:
    """coverage.py's own total of the last run."""
    data = coverage.Coverage(data_file=str(repo / ".coverage"))
    data.load()
    return data.report(file=open(os.devnull, "w"))  # noqa: SIM115


def _iterations(db_path, task_id: str) -> int:
    db = connection.connect(db_path)
    try:
        return tasks.iterations(db, task_id)
    finally:
        db.close()


def test_commits_and_test_runs_fill_the_level_1_record(repo, db_path, tmp_path, monkeypatch):
    project_venv(repo)
    assert meter("hooks", "install", "--repo", str(repo)).returncode == 0
    git(repo, "checkout", "-q", "-b", "feature/P1-010-calc")
    eventually(lambda: task_row(db_path, "P1-010"))
    assert meter("task", "P1-010", "--estimate", "2h").returncode == 0
    _write(repo, "calc.py", CALC)
    _write(repo, "test_calc.py", GREEN)
    _write(repo, "conftest.py", "import pytest\n\n\n@pytest.fixture\ndef two():\n    return 2\n")
    _write(repo, "pyproject.toml", "[tool.coverage.report]\nfail_under = 50\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "calc")
    eventually(lambda: (t := task_row(db_path, "P1-010")) and t["initial_completion_at"])
    ai_call_through_a_real_proxy(db_path, tmp_path)

    green = pytest_run(repo)
    assert green.returncode == 0, green.stdout + green.stderr
    printed = int(re.search(r"^TOTAL\s+\d+\s+\d+\s+(\d+)%", green.stdout, re.MULTILINE).group(1))
    task = eventually(lambda: (t := task_row(db_path, "P1-010")) and t["tests_completion_at"] and t)
    measured = _measured(repo)
    assert task["coverage_actual"] == round(measured, 2) and round(measured) == printed == 75  # sub() is not tested
    assert task["coverage_target"] == 50
    first_tests = task["tests_completion_at"]

    assert pytest_run(repo, "-k", "zero").returncode == 0  # a selection: recorded, not a full run
    eventually(lambda: len(_runs(db_path)) == 2)
    assert _runs(db_path)[-1]["full_run"] == 0

    # Red-green TDD: each red run adds a test (more collected than the last green run): no rework.
    _write(repo, "test_calc.py", GREEN + TEST_MUL)
    _full_run(repo, db_path, 1)
    _write(repo, "calc.py", CALC + MUL)
    _full_run(repo, db_path, 0)
    _write(repo, "test_calc.py", GREEN + TEST_MUL + TEST_DIV)
    _full_run(repo, db_path, 1)
    _write(repo, "calc.py", CALC + MUL + DIV)
    _full_run(repo, db_path, 0)
    # A red run that adds no test, with no commit since the first green run: still the first attempt.
    _write(repo, "test_calc.py", (GREEN + TEST_MUL + TEST_DIV).replace("== 5", "== 6"))
    _full_run(repo, db_path, 1)
    _write(repo, "test_calc.py", GREEN + TEST_MUL + TEST_DIV)
    _full_run(repo, db_path, 0)
    assert _iterations(db_path, "P1-010") == 1

    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "mul and div")
    eventually(lambda: _commits(db_path, "P1-010") == 2)
    # Git dates a commit to the second: a red run ending in that second may have come before it.
    committed = int(git(repo, "log", "-1", "--format=%ct").stdout)
    eventually(lambda: time.time() >= committed + 1)
    # Broken after a commit that followed the first green run: rework.
    _write(repo, "test_calc.py", (GREEN + TEST_MUL + TEST_DIV).replace("== 5", "== 6"))
    _full_run(repo, db_path, 1)
    assert _iterations(db_path, "P1-010") == 2
    _write(repo, "test_calc.py", GREEN + TEST_MUL + TEST_DIV)
    _full_run(repo, db_path, 0)
    task = task_row(db_path, "P1-010")
    assert task["tests_completion_at"] == first_tests and task["validation_at"] > first_tests
    assert [(r["exit_status"], r["tests"], r["failed"], r["full_run"], r["coverage_target"]) for r in _runs(db_path)] == [
        (0, 2, 0, 1, 50),
        (0, 1, 0, 0, 50),  # -k: one test selected, not a full run
        (1, 3, 1, 1, 50),  # TDD: test_mul, before mul()
        (0, 3, 0, 1, 50),
        (1, 4, 1, 1, 50),  # TDD: test_div, before div()
        (0, 4, 0, 1, 50),
        (1, 4, 1, 1, 50),  # broken before any commit since the first green run
        (0, 4, 0, 1, 50),
        (1, 4, 1, 1, 50),  # broken after the commit: the one iteration
        (0, 4, 0, 1, 50),
    ]

    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "-m", "merge", "feature/P1-010-calc")
    eventually(lambda: task_row(db_path, "P1-010")["final_approval_at"])
    report = json.loads(meter("task", "P1-010", "--json").stdout)
    assert report["iterations_count"] == 2  # the first attempt and the red run after the commit
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
    # Docstrings of the files the task's commits touched: calc.py 3 of 5 (the module, add, div;
    # not sub, mul; _nonzero is private); test_calc.py and conftest.py are test files.
    assert report["doc_completeness"] == 60.0
    # Every Level 1 field but the seven human judgements: 17 of 24.
    assert sorted(report["tracking_completeness"]["missing"]) == sorted(HUMAN_JUDGEMENTS)

    # No fail_under: coverage's default 0 is no target; then automation.coverage_target is.
    git(repo, "checkout", "-q", "-b", "feature/P1-011-report")
    eventually(lambda: task_row(db_path, "P1-011"))
    _write(repo, "pyproject.toml", "[tool.coverage.report]\nshow_missing = true\n")
    git(repo, "commit", "-q", "-am", "no coverage target")
    eventually(lambda: (t := task_row(db_path, "P1-011")) and t["initial_completion_at"])
    _full_run(repo, db_path, 0)
    task = eventually(lambda: (t := task_row(db_path, "P1-011")) and t["tests_completion_at"] and t)
    assert task["coverage_actual"] == round(_measured(repo), 2) and task["coverage_target"] is None
    assert _runs(db_path)[-1]["coverage_target"] is None
    config = tmp_path / "meter-config.toml"
    config.write_text("[automation]\ncoverage_target = 85\n")
    monkeypatch.setenv("METER_CONFIG", str(config))
    _full_run(repo, db_path, 0)
    assert eventually(lambda: task_row(db_path, "P1-011")["coverage_target"]) == 85
    assert json.loads(meter("task", "P1-011", "--json").stdout)["test_coverage_target"] == 85


def _commits(db_path, task_id: str) -> int:
    db = connection.connect(db_path)
    try:
        return db.execute("SELECT count(*) FROM commits WHERE task_id = ?", (task_id,)).fetchone()[0]
    finally:
        db.close()


def test_outside_an_enrolled_repository_the_plugin_does_nothing(repo, db_path):
    venvs.install(project_venv(repo))  # installed for another repository, say
    (repo / "calc.py").write_text(CALC)
    (repo / "test_calc.py").write_text(GREEN)
    result = pytest_run(repo)
    assert result.returncode == 0 and "taskmeter" not in result.stdout + result.stderr
    background_work_done(repo)  # anything the run started has ended
    assert not db_path.exists() or _runs(db_path) == []
