"""A real git repository for the automation tests, and the helpers they share."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from taskmeter.store import db as store_db
from tests.proxy_harness import VENV_BIN


@pytest.fixture
def repo(tmp_path, db_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the hooks' log and config live in the user's folders
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
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
    raise AssertionError("the hook's background work did not happen")


def task_row(db_path, task_id):
    db = store_db.connect(db_path)
    try:
        row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return dict(row) if row else None
    finally:
        db.close()
