import gc
import importlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import types
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskmeter.cli import main
from tests.migrated import migrated_database

# The `repo` fixture: a real git repository for the automation tests.
pytest_plugins = ["tests.gitrepo"]

# The processes the tests start are interrupted as from a terminal (proxies are stopped
# with SIGINT, Ctrl-C is tested): a suite run in the background of a shell inherits
# SIGINT ignored, which they would inherit in turn. A handler here is the default there.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


class _ImportedOnUse(types.ModuleType):
    """An SDK's stand-in, which imports it when a test first reads one of its names.
    The SDKs cost seconds of CPU to import (anthropic 1.8 s, openai 0.8 s: thousands of
    pydantic models), and every worker imports every test module, whose tests mostly
    never call them (none of `make check`'s do)."""

    def __getattr__(self, name: str):
        # What pytest reads of every name in a test module (__test__, __bases__, _mock_name...)
        # finds nothing; the SDK's own names are public, or its __version__.
        if name.startswith("_") and name != "__version__":
            raise AttributeError(name)
        sdk = sys.modules.get(self.__name__)
        if sdk is self:  # the first name read: the SDK itself takes the stand-in's place
            del sys.modules[self.__name__]
            sdk = importlib.import_module(self.__name__)
        return getattr(sdk, name)


for _sdk in ("anthropic", "openai"):
    sys.modules.setdefault(_sdk, _ImportedOnUse(_sdk))


@dataclass
class Result:
    code: int
    out: str
    err: str


# A test that starts a process (a `meter proxy`, a recorder, a dashboard, the
# `meter` CLI, a Python, git hooks' background jobs, a browser, the bench) says so
# with one of these marks (from the least costly to the most); `make check` runs the rest, in-process and fast.
SLOW_MARKS = ("e2e", "browser", "bench")


def is_slow(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(mark) for mark in SLOW_MARKS)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session):
    """The test modules are loaded with the collector off, and what they made is frozen: objects
    that live as long as the run, which the collector's passes took 2.5 s of CPU over, per worker."""
    gc.disable()
    try:
        return (yield)
    finally:
        gc.freeze()
        gc.enable()


def pytest_collection_modifyitems(items):
    """A test that takes a page of Debian's chromium (test_dashboard.py's fixtures) drives the browser."""
    for item in items:
        if {"browser", "page"} & set(item.fixturenames):
            item.add_marker(pytest.mark.browser)
    slowest_files_first(items)


def slowest_files_first(items: list[pytest.Item]) -> None:
    """The files that start processes first (the bench's, then the browser's, then
    the other e2e ones), the fast ones last, each file's tests together and in
    order: `make test`'s workers, which take a file at a time in this order
    (--no-loadscope-reorder), then end together, the fast files filling in."""
    slowness: dict[Path, int] = {}
    for item in items:
        mark = max((rank for rank, name in enumerate(SLOW_MARKS, 1) if item.get_closest_marker(name)), default=0)
        slowness[item.path] = max(slowness.get(item.path, 0), mark)
    items.sort(key=lambda item: slowness[item.path], reverse=True)  # stable


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before the test's fixtures (a module's proxy too) are set up."""
    from tests import proxy_harness

    proxy_harness.processes_allowed = is_slow(item)


@pytest.fixture(autouse=True)
def fast_tests_start_no_interpreter(request, monkeypatch):
    """A test left unmarked is fast: it may run git, never a Python interpreter
    (each costs a start-up and hides a slow test in `make check`)."""
    if is_slow(request.node):
        return
    popen_init = subprocess.Popen.__init__

    def checked(self, args, *rest, **kwargs):
        command = str(args if isinstance(args, (str, os.PathLike)) else args[0]).split(" ")[0]
        program = os.path.basename(command)
        if program.startswith(("python", "meter", "pytest")) or os.path.dirname(command) == os.path.dirname(sys.executable):
            raise AssertionError(f"this test starts {program}: mark it e2e (pytest.mark.e2e), `make check` runs none")
        popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", checked)


@pytest.fixture(autouse=True, scope="session")
def own_user_folders(tmp_path_factory):
    """The meter's user folders (state: pid, lock and log files; data: the default
    database and CA; cache; config) in this session's temporary folder: never the
    developer's, and never shared by two xdist workers."""
    root = tmp_path_factory.mktemp("user")
    with pytest.MonkeyPatch.context() as patch:
        for kind in ("CONFIG", "DATA", "STATE", "CACHE"):
            patch.setenv(f"XDG_{kind}_HOME", str(root / kind.lower()))
        yield


@pytest.fixture(autouse=True, scope="session")
def no_proxy_outlives_the_tests():
    """A test that fails before stopping its proxy still leaves no process behind."""
    from tests.proxy_harness import RunningProxy

    yield
    for proxy in RunningProxy.started:
        proxy.stop()


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through Playwright, for a module's pages (the dashboard's, a web page's calls)."""
    import shutil

    from playwright.sync_api import sync_playwright  # here: most workers' modules show no page

    executable = shutil.which("chromium")
    assert executable, "these tests need Debian's chromium: `make test` installs it (scripts/ensure-chromium)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable,
            # Without the network flags chromium reaches for Google's hosts, which this machine refuses.
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield launched
        launched.close()


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
    """The meter's connection to a new, migrated database at db_path: a copy of one
    migrated once per test process (tests/migrated.py)."""
    opened = migrated_database(db_path)
    yield opened
    opened.close()


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
