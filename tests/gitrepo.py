"""A real git repository for the automation tests, and the helpers they share."""

import os
import site
import subprocess
import time
import venv
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from taskmeter.store import connection
from tests.meter_forks import METER


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
    """`meter ARGS` here, in the test's environment: a fork of the preloaded meter (tests/meter_forks.py)."""
    return METER.run(list(args), timeout=30)


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
# What a user's project venv has installed to run its tests.
PROJECT_TOOLS = ("pytest", "pytest-cov", "pytest-xdist")


def _installed_with(names) -> list[metadata.Distribution]:
    """The distributions `names` are, with everything they require (no extras)."""
    found: dict[str, metadata.Distribution] = {}
    wanted = list(names)
    while wanted:
        dist = metadata.distribution(wanted.pop())
        if dist.name.lower() in found:
            continue
        found[dist.name.lower()] = dist
        requirements = (Requirement(line) for line in dist.requires or [])
        wanted += [req.name for req in requirements if req.marker is None or req.marker.evaluate({"extra": ""})]
    return list(found.values())


def _borrow(packages: Path, names) -> None:
    """Install `names` into the site-packages folder `packages` as links to the test
    virtualenv's copies: their modules and metadata (entry points: pytest's plugins), and
    nothing else of the test virtualenv, whose other pytest plugins a user's venv lacks."""
    for dist in _installed_with(names):
        for top in {file.parts[0] for file in dist.files or ()}:
            if top not in ("..", "__pycache__") and not top.endswith(".pth"):
                (packages / top).symlink_to(Path(TEST_SITE_PACKAGES) / top)


def make_venv(path: Path, with_taskmeter: bool) -> Path:
    """A real virtualenv at `path` that borrows the test virtualenv's packages.
    Without taskmeter, it is a user's project venv: pytest, pytest-cov and xdist
    only, so `import taskmeter` fails and pytest loads no other plugin.
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
        _borrow(packages, PROJECT_TOOLS)
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
