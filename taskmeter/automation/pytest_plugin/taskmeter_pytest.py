"""taskmeter's pytest plugin. Standard library only, so it loads in any
project's virtualenv: `meter hooks install` installs this file there as a small
distribution whose `pytest11` entry point pytest loads by itself. No
PYTHONPATH or PYTEST_PLUGINS is involved, so no way of starting pytest (a
different PYTHONPATH, tox, `env -i`, xdist) can make it fail to load.

At the end of a session it hands what happened (exit status, tests collected
and failed, whether the run was narrowed, pytest-cov's total and fail_under)
to `meter hooks test-run` in the background, and returns, using the command
(`meter`, or the meter's interpreter) and database that the repository's
post-commit hook names. It does nothing outside repositories with taskmeter's git hooks, in
xdist's workers (the controller hands the run over), and never changes
pytest's outcome or exit code (docs/automation.md).
"""

import json
import os
import shutil
import subprocess
import time

HOOK_MARKER = "# taskmeter hook"
# The hook's line naming the meter's command and database (taskmeter.automation.git writes it).
SETTINGS_PREFIX = "# taskmeter settings: "


def _git(root: str, *args: str) -> str:
    return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=5).stdout.strip()


def enrolment(root: str) -> dict | None:
    """The settings line of the repository's taskmeter post-commit hook, or None
    when the repository has no taskmeter hooks."""
    try:
        hooks = _git(root, "rev-parse", "--path-format=absolute", "--git-path", "hooks")
        if not hooks:
            return None
        with open(os.path.join(hooks, "post-commit"), encoding="utf-8", errors="replace") as hook:
            text = hook.read()
    except (OSError, subprocess.SubprocessError):
        return None
    if HOOK_MARKER not in text:
        return None
    for line in text.splitlines():
        if line.startswith(SETTINGS_PREFIX):
            settings = json.loads(line[len(SETTINGS_PREFIX) :])
            return settings if isinstance(settings, dict) else None
    return None


def _meter_command(settings: dict | None) -> list[str] | None:
    """What hands the run over: the hook's command, when it can run (hooks of earlier
    versions name the interpreter alone); None when it cannot."""
    if not settings:
        return None
    words = settings.get("command") or ([settings["python"], "-m", "taskmeter"] if settings.get("python") else None)
    if not words:
        return None
    found = shutil.which(words[0]) if words == ["meter"] else words[0]
    if not found or not os.access(found, os.X_OK):
        return None
    return [found, *words[1:], "hooks", "test-run"]


def _is_default_path(config, arg: str) -> bool:
    """A path argument that still means the whole suite: the rootdir, one of
    `testpaths`, or a top-level folder (`pytest tests/`, or pytest run there)."""
    path = os.path.realpath(os.path.join(str(config.invocation_params.dir), arg))
    root = os.path.realpath(str(config.rootpath))
    testpaths = [os.path.realpath(os.path.join(root, name)) for name in config.getini("testpaths")]
    return os.path.isdir(path) and (path in (root, *testpaths) or os.path.dirname(path) == root)


def _narrowed(config) -> bool:
    """Did the user narrow the run (-k, -m, node IDs, a file, --lf, --collect-only, deselection)?"""
    option = config.option
    if getattr(option, "keyword", "") or getattr(option, "markexpr", ""):
        return True
    if getattr(option, "lf", False) or getattr(option, "last_failed", False) or getattr(option, "collectonly", False):
        return True
    if not all(_is_default_path(config, str(arg)) for arg in config.args):
        return True  # a file, a node ID (`::`), a sub-folder
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return bool(reporter and reporter.stats.get("deselected"))


def _coverage(config) -> tuple[float | None, float | None]:
    """pytest-cov's total, as coverage.py's API reports it, and fail_under as set
    (0, coverage's default, is passed on: testruns.coverage_target_of reads it)."""
    plugin = config.pluginmanager.get_plugin("_cov")
    total = getattr(plugin, "cov_total", None) if plugin else None
    fail_under = getattr(getattr(plugin, "options", None), "cov_fail_under", None) if plugin else None
    controller = getattr(plugin, "cov_controller", None)
    coverage = getattr(controller, "cov", None)
    if fail_under is None and coverage is not None:
        fail_under = coverage.get_option("report:fail_under")
    return total, fail_under


def pytest_sessionstart(session):
    session.config._taskmeter_session = session


def pytest_sessionfinish(session, exitstatus):
    session.config._taskmeter_exitstatus = int(exitstatus)
    session.config._taskmeter_finished = time.time()


def pytest_unconfigure(config):
    try:
        session_status = getattr(config, "_taskmeter_exitstatus", None)
        if session_status is None or hasattr(config, "workerinput"):  # an xdist worker: the controller records
            return
        root = str(config.rootpath)
        settings = enrolment(root)
        command = _meter_command(settings)
        if command is None:
            return
        session = getattr(config, "_taskmeter_session", None)
        total, fail_under = _coverage(config)
        run = {
            "repo": root,
            # The branch now: the background job runs after the developer may have switched.
            "branch": _git(root, "symbolic-ref", "-q", "--short", "HEAD") or None,
            "at": config._taskmeter_finished,
            "exit_status": session_status,
            "tests": session.testscollected if session else None,
            "failed": session.testsfailed if session else None,
            "selected": _narrowed(config),
            "coverage": total,
            "coverage_target": fail_under,
        }
        database = ["--db", settings["db"]] if settings.get("db") else []
        process = subprocess.Popen(
            [*command, *database],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        process.stdin.write(json.dumps(run).encode())
        process.stdin.close()
    except Exception:  # the developer's test run is never ours to break
        return
