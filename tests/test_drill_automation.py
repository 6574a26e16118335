"""Hostile drills on the automation (issue 20): the developer's pytest, git and
status line work as they would without the meter, whatever way they are run,
and every test run and commit is recorded exactly once, against the right task.

The user's project has its own virtualenv (pytest, pytest-cov, xdist, no
taskmeter); the meter runs from another one."""

import os
import shlex
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskmeter.statusline import CHAIN_TIMED_OUT, ERROR_WIDTH
from taskmeter.store import connection
from tests.gitrepo import eventually, git, make_venv, meter, meter_with, task_row
from tests.proxy_harness import VENV_BIN

pytestmark = pytest.mark.e2e

CALC = '"""Arithmetic."""\n\n\ndef add(a, b):\n    """The sum."""\n    return a + b\n'
GREEN = (
    "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\ndef test_add_zero():\n    assert add(0, 0) == 0\n"
)
RED = GREEN.replace("== 5", "== 6")
PYPROJECT = '[tool.pytest.ini_options]\npythonpath = ["src"]\ntestpaths = ["tests"]\n'
UNIT = "def test_unit():\n    assert True\n"
# Hard to quote: a shell or a hook that does not quote a path breaks on each of these.
HOSTILE_NAME = 'it\'s "quoted" $HOME `id` é'


@pytest.fixture
def project(repo) -> Path:
    """The user's project virtualenv at the repository's top, as `python -m venv .venv` makes it."""
    make_venv(repo / ".venv", with_taskmeter=False)
    with open(repo / ".git" / "info" / "exclude", "a") as exclude:
        exclude.write(".venv/\n")
    assert subprocess.run(
        [str(repo / ".venv" / "bin" / "python"), "-c", "import taskmeter"], cwd=repo, capture_output=True
    ).returncode
    return repo / ".venv"


def commit(repo: Path, name: str, text: str, message: str | None = None) -> str:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message or f"write {name}")
    return git(repo, "rev-parse", "HEAD").stdout.strip()


def calc_project(repo: Path, branch: str | None = None) -> None:
    """A src-layout project with three tests, committed on a new `branch`."""
    if branch:
        git(repo, "checkout", "-q", "-b", branch)
    commit(repo, "pyproject.toml", PYPROJECT)
    commit(repo, "src/calc.py", CALC)
    commit(repo, "tests/test_calc.py", GREEN)
    commit(repo, "tests/unit/test_unit.py", UNIT)


def rows(db_path, sql: str, *params) -> list[dict]:
    db = connection.connect(db_path)
    try:
        return [dict(row) for row in db.execute(sql, params)]
    finally:
        db.close()


def recorded_runs(db_path) -> list[dict]:
    return rows(db_path, "SELECT * FROM test_runs ORDER BY id") if Path(db_path).exists() else []


def meter_env() -> dict[str, str]:
    """What `eval "$(meter env)"` exports."""
    printed = meter("env").stdout
    exported = {}
    for line in printed.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        exported[name] = shlex.split(value)[0]
    return exported


# ---------------------------------------------------------------- pytest


