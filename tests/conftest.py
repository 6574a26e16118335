import io
import sqlite3
import sys
import threading
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskmeter.cli import main
from taskmeter.store import db as store_db

# The `repo` fixture: a real git repository for the automation tests.
pytest_plugins = ["tests.gitrepo"]


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True, scope="session")
def no_proxy_outlives_the_tests():
    """A test that fails before stopping its proxy still leaves no process behind."""
    from tests.proxy_harness import RunningProxy

    yield
    for proxy in RunningProxy.started:
        proxy.stop()


@pytest.fixture
def db_path(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "meter.db"
    monkeypatch.setenv("METER_DB", str(path))
    return path


@pytest.fixture
def meter(db_path, monkeypatch):
    """Run the real `meter` entry point in-process and capture what a user would see."""

    def run(*args: str) -> Result:
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "argv", ["meter", *args])
        code = 0
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        return Result(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture
def db(db_path):
    connection = store_db.connect(db_path)
    yield connection
    connection.close()


def run_concurrently(work, count: int, timeout: float = 60) -> list[Exception]:
    """Run `work` in `count` threads at once; the exceptions they raised."""
    errors: list[Exception] = []

    def guarded():
        try:
            work()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return errors


def dump(path: Path) -> str:
    """Every row of every table, to prove a failed command changed nothing."""
    with sqlite3.connect(path) as connection:
        return "\n".join(connection.iterdump())
