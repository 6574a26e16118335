"""The self-filling record: meter hooks install|uninstall|status, meter claude install|uninstall."""

import sys
from pathlib import Path

import click

from taskmeter import terminal
from taskmeter.cli.common import cli, db_option, open_db
from taskmeter.store import connection


@cli.group("hooks")
def hooks_group():
    """Git hooks and the pytest plugin that fill the task record: the branch picks
    the task, commits set INITIAL_COMPLETION and PHASE_FIRST_CODE, full green test
    runs set TESTS_COMPLETION and VALIDATION, a merge into main sets FINAL_APPROVAL.

    The hooks honour core.hooksPath, keep (and run) hooks already there, return at
    once (the work happens in the background) and never change git's outcome.
    Rules and settings: docs/automation.md.
    """


repo_option = click.option(
    "--repo",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="The repository, or any folder in it.",
)
venv_option = click.option(
    "--venv",
    "named_venvs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A virtualenv the project's pytest runs in, besides the active one and those at the repository's top (repeatable).",
)


@hooks_group.command("install")
@repo_option
@venv_option
@click.option(
    "--db", "db_path", type=click.Path(dir_okay=False), help="Record to this database (default: $METER_DB when git runs)."
)
def hooks_install_cmd(repo, named_venvs, db_path):
    """Install the hooks in a repository (again: refreshed, never doubled), and the
    pytest plugin in its virtualenvs: the active one, those at the repository's
    top (.venv, venv, ...) and each --venv."""
    from taskmeter.automation import git, venvs

    repo = git.repository_top(repo.resolve())  # not a repository: say so before touching any virtualenv
    found = venvs.repository_venvs(repo, list(named_venvs))
    written = git.install(repo, connection.resolve_path(db_path) if db_path else None)
    terminal.info(f"installed {', '.join(Path(path).name for path in written)} in {Path(written[0]).parent}")
    terminal.info(f"  they run {_runs()}")
    for venv in found:
        venvs.install(venv)
        terminal.info(f"installed the pytest plugin in {venv}")
    if not found:
        terminal.info("no virtualenv for the pytest plugin (none active, none at the repository's top): name one with --venv")


@hooks_group.command("uninstall")
@repo_option
@venv_option
def hooks_uninstall_cmd(repo, named_venvs):
    """Remove the hooks, putting back any they had chained, and the pytest plugin
    from the virtualenvs install would choose."""
    from taskmeter.automation import git, venvs

    repo = git.repository_top(repo.resolve())
    removed = git.uninstall(repo)
    terminal.info(f"removed {', '.join(Path(path).name for path in removed)}" if removed else "no taskmeter hooks here")
    for venv in venvs.repository_venvs(repo, list(named_venvs)):
        if venvs.uninstall(venv):
            terminal.info(f"removed the pytest plugin from {venv}")


@hooks_group.command("status")
@repo_option
@venv_option
def hooks_status_cmd(repo, named_venvs):
    """Whether the hooks are installed, which virtualenvs have the pytest plugin,
    and where their background work logs."""
    from taskmeter.automation import git, venvs
    from taskmeter.automation.command import broken, repair_hooks

    repo = git.repository_top(repo.resolve())
    folder = git.hooks_dir(repo)
    settings = git.enrolment_of(folder / "post-commit")
    words = git.hook_command(repo)
    problem = words and broken(words)
    if problem:
        terminal.warn(f"broken in {folder}: {problem}: reinstall with `{repair_hooks(repo, settings and settings.get('db'))}`")
    else:
        terminal.info(f"{'installed' if words else 'not installed'} in {folder}; log: {git.hooks_log()}")
    for venv in venvs.repository_venvs(repo, list(named_venvs)):
        terminal.info(f"pytest plugin {'installed' if venvs.installed(venv) else 'not installed'} in {venv}")
    if problem:
        sys.exit(1)


@cli.group("claude")
def claude_group():
    """Claude Code hooks in a project's .claude/settings.local.json (never the
    committed settings.json): each session bound to its branch's task, a
    `/hallucination [note]` prompt that flags the last call without a model
    call, and `meter statusline` as the status line (chaining one already set).
    """


project_option = click.option(
    "--project", type=click.Path(file_okay=False, path_type=Path), default=".", show_default=True, help="The project folder."
)


@claude_group.command("install")
@project_option
def claude_install_cmd(project):
    """Add the hooks and the status line (again: refreshed, never doubled)."""
    from taskmeter.automation import claude

    terminal.info(f"wrote {claude.install(project.resolve())}")
    terminal.info(f"  its hooks run {_runs()}")


def _runs() -> str:
    """The meter the hooks just written run, and why that one (automation/command.py)."""
    from taskmeter.automation.command import METER, meter_words, render

    words = meter_words()
    if words == [METER]:
        return "`meter` (this installation's, on the PATH)"
    return f"`{render(words)}` (no `meter` of this installation is on the PATH)"


@claude_group.command("uninstall")
@project_option
def claude_uninstall_cmd(project):
    """Remove them, putting back a status line they chained."""
    from taskmeter.automation import claude

    terminal.info(f"wrote {claude.uninstall(project.resolve())}")


@claude_group.command("status")
@project_option
def claude_status_cmd(project):
    """Whether the hooks are installed, and whether the meter they run still runs."""
    from taskmeter.automation import claude
    from taskmeter.automation.command import broken, repair_claude

    project = project.resolve()
    path = claude.settings_path(project)
    words = claude.installed_command(project)
    problem = words and broken(words)
    if problem:
        terminal.warn(f"broken in {path}: {problem}: reinstall with `{repair_claude(project)}`")
        sys.exit(1)
    terminal.info(f"{'installed' if words else 'not installed'} in {path}")


@claude_group.command("hook", hidden=True)
@click.argument("event", type=click.Choice(["session-start", "prompt"]))
@db_option
def claude_hook_cmd(event, db_path):
    """What Claude Code runs: its hook JSON on stdin. Never fails Claude Code:
    a problem goes to the hooks' log, and the prompt goes on."""
    import json
    import sys

    from taskmeter.automation import claude
    from taskmeter.automation.git import log_to_hooks_log
    from taskmeter.config import load_settings

    try:
        hook_input = json.loads(sys.stdin.read() or "{}")
        with open_db(db_path) as db:
            if event == "session-start":
                claude.session_start(db, hook_input, load_settings().automation.branch_pattern)
                return
            answer = claude.prompt_submit(db, hook_input)
        if answer is not None:
            click.echo(json.dumps(answer))
    except Exception as exc:
        import logging

        log_to_hooks_log()
        logging.getLogger(__name__).error("meter: claude %s hook: %s: %s", event, type(exc).__name__, exc)
