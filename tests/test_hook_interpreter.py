"""Issue 24, "installed like a tool": git hooks, the pytest plugin and Claude Code's
hooks run `meter` when the `meter` on the PATH is the installation that wrote them,
else that installation's interpreter by its absolute path. When that installation
is deleted (or can no longer import taskmeter), `meter hooks status`, `meter claude
status` and `meter doctor` say "broken" and the command that repairs it, where they
used to say "installed"."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from taskmeter.store import connection
from tests.gitrepo import eventually, git, make_venv, meter, meter_with
from tests.proxy_harness import VENV_BIN

pytestmark = pytest.mark.e2e  # git, hooks and interpreters in subprocesses

GREEN = "def test_one():\n    assert 1 + 1 == 2\n"


def _commit(repo: Path, name: str) -> None:
    (repo / name).write_text("x = 1\n")
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", f"add {name}")


def _recorded(db_path: Path, sql: str) -> list:
    if not db_path.exists():
        return []
    db = connection.connect(db_path)
    try:
        return [tuple(row) for row in db.execute(sql)]
    finally:
        db.close()


def test_the_hooks_run_meter_on_the_path_when_it_is_this_installation(repo, db_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{VENV_BIN}:{os.environ['PATH']}")
    make_venv(repo / ".venv", with_taskmeter=False)  # the project's own virtualenv, for the pytest plugin
    installed = meter("hooks", "install", "--repo", str(repo))
    assert installed.returncode == 0 and "\n  they run `meter` (this installation's, on the PATH)\n" in installed.stdout
    hook = (repo / ".git" / "hooks" / "post-commit").read_text()
    assert "\n( meter hooks git-event --repo " in hook and '"command": ["meter"]' in hook
    assert sys.executable not in hook  # nothing names the clone's interpreter
    git(repo, "checkout", "-q", "-b", "feature/P1-070-tool")
    _commit(repo, "a.py")
    assert eventually(lambda: _recorded(db_path, "SELECT task_id FROM commits")) == [("P1-070",)]
    (repo / "test_green.py").write_text(GREEN)
    ran = subprocess.run([str(repo / ".venv" / "bin" / "pytest"), "-q"], cwd=repo, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout
    assert eventually(lambda: _recorded(db_path, "SELECT task_id, exit_status FROM test_runs")) == [("P1-070", 0)]

    assert meter("claude", "install", "--project", str(repo)).returncode == 0
    settings = json.loads((repo / ".claude" / "settings.local.json").read_text())
    commands = [entry["hooks"][0]["command"] for entries in settings["hooks"].values() for entry in entries]
    assert commands and all(command.startswith("meter claude hook ") for command in commands)
    assert settings["statusLine"]["command"].startswith("meter statusline")
    status = meter("claude", "status", "--project", str(repo))
    assert status.returncode == 0 and status.stdout.startswith("installed in ")


def test_the_hooks_name_the_interpreter_when_the_meter_on_the_path_is_another_installation(repo, tmp_path, monkeypatch):
    other = tmp_path / "other-bin"
    other.mkdir()
    (other / "meter").write_text("#!/usr/bin/python3\nimport sys\nsys.exit(1)\n")  # someone else's meter
    (other / "meter").chmod(0o755)
    monkeypatch.setenv("PATH", f"{other}:{os.environ['PATH']}")
    installed = meter("hooks", "install", "--repo", str(repo))
    assert installed.returncode == 0
    assert f"  they run `{sys.executable} -m taskmeter` (no `meter` of this installation is on the PATH)" in installed.stdout
    hook = (repo / ".git" / "hooks" / "post-commit").read_text()
    assert f"( {sys.executable} -m taskmeter hooks git-event --repo " in hook
    assert meter("claude", "install", "--project", str(repo)).returncode == 0
    settings = json.loads((repo / ".claude" / "settings.local.json").read_text())
    assert settings["statusLine"]["command"].startswith(f"{sys.executable} -m taskmeter statusline")


def test_a_deleted_installation_is_reported_broken_with_the_repair(repo, db_path, tmp_path, monkeypatch):
    copy = tmp_path / "meter-copy"
    python = make_venv(copy, with_taskmeter=True)
    assert meter_with(python, "hooks", "install", "--repo", str(repo), "--db", str(db_path)).returncode == 0
    assert meter_with(python, "claude", "install", "--project", str(repo)).returncode == 0
    assert str(python) in (repo / ".git" / "hooks" / "post-commit").read_text()
    healthy = meter("hooks", "status", "--repo", str(repo))
    assert healthy.returncode == 0 and healthy.stdout.startswith("installed in ")
    assert meter("claude", "status", "--project", str(repo)).returncode == 0
    monkeypatch.chdir(repo)
    doctor = meter("doctor")
    assert f"ok    hooks     {repo}'s git hooks run `{python} -m taskmeter`" in doctor.stdout
    assert f"ok    claude    {repo}'s Claude Code hooks run `{python} -m taskmeter`" in doctor.stdout

    shutil.rmtree(copy)
    hooks = meter("hooks", "status", "--repo", str(repo))
    assert hooks.returncode == 1
    assert hooks.stdout.splitlines()[0] == (
        f"broken in {repo / '.git' / 'hooks'}: its interpreter {python} no longer exists:"
        f" reinstall with `meter hooks install --repo {repo} --db {db_path}`"
    )
    claude = meter("claude", "status", "--project", str(repo))
    assert claude.returncode == 1
    assert claude.stdout.strip() == (
        f"broken in {repo / '.claude' / 'settings.local.json'}: its interpreter {python} no longer exists:"
        f" reinstall with `meter claude install --project {repo}`"
    )
    doctor = meter("doctor")
    assert doctor.returncode == 1
    assert (
        f"FAIL  hooks     broken: its interpreter {python} no longer exists: reinstall with `meter hooks install" in doctor.stdout
    )
    assert (
        f"FAIL  claude    broken: its interpreter {python} no longer exists: reinstall with `meter claude install"
        in doctor.stdout
    )

    # The repair it names, run with a working meter, mends both.
    assert meter("hooks", "install", "--repo", str(repo), "--db", str(db_path)).returncode == 0
    assert meter("claude", "install", "--project", str(repo)).returncode == 0
    assert meter("hooks", "status", "--repo", str(repo)).returncode == 0
    assert meter("claude", "status", "--project", str(repo)).returncode == 0
    git(repo, "checkout", "-q", "-b", "feature/P1-071-mended")
    _commit(repo, "b.py")
    assert eventually(lambda: _recorded(db_path, "SELECT task_id FROM commits")) == [("P1-071",)]


def test_an_interpreter_that_can_no_longer_import_taskmeter_is_broken(repo, tmp_path):
    copy = tmp_path / "meter-copy"
    python = make_venv(copy, with_taskmeter=True)
    assert meter_with(python, "hooks", "install", "--repo", str(repo)).returncode == 0
    assert meter("hooks", "status", "--repo", str(repo)).returncode == 0
    (borrowed,) = copy.glob("lib/python*/site-packages/borrowed.pth")
    borrowed.write_text("")  # taskmeter uninstalled from it
    status = meter("hooks", "status", "--repo", str(repo))
    assert status.returncode == 1 and f"its interpreter {python} cannot import taskmeter: reinstall with" in status.stdout


def test_no_hooks_is_not_broken(repo):
    status = meter("hooks", "status", "--repo", str(repo))
    assert status.returncode == 0 and status.stdout.startswith("not installed in ")
    claude = meter("claude", "status", "--project", str(repo))
    assert claude.returncode == 0 and claude.stdout.startswith("not installed in ")


def test_claude_settings_of_earlier_versions_name_the_meter_script(repo, tmp_path):
    """Earlier versions wrote the clone's `.venv/bin/meter` by its path: still checked, by its interpreter."""
    copy = tmp_path / "old-clone"
    python = make_venv(copy, with_taskmeter=True)
    script = copy / "bin" / "meter"
    script.write_text(f"#!{python}\nimport sys\nfrom taskmeter.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    settings = repo / ".claude" / "settings.local.json"
    settings.parent.mkdir()
    hook = {"hooks": [{"type": "command", "command": f"{script} claude hook session-start  # taskmeter"}]}
    settings.write_text(json.dumps({"hooks": {"SessionStart": [hook]}}))
    assert meter("claude", "status", "--project", str(repo)).returncode == 0
    shutil.rmtree(copy)
    status = meter("claude", "status", "--project", str(repo))
    assert status.returncode == 1 and f"broken in {settings}: {script} no longer exists: reinstall with" in status.stdout
