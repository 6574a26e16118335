"""taskmeter's pytest plugin. Standard library only, so it loads in any
project's virtualenv: `meter env` puts this folder on PYTHONPATH and names the
plugin in PYTEST_PLUGINS, with TASKMETER_PYTHON naming the meter's interpreter.

At the end of a session it hands what happened (exit status, tests collected
and failed, whether the run was a full one, pytest-cov's total and fail_under)
to `python -m taskmeter.automation.testruns` in the background, and returns.
It does nothing outside repositories with taskmeter's git hooks, and never
changes pytest's outcome or exit code (docs/automation.md).
"""

import json
import os
import subprocess
import time

MARKER = "# taskmeter hook"


def _enrolled(root: str) -> bool:
    try:
        hooks = subprocess.run(
            ["git", "-C", root, "rev-parse", "--path-format=absolute", "--git-path", "hooks"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        with open(os.path.join(hooks, "post-commit"), encoding="utf-8", errors="replace") as hook:
            return MARKER in hook.read()
    except (OSError, subprocess.SubprocessError):
        return False


def _selected(config, session) -> bool:
    """Did the user narrow the run (-k, -m, node IDs, --lf, deselection)?"""
    option = config.option
    if getattr(option, "keyword", "") or getattr(option, "markexpr", ""):
        return True
    if getattr(option, "lf", False) or getattr(option, "last_failed", False):
        return True
    if any("::" in str(arg) for arg in config.args):
        return True
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return bool(reporter and reporter.stats.get("deselected"))


def _coverage(config) -> tuple[float | None, float | None]:
    """pytest-cov's total, as coverage.py's API reports it, and fail_under."""
    plugin = config.pluginmanager.get_plugin("_cov")
    total = getattr(plugin, "cov_total", None) if plugin else None
    fail_under = getattr(getattr(plugin, "options", None), "cov_fail_under", None) if plugin else None
    controller = getattr(plugin, "cov_controller", None)
    coverage = getattr(controller, "cov", None)
    if fail_under is None and coverage is not None:
        fail_under = coverage.get_option("report:fail_under") or None
    return total, fail_under


def pytest_sessionfinish(session, exitstatus):
    session.config._taskmeter_exitstatus = int(exitstatus)
    session.config._taskmeter_finished = time.time()


def pytest_unconfigure(config):
    try:
        python = os.environ.get("TASKMETER_PYTHON")
        session_status = getattr(config, "_taskmeter_exitstatus", None)
        root = str(config.rootpath)
        if not python or session_status is None or not _enrolled(root):
            return
        session = getattr(config, "_taskmeter_session", None)
        total, fail_under = _coverage(config)
        run = {
            "repo": root,
            "at": config._taskmeter_finished,
            "exit_status": session_status,
            "tests": session.testscollected if session else None,
            "failed": session.testsfailed if session else None,
            "selected": _selected(config, session),
            "coverage": total,
            "coverage_target": fail_under,
        }
        process = subprocess.Popen(
            [python, "-m", "taskmeter.automation.testruns"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        process.stdin.write(json.dumps(run).encode())
        process.stdin.close()
    except Exception:  # the developer's test run is never ours to break
        return


def pytest_sessionstart(session):
    session.config._taskmeter_session = session
