"""The git side of the self-filling record (docs/automation.md).

`meter hooks install` puts small shell hooks into a repository. Each reads
HEAD, the branch and the time (a few ms: the background jobs may run after the
next git command, and in any order), hands the event to `meter hooks git-event HOOK ...` in
the background, and exits with the status of the hook it replaced (0 when
there was none), so a hook never fails or slows a git command. Here, in that
background process:

- post-checkout (branch checkouts only): the branch name selects the task;
- post-commit: the commit is recorded against the branch's task; the task's
  first commit sets INITIAL_COMPLETION, the phase's first PHASE_FIRST_CODE;
- post-checkout, post-merge (a pull too): a task whose last commit is now in
  the main branch gets FINAL_APPROVAL, at the time that was first seen.

Every failure is swallowed into the meter's log: the developer's git must
never see us.
"""

import json
import logging
import os
import re
import shlex
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

from taskmeter.automation import command
from taskmeter.automation.pytest_plugin.taskmeter_pytest import SETTINGS_PREFIX
from taskmeter.errors import MeterError
from taskmeter.store import commits, connection, tasks
from taskmeter.store.connection import write_transaction
from taskmeter.timefmt import now_stored, to_stored

log = logging.getLogger(__name__)

HOOKS = ("post-checkout", "post-commit", "post-merge")
MARKER = "# taskmeter hook: `meter hooks uninstall` removes it"
CHAINED_SUFFIX = ".pre-meter"


class NotARepository(MeterError):
    pass


class HookConflict(MeterError):
    pass


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=10).stdout.strip()


def repository_top(folder: Path) -> Path:
    """The top of the repository `folder` is in: where its hooks are installed from and its virtualenvs found."""
    try:
        return Path(_git(folder, "rev-parse", "--show-toplevel"))
    except (subprocess.CalledProcessError, FileNotFoundError):
        raise NotARepository(f"{folder} is not a git repository (or git is not installed)") from None


def hooks_dir(repo: Path) -> Path:
    """Where git runs this repository's hooks: core.hooksPath is honoured."""
    try:
        path = Path(_git(repo, "rev-parse", "--git-path", "hooks"))
    except (subprocess.CalledProcessError, FileNotFoundError):
        raise NotARepository(f"{repo} is not a git repository (or git is not installed)") from None
    # A relative answer is relative to the folder git ran in (`-C repo`), which may be below the top.
    return path if path.is_absolute() else Path(os.path.normpath(repo / path))


def _hook_text(name: str, db_path: Path | None) -> str:
    """The hook: every path in it is shell-quoted (any character may be in a path),
    and the settings line tells the pytest plugin which command and database to use.
    The command is `meter` when that is this installation, else its interpreter
    (automation/command.py); when it is gone, the hook says so and git goes on."""
    words = command.meter_words()
    settings = json.dumps({"command": words, "db": str(db_path) if db_path else None})
    db = f" --db {shlex.quote(str(db_path))}" if db_path else ""
    if words == [command.METER]:
        missing = "! command -v meter >/dev/null 2>&1"
        what = "`meter` is not on the PATH"
    else:
        missing = f"[ ! -x {shlex.quote(words[0])} ]"
        what = f"{words[0]} is missing"
    warning = shlex.quote(f"meter: {what}: taskmeter's {name} hook records nothing (`meter hooks status` says how to repair it)")
    return f"""#!/bin/sh
{MARKER}
{SETTINGS_PREFIX}{settings}
status=0
if [ -x "$0{CHAINED_SUFFIX}" ]; then "$0{CHAINED_SUFFIX}" "$@"; status=$?; fi
if {missing}; then
    printf '%s\\n' {warning} >&2
    exit $status
fi
head=$(git rev-parse -q --verify HEAD 2>/dev/null)
branch=$(git symbolic-ref -q --short HEAD 2>/dev/null)
at=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
( {command.render(words)} hooks git-event --repo "$PWD" --head "$head" --branch "$branch" --at "$at"{db} {name} -- "$@" </dev/null >/dev/null 2>&1 & )
exit $status
"""


def hook_command(repo: Path) -> list[str] | None:
    """The command the repository's installed hooks run (None: no hooks of ours). Hooks
    written before the command was recorded name their interpreter alone."""
    settings = enrolment_of(hooks_dir(repo) / "post-commit")
    if settings is None:
        return None
    return settings.get("command") or [settings["python"], "-m", "taskmeter"]


def enrolment_of(hook: Path) -> dict | None:
    if not _ours(hook):
        return None
    for line in hook.read_text(errors="replace").splitlines():
        if line.startswith(SETTINGS_PREFIX):
            return json.loads(line[len(SETTINGS_PREFIX) :])
    return None


def _ours(hook: Path) -> bool:
    return hook.exists() and MARKER in hook.read_text(errors="replace")


def install(repo: Path, db_path: Path | None = None) -> list[str]:
    """Install (or refresh) the hooks; a hook already there is kept and chained.
    A hook that replaced ours after we had chained one is never overwritten:
    then nothing changes, and HookConflict says which."""
    folder = hooks_dir(repo)
    replaced = [name for name in HOOKS if (folder / name).exists() and not _ours(folder / name)]
    conflicts = [name for name in replaced if (folder / (name + CHAINED_SUFFIX)).exists()]
    if conflicts:
        both = ", ".join(f"{name} and {name}{CHAINED_SUFFIX}" for name in conflicts)
        raise HookConflict(
            f"another tool replaced taskmeter's hooks in {folder}: {both} are both someone's hooks;"
            f" nothing changed: merge or move one of each pair, then install again"
        )
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for name in HOOKS:
        hook = folder / name
        if name in replaced:
            hook.rename(folder / (name + CHAINED_SUFFIX))  # theirs runs first, from ours
        _write_executable(hook, _hook_text(name, db_path))
        done.append(str(hook))
    return done


def _write_executable(path: Path, text: str) -> None:
    """Replace `path` in one step, so a git command running now sees the old hook or the new one."""
    import tempfile  # only to install a hook: `meter doctor` and the hooks themselves start without it (and shutil)

    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o755)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def uninstall(repo: Path) -> list[str]:
    """Remove our hooks and put back the ones they chained."""
    folder = hooks_dir(repo)
    removed = []
    for name in HOOKS:
        hook = folder / name
        if _ours(hook):
            hook.unlink()
            removed.append(str(hook))
            chained = folder / (name + CHAINED_SUFFIX)
            if chained.exists():
                chained.rename(hook)
    return removed


def installed(repo: Path) -> bool:
    return _ours(hooks_dir(repo) / "post-commit")


# ------------------------------------------------------------ events


def task_of_branch(branch: str | None, pattern: str) -> str | None:
    if not branch:
        return None
    match = re.search(pattern, branch)
    if match is None:
        return None
    try:
        return tasks.validate_task_id(match.group(1) if match.groups() else match.group(0))
    except MeterError:
        return None


def current_branch(repo: Path) -> str | None:
    try:
        return _git(repo, "symbolic-ref", "--short", "-q", "HEAD") or None
    except subprocess.CalledProcessError:
        return None  # detached HEAD


def branch_task(db, branch: str | None, pattern: str, as_of: str | None = None) -> str | None:
    """The task `branch` names, unless it is a new ID that `meter set-task` would make
    only with --create (a near-typo; `as_of`: judged by the tasks made before then): a
    branch never creates such a task silently; hooks.log says why it was passed over."""
    task_id = task_of_branch(branch, pattern)
    refusal = task_id and tasks.creation_refusal(db, task_id, as_of=as_of)
    if refusal:
        log.warning("meter: branch %s names no task: %s; `meter set-task %s --create` makes it", branch, refusal, task_id)
        return None
    return task_id


def task_of_work(db, branch: str | None, pattern: str, as_of: str | None = None) -> str | None:
    """The task work on `branch` belongs to: the branch's, else the current task."""
    task_id = branch_task(db, branch, pattern, as_of)
    if task_id is None:
        current = tasks.current_task(db)
        task_id = current.task_id if current else None
    return task_id


def task_of_repository(db, repo: Path, pattern: str) -> str | None:
    """The task work in `repo` belongs to now: its branch's, else the current task."""
    return task_of_work(db, current_branch(repo), pattern)


def on_checkout(db, repo: Path, flag: str, branch: str | None, pattern: str, main: str, at: str | None = None) -> None:
    """`branch`: the one the hook saw checked out (None: a detached HEAD) at `at` (None:
    a hook of an older meter, which did not say). A checkout that git has already left for
    another branch makes its task but selects nothing: its job ran late, and the later
    checkout's job selects (or selected) the task the developer is on."""
    if flag == "1":  # a branch checkout, not a file checkout
        task_id = branch_task(db, branch, pattern, as_of=at)
        if task_id and branch == current_branch(repo):
            tasks.set_task(db, task_id, create=True)  # branch_task applied the typo rule
        elif task_id:
            with write_transaction(db):
                tasks.ensure_task(db, task_id, at or now_stored())
    approve_merged(db, repo, main, pattern)


def on_commit(db, repo: Path, sha: str, branch: str | None, pattern: str, at: str | None = None) -> None:
    """`sha` and `branch`: the commit and branch the hook saw at `at` (None: a hook of an
    older meter), whatever HEAD is by now. The branch's task is judged by the tasks made
    before then: a later checkout's job that ran first must not make its new ID a typo."""
    sha, committed = _git(repo, "log", "-1", "--format=%H%x00%cI", sha).split("\x00")
    numstat = _git(repo, "show", "--numstat", "--format=", sha).splitlines()
    added = sum(int(parts[0]) for parts in (line.split("\t") for line in numstat) if parts[0].isdigit())
    deleted = sum(int(parts[1]) for parts in (line.split("\t") for line in numstat) if parts[1].isdigit())
    task_id = task_of_work(db, branch, pattern, as_of=at)
    at = to_stored(datetime.fromisoformat(committed))
    with write_transaction(db):
        if task_id:
            task_id = tasks.ensure_task(db, task_id, at)
        commits.record_commit(db, sha, str(repo), branch, task_id, at, len(numstat), added, deleted)
        if task_id is None:
            return
        tasks.auto_mark(db, "tasks", task_id, "initial", at, f"commit {sha[:12]}")
        tasks.auto_mark(db, "phases", tasks.get_task(db, task_id)["phase_id"], "first-code", at, f"commit {sha[:12]}")
        documented = docstring_coverage(repo, touched_python_files(repo, commits.shas_of_task(db, task_id, str(repo))))
        if documented is not None:
            tasks.auto_mark(db, "tasks", task_id, "doc_completeness", documented, f"docstrings at {sha[:12]}", replace_own=True)


def touched_python_files(repo: Path, shas: list[str]) -> list[Path]:
    """The Python files the commits touched that still exist."""
    names: set[str] = set()
    for sha in shas:
        names.update(_git(repo, "show", "--name-only", "--format=", sha).splitlines())
    return sorted(repo / name for name in names if name.endswith(".py") and (repo / name).is_file())


# pytest's default `python_files`, and its conftest files: test code, not the code DOC_COMPLETENESS is about.
TEST_FILE_PATTERNS = ("test_*.py", "*_test.py", "conftest.py")
# pytest's configuration files, in the order it looks for them, and each one's table.
PYTEST_CONFIG_TABLES = {
    "pytest.toml": "pytest",
    ".pytest.toml": "pytest",
    "pytest.ini": "pytest",
    ".pytest.ini": "pytest",
    "pyproject.toml": "tool.pytest",
    "tox.ini": "pytest",
    "setup.cfg": "tool:pytest",
}


def _pytest_table(path: Path, table: str) -> dict | None:
    """The file's pytest settings, or None when it does not configure pytest
    (pytest.toml and pytest.ini always do)."""
    import configparser
    import tomllib

    always = path.name.lstrip(".").startswith("pytest")
    if path.suffix == ".toml":
        document: object = tomllib.loads(path.read_text(encoding="utf-8"))
        for key in table.split("."):
            document = document.get(key) if isinstance(document, dict) else None
        if isinstance(document, dict) and path.name == "pyproject.toml" and "ini_options" in document:
            document = document["ini_options"]  # pytest's INI mode: [tool.pytest.ini_options]
        return document if isinstance(document, dict) else ({} if always else None)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    return dict(parser[table]) if parser.has_section(table) else ({} if always else None)


def python_test_patterns(repo: Path) -> list[str]:
    """TEST_FILE_PATTERNS and the repository's own `python_files`, from the first
    of pytest's configuration files at its top that configures pytest. A file
    that cannot be read configures nothing."""
    import configparser
    import shlex

    for name, table in PYTEST_CONFIG_TABLES.items():
        path = repo / name
        if not path.is_file():
            continue
        try:  # tomllib's and the decoder's errors are ValueErrors, as is shlex's unclosed quote
            settings = _pytest_table(path, table)
            if settings is None:
                continue
            configured = settings.get("python_files", [])
            patterns = shlex.split(configured) if isinstance(configured, str) else list(configured)
        except (OSError, ValueError, TypeError, configparser.Error):
            break
        return list(dict.fromkeys([*TEST_FILE_PATTERNS, *map(str, patterns)]))
    return list(TEST_FILE_PATTERNS)


def is_test_file(path: Path, patterns: list[str]) -> bool:
    """pytest's match (`fnmatch_ex`): a pattern without a slash matches the file's
    name; one with a slash, the end of its (absolute) path."""
    import fnmatch

    def matches(pattern: str) -> bool:
        if "/" not in pattern:
            return fnmatch.fnmatch(path.name, pattern)
        return fnmatch.fnmatch(str(path), pattern if os.path.isabs(pattern) else f"*/{pattern}")

    return any(matches(pattern) for pattern in patterns)


def docstring_coverage(repo: Path, files: list[Path]) -> float | None:
    """DOC_COMPLETENESS: the share of modules, classes and functions in `files`
    that have a docstring, in percent, counted with `ast` as interrogate does with
    --ignore-private, --ignore-semiprivate and --ignore-magic: test files (pytest's
    discovery rules) and definitions whose name starts with `_` (with what is
    inside them) are left out."""
    import ast

    patterns = python_test_patterns(repo)
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)

    def public(node: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
        found: list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef] = []
        for child in ast.iter_child_nodes(node):
            if isinstance(child, definitions):
                if not child.name.startswith("_"):
                    found += [child, *public(child)]
            else:
                found += public(child)
        return found

    total = documented = 0
    for path in files:
        if is_test_file(path, patterns):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (OSError, SyntaxError, ValueError):  # gone since the commit, not Python, or a NUL byte
            continue
        nodes: list[ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef] = [tree, *public(tree)]
        total += len(nodes)
        documented += sum(1 for node in nodes if ast.get_docstring(node) is not None)
    return round(100.0 * documented / total, 1) if total else None


def approve_merged(db, repo: Path, main: str, pattern: str | None = None) -> None:
    """FINAL_APPROVAL for each open task whose last commit here is in `main`; a
    reopened task only for a commit made since it was reopened. An approved task
    that is current is current no more: the branch's task (`pattern`) follows it."""
    try:
        _git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{main}")
    except subprocess.CalledProcessError:
        return
    candidates = commits.last_commits_of_open_tasks(db, str(repo))
    following = task_of_branch(current_branch(repo), pattern) if pattern and candidates else None
    for row in candidates:
        merged = subprocess.run(
            ["git", "-C", str(repo), "merge-base", "--is-ancestor", row["sha"], main], capture_output=True, timeout=10
        )
        if merged.returncode == 0:
            source, seen = f"commit {row['sha'][:12]} is in {main}", now_stored()
            with write_transaction(db):
                tasks.auto_mark(db, "tasks", row["task_id"], "approved", seen, source)
                tasks.release_approved(db, row["task_id"], seen, following)
                phase_id = tasks.get_task(db, row["task_id"])["phase_id"]
                if not tasks.phase_tasks_without(db, phase_id, "approved"):  # the phase's last task is in: its work is integrated
                    tasks.auto_mark(db, "phases", phase_id, "integration", seen, f"every task of {phase_id} approved; {source}")


def hooks_log() -> Path:
    """Where the hooks' background work says what went wrong (git never shows it)."""
    import platformdirs

    return platformdirs.user_state_path("taskmeter") / "hooks.log"


def log_to_hooks_log() -> None:
    """Send the meter's log lines to hooks.log, created private (0600 in a 0700
    folder) whatever the umask: its lines name the user's repositories and tasks."""
    from taskmeter.logs import configure_logging

    path = hooks_log()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        os.chmod(path, 0o600)
    except OSError:
        return  # no log is better than a failed hook
    configure_logging(path)


def _moment(said: str | None) -> str | None:
    """The stored moment of a hook's `--at`, None when it said none (or nothing readable).
    A `date` without %N (macOS's) says the whole second: the end of that second, so that
    whatever was made within it counts as made before, as the typo rule would have seen it."""
    if not said:
        return None
    whole = said.endswith(".NZ")
    try:
        moment = datetime.fromisoformat(said.replace(".NZ", "Z"))
    except ValueError:
        return None
    return to_stored(moment + timedelta(seconds=1) if whole else moment)


def main(argv: list[str] | None = None) -> None:
    """One hook's event, in the background (`meter hooks git-event`, which the hooks run)."""
    import argparse

    from taskmeter.config.automation import automation_values

    parser = argparse.ArgumentParser(prog="meter hooks git-event")
    parser.add_argument("hook", choices=HOOKS)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--db")
    parser.add_argument("--head", help="HEAD when the hook ran (default: HEAD now)")
    parser.add_argument("--branch", help="the branch when the hook ran, empty for a detached HEAD (default: now)")
    parser.add_argument("--at", help="when the hook ran, to the second (ISO 8601, UTC)")
    parser.add_argument("args", nargs="*")
    args = parser.parse_args(argv)
    log_to_hooks_log()
    try:
        settings = automation_values()
        repo = repository_top(Path(args.repo))
        branch = current_branch(repo) if args.branch is None else args.branch or None
        db = connection.connect(args.db or os.environ.get(connection.ENV_VAR))
        try:
            if args.hook == "post-checkout":
                flag = (args.args + ["", "", ""])[2]
                on_checkout(db, repo, flag, branch, settings.branch_pattern, settings.main_branch, _moment(args.at))
            elif args.hook == "post-commit":
                on_commit(db, repo, args.head or "HEAD", branch, settings.branch_pattern, _moment(args.at))
            else:
                approve_merged(db, repo, settings.main_branch, settings.branch_pattern)
        finally:
            db.close()
    except Exception as exc:  # never the developer's problem: a line in the meter's log
        log.error("meter: %s hook: %s: %s", args.hook, type(exc).__name__, exc)


if __name__ == "__main__":  # what hooks installed by earlier versions run
    # The imported module's main: its log lines are then under `taskmeter`, which writes hooks.log.
    from taskmeter.automation import git

    git.main()
