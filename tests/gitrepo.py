"""A real git repository for the automation tests, and the helpers they share."""

import os
import site
import subprocess
import time
import venv
from pathlib import Path

import pytest

from taskmeter.store import connection
from tests.proxy_harness import VENV_BIN


@pytest.fixture
def repo(tmp_path, db_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the hooks' log and config live in the user's folders
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    # `meter hooks install` enrols the active virtualenv: never the one running the tests.
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    path = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(path))
    git(path, "config", "user.email", "dev@example.com")
    git(path, "config", "user.name", "Dev")
    (path / "README").write_text("hello\n")
    git(path, "add", "README")
    git(path, "commit", "-q", "-m", "start")
    return path


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=os.environ)


def meter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "meter"), *args], capture_output=True, text=True, env=os.environ, timeout=30)


def eventually(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("the hook's background work did not happen (or did not end)")


def processes_in(folder: Path) -> list[int]:
    """The processes, other than this one, working in `folder` (or under it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue  # gone, or a zombie
        if cwd == folder or folder in cwd.parents:
            found.append(int(entry.name))
    return found


def background_work_done(repo: Path, timeout: float = 30.0) -> None:
    """Every job that git's hooks (or a pytest run's plugin) started in `repo` has
    ended: what they were going to record is recorded. They run in the repository
    from their fork on (and pytest's plugin sends its job from there), so none
    escapes this, whether it has started its interpreter yet or not."""
    eventually(lambda: not processes_in(repo.resolve()), timeout)


def task_row(db_path, task_id):
    db = connection.connect(db_path)
    try:
        row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return dict(row) if row else None
    finally:
        db.close()


# The packages of the meter's own virtualenv (pytest, pytest-cov, xdist, and taskmeter's dependencies).
TEST_SITE_PACKAGES = next(path for path in site.getsitepackages() if path.endswith("site-packages"))


def make_venv(path: Path, with_taskmeter: bool) -> Path:
    """A real virtualenv at `path` that borrows the test virtualenv's packages.
    Without taskmeter, it is a user's project venv: pytest, pytest-cov and xdist,
    but `import taskmeter` fails (the editable install's finder is not loaded).
    With taskmeter, it is another home of the meter (its interpreter at `path`)."""
    venv.create(path, with_pip=False, symlinks=True)
    packages = Path(
        subprocess.run(
            [str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    if with_taskmeter:  # addsitedir also runs the .pth files there: the editable install of taskmeter
        (packages / "borrowed.pth").write_text(f"import site; site.addsitedir({TEST_SITE_PACKAGES!r})\n")
    else:
        (packages / "borrowed.pth").write_text(TEST_SITE_PACKAGES + "\n")
        # The console script pip would write for pytest.
        script = path / "bin" / "pytest"
        script.write_text(f"#!{path / 'bin' / 'python'}\nimport sys\nfrom pytest import console_main\nsys.exit(console_main())\n")
        script.chmod(0o755)
    return path / "bin" / "python"


def meter_with(python: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    """`meter` run by another interpreter (whose path the hooks then name)."""
    return subprocess.run(
        [str(python), "-m", "taskmeter", *args], capture_output=True, text=True, env=env or os.environ, timeout=30
    )