def test_every_way_of_running_pytest_keeps_its_exit_code_and_records_one_run(repo, project, db_path, tmp_path):
    assert meter("hooks", "install", "--repo", str(repo), "--db", str(db_path)).returncode == 0
    calc_project(repo, "feature/P1-010-calc")
    shell = {**os.environ, **meter_env()}
    assert not {"PYTHONPATH", "PYTEST_PLUGINS"} & meter_env().keys()  # nothing in the shell can name a missing module
    bin_ = project / "bin"
    clean = {"PATH": f"{bin_}:/usr/local/bin:/usr/bin:/bin", "HOME": os.environ["HOME"]}  # tox-like: env -i
    ways = {
        "pytest": ([str(bin_ / "pytest")], shell),
        "python -m pytest": ([str(bin_ / "python"), "-m", "pytest"], shell),
        "PYTHONPATH=src pytest": ([str(bin_ / "pytest")], {**shell, "PYTHONPATH": "src"}),
        "env -u PYTHONPATH pytest": ([str(bin_ / "pytest")], {k: v for k, v in shell.items() if k != "PYTHONPATH"}),
        "env -i (tox, nox)": (["env", "-i", *(f"{k}={v}" for k, v in clean.items()), "pytest"], shell),
        "-p no:cacheprovider": ([str(bin_ / "pytest"), "-p", "no:cacheprovider"], shell),
        "xdist": ([str(bin_ / "pytest"), "-n", "2"], shell),
        # A shell that still has what an earlier `meter env` exported.
        "old meter env": (
            [str(bin_ / "pytest")],
            {**shell, "PYTEST_PLUGINS": "taskmeter_pytest", "PYTHONPATH": str(tmp_path / "gone"), "TASKMETER_PYTHON": "x"},
        ),
    }
    expected = []
    for way, (command, env) in ways.items():
        for suite, status, failed in ((GREEN, 0, 0), (RED, 1, 1)):
            (repo / "tests" / "test_calc.py").write_text(suite)
            ran = subprocess.run([*command, "-q"], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
            assert ran.returncode == status, (way, ran.stdout, ran.stderr)
            expected.append((way, status, 3, failed, 1))
            count = len(expected)
            eventually(lambda count=count: len(recorded_runs(db_path)) >= count)
    recorded = [(run["exit_status"], run["tests"], run["failed"], run["full_run"]) for run in recorded_runs(db_path)]
    # One row per run: xdist's workers record nothing, the controller the whole run.
    assert recorded == [row[1:] for row in expected]
    assert {run["task_id"] for run in recorded_runs(db_path)} == {"P1-010"}


def test_a_venv_without_the_plugin_and_a_repository_without_hooks_run_pytest_as_ever(repo, project, db_path):
    calc_project(repo, "feature/P1-011-calc")
    env = {**os.environ, **meter_env()}
    for suite, status in ((GREEN, 0), (RED, 1)):  # the plugin is not installed: nothing fails to load
        (repo / "tests" / "test_calc.py").write_text(suite)
        ran = subprocess.run([str(project / "bin" / "pytest"), "-q"], cwd=repo, env=env, capture_output=True, text=True)
        assert ran.returncode == status and "taskmeter" not in ran.stdout + ran.stderr
    assert meter("hooks", "install", "--repo", str(repo)).returncode == 0
    assert meter("hooks", "uninstall", "--repo", str(repo)).returncode == 0
    assert "not installed" in meter("hooks", "status", "--repo", str(repo)).stdout
    assert not list((project / "lib").glob("python*/site-packages/taskmeter_pytest*"))
    ran = subprocess.run([str(project / "bin" / "pytest"), "-q"], cwd=repo, env=env, capture_output=True, text=True)
    assert ran.returncode == 1


def test_a_tox_environment_is_enrolled_with_venv_and_a_folder_that_is_no_venv_changes_nothing(repo, db_path, tmp_path):
    calc_project(repo, "feature/P1-013-tox")
    tox = repo / ".tox" / "py312"
    make_venv(tox, with_taskmeter=False)
    wrong = meter("hooks", "install", "--repo", str(repo), "--venv", str(tmp_path))
    assert wrong.returncode == 1 and wrong.stderr == f"meter: error: {tmp_path} is not a virtualenv (it has no pyvenv.cfg)\n"
    assert "not installed" in meter("hooks", "status", "--repo", str(repo)).stdout

    installed = meter("hooks", "install", "--repo", str(repo), "--venv", str(tox), "--db", str(db_path))
    assert f"installed the pytest plugin in {tox}" in installed.stdout
    status = meter("hooks", "status", "--repo", str(repo), "--venv", str(tox)).stdout
    assert f"pytest plugin installed in {tox}" in status
    clean = ["env", "-i", f"PATH={tox / 'bin'}:/usr/bin:/bin", f"HOME={os.environ['HOME']}"]  # as tox runs it
    ran = subprocess.run([*clean, "python", "-m", "pytest", "-q"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout
    assert [(run["task_id"], run["full_run"]) for run in eventually(lambda: recorded_runs(db_path))] == [("P1-013", 1)]


def test_narrowed_runs_are_recorded_but_never_full_green_runs(repo, project, db_path):
    assert meter("hooks", "install", "--repo", str(repo)).returncode == 0
    calc_project(repo, "feature/P1-012-calc")
    eventually(lambda: (t := task_row(db_path, "P1-012")) and t["initial_completion_at"])
    narrowed = [
        ["--collect-only"],
        ["tests/test_calc.py"],
        ["-k", "add"],
        ["tests/test_calc.py::test_add"],
        ["tests/unit"],
        ["-n", "2", "-k", "zero"],
        ["-n", "2", "tests/test_calc.py"],
    ]
    for count, args in enumerate(narrowed, start=1):
        ran = subprocess.run([str(project / "bin" / "pytest"), "-q", *args], cwd=repo, capture_output=True, text=True)
        assert ran.returncode == 0, (args, ran.stdout)
        eventually(lambda n=count: len(recorded_runs(db_path)) == n)
    assert [run["full_run"] for run in recorded_runs(db_path)] == [0] * len(narrowed)
    task = task_row(db_path, "P1-012")
    assert task["tests_completion_at"] is None and task["validation_at"] is None

    for count, args in enumerate([["-n", "2"], ["tests"]], start=len(narrowed) + 1):  # full runs: the whole suite
        assert subprocess.run([str(project / "bin" / "pytest"), "-q", *args], cwd=repo, capture_output=True).returncode == 0
        eventually(lambda n=count: len(recorded_runs(db_path)) == n)
    full = recorded_runs(db_path)[-2:]
    assert [(run["full_run"], run["tests"]) for run in full] == [(1, 3), (1, 3)]
    task = task_row(db_path, "P1-012")
    assert task["tests_completion_at"] == full[0]["at"] and task["validation_at"] == full[1]["at"]


# ---------------------------------------------------------------- git


def test_fast_commits_and_branch_switches_record_every_commit_against_its_own_branch(repo, db_path):
    assert meter("hooks", "install", "--repo", str(repo)).returncode == 0
    git(repo, "checkout", "-q", "-b", "feature/P1-020-fast")
    fast = [commit(repo, f"fast{n}.py", f"n = {n}\n") for n in range(20)]
    switched = []
    for n in range(5):  # commit && checkout main, five times
        git(repo, "checkout", "-q", "feature/P1-020-fast")
        switched.append(commit(repo, f"switch{n}.py", f"n = {n}\n"))
        git(repo, "checkout", "-q", "main")
    git(repo, "checkout", "-q", "-b", "feature/P1-030-before")
    before = commit(repo, "before.py", "x = 1\n")
    git(repo, "checkout", "-q", "-b", "feature/P1-031-after")  # at once: the hook's job may not have run yet

    every = [*fast, *switched, before]
    recorded = eventually(lambda: len(found := rows(db_path, "SELECT sha, branch, task_id FROM commits")) >= len(every) and found)
    assert {row["sha"]: (row["branch"], row["task_id"]) for row in recorded} == {
        **{sha: ("feature/P1-020-fast", "P1-020") for sha in [*fast, *switched]},
        before: ("feature/P1-030-before", "P1-030"),
    }


def test_hostile_characters_in_the_database_and_interpreter_paths(repo, project, tmp_path):
    hostile = tmp_path / HOSTILE_NAME
    python = make_venv(hostile / "meter venv", with_taskmeter=True)
    database = hostile / f"{HOSTILE_NAME}.db"
    installed = meter_with(python, "hooks", "install", "--repo", str(repo), "--db", str(database))
    assert installed.returncode == 0, installed.stderr

    checkout = subprocess.run(["git", "-C", str(repo), "checkout", "-q", "-b", "feature/P1-040-quote"], capture_output=True)
    assert (checkout.returncode, checkout.stderr) == (0, b"")
    eventually(lambda: database.exists() and task_row(database, "P1-040"))
    calc_project(repo)
    assert (
        eventually(lambda: len(found := rows(database, "SELECT task_id FROM commits")) == 4 and found)
        == [{"task_id": "P1-040"}] * 4
    )
    ran = subprocess.run([str(project / "bin" / "pytest"), "-q"], cwd=repo, capture_output=True, text=True)
    assert ran.returncode == 0
    assert eventually(lambda: recorded_runs(database))[0]["task_id"] == "P1-040"
    main = subprocess.run(["git", "-C", str(repo), "checkout", "-q", "main"], capture_output=True)
    assert (main.returncode, main.stderr) == (0, b"")


def test_a_missing_interpreter_never_fails_git_or_pytest(repo, project, tmp_path, db_path):
    python = make_venv(tmp_path / "meter-venv-later-removed", with_taskmeter=True)
    assert meter_with(python, "hooks", "install", "--repo", str(repo)).returncode == 0
    shutil.rmtree(tmp_path / "meter-venv-later-removed")
    (repo / "calc.py").write_text(CALC)
    (repo / "test_calc.py").write_text(GREEN)
    hooked = {("checkout", "-q", "-b", "feature/P1-050-gone"): 1, ("add", "."): 0, ("commit", "-q", "-m", "c"): 1}
    for command, hooks in hooked.items():
        done = subprocess.run(["git", "-C", str(repo), *command], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0
        said = done.stderr.splitlines()  # one line per hook that ran, saying why it did nothing
        assert len(said) == hooks and all(line.startswith("meter: ") and "is missing" in line for line in said), said
    ran = subprocess.run([str(project / "bin" / "pytest"), "-q"], cwd=repo, capture_output=True, text=True)
    assert ran.returncode == 0 and "taskmeter" not in ran.stdout + ran.stderr


def test_a_hook_another_tool_put_in_place_of_ours_is_never_overwritten(repo, db_path, tmp_path):
    hooks = repo / ".git" / "hooks"
    ran = tmp_path / "ran.log"
    (hooks / "post-commit").write_text(f"#!/bin/sh\necho original >> {shlex.quote(str(ran))}\n")
    (hooks / "post-commit").chmod(0o755)
    assert meter("hooks", "install", "--repo", str(repo)).returncode == 0
    (hooks / "post-commit").write_text(f"#!/bin/sh\n# husky\necho husky >> {shlex.quote(str(ran))}\n")
    before = {path.name: path.read_bytes() for path in hooks.iterdir()}

    again = meter("hooks", "install", "--repo", str(repo))
    assert again.returncode == 1 and len(again.stderr.splitlines()) == 1 and "Traceback" not in again.stderr
    assert "post-commit and post-commit.pre-meter" in again.stderr and "nothing changed" in again.stderr
    assert {path.name: path.read_bytes() for path in hooks.iterdir()} == before
    commit(repo, "a.py", "a = 1\n")
    assert ran.read_text() == "husky\n"  # husky's hook runs; the original is kept, named in the refusal


def test_the_hooks_log_is_private_whatever_the_umask(repo, db_path):
    assert meter("hooks", "install", "--repo", str(repo)).returncode == 0
    (repo / "a.py").write_text("a = 1\n")
    git(repo, "add", "a.py")
    subprocess.run(["sh", "-c", "umask 000 && git commit -q -m a"], cwd=repo, check=True)
    log = Path(os.environ["XDG_STATE_HOME"]) / "taskmeter" / "hooks.log"
    eventually(log.exists)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and stat.S_IMODE(log.parent.stat().st_mode) == 0o700


# ---------------------------------------------------------------- status line


def statusline(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "meter"), "statusline", *args], input=stdin, capture_output=True, text=True, timeout=30)


def assert_one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert len(result.stdout.splitlines()) == 1 and result.stdout.endswith("\n")
    line = result.stdout.strip()
    assert not line.startswith("meter:") or len(line) <= len("meter: ") + ERROR_WIDTH  # short: an error is cut
    return line


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it is dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_chained_status_line_that_hangs_is_killed_with_its_children(db_path, tmp_path):
    assert meter("set-task", "P1-060").returncode == 0
    pids = tmp_path / "pids"
    hanging = f"sleep 300 & echo $$ $! > {shlex.quote(str(pids))}; wait"
    started = time.monotonic()
    line = assert_one_line(statusline("--chain", hanging))
    assert time.monotonic() - started < 5  # the chain gets CHAIN_TIMEOUT_SECONDS (1 s), not 10
    assert line.startswith("NOT METERED · P1-060") and line.endswith(f" | {CHAIN_TIMED_OUT}")
    shell, sleeper = (int(pid) for pid in pids.read_text().split())
    try:
        assert not alive(shell) and not alive(sleeper)  # the whole process group is gone
    finally:
        for pid in (shell, sleeper):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert assert_one_line(statusline("--chain", "echo theirs")).endswith(" | theirs")


def test_the_status_line_is_one_line_whatever_the_database_holds(db_path, tmp_path):
    assert meter("set-task", "P1-061", "--estimate", "1h").returncode == 0
    db = sqlite3.connect(db_path)
    db.execute("UPDATE tasks SET begin_at = 'the fifth of never' WHERE id = 'P1-061'")
    db.commit()
    db.close()
    assert assert_one_line(statusline()).startswith("meter: ValueError")
    assert assert_one_line(statusline(stdin="[" * 100_000))  # Claude's JSON nested past the recursion limit

    db = sqlite3.connect(db_path)
    db.execute("UPDATE tasks SET begin_at = NULL, estimate_seconds = 'an hour' WHERE id = 'P1-061'")
    db.execute("UPDATE task_estimates SET estimate_seconds = 'an hour' WHERE task_id = 'P1-061'")  # the first estimate too
    db.commit()
    db.close()
    assert assert_one_line(statusline()).startswith("meter: TypeError")

    holder = sqlite3.connect(db_path, isolation_level=None)  # a writer holding the lock: readers wait 1 s, then say so
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE tasks SET title = 'x'")
    try:
        assert "locked" in assert_one_line(statusline())
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database at all " * 500)
    assert assert_one_line(statusline("--db", str(corrupt))).startswith("meter: DatabaseError")
    missing = assert_one_line(statusline("--db", str(tmp_path / "missing.db")))
    assert missing.startswith("NOT METERED · no meter database") and not (tmp_path / "missing.db").exists()


def test_the_status_line_loads_none_of_the_heavy_modules(tmp_path):
    """A shell prompt runs it every time: it must not pay for the CLI, rich, pydantic,
    mitmproxy or urllib.request (http.client, email), each of which costs it milliseconds."""
    db = tmp_path / "meter.db"
    connection.connect(db).close()
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['meter', 'statusline', '--db', {str(db)!r}]\n"
        "try:\n"
        "    runpy.run_module('taskmeter', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('click', 'rich', 'pydantic', 'mitmproxy', 'urllib.request', 'taskmeter.cli.common', 'taskmeter.protocols')\n"
        "print(sorted(m for m in sys.modules if m in heavy), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], input="{}", capture_output=True, text=True, timeout=60)
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr
