"""The self-filling record: meter hooks install|uninstall|status."""

from pathlib import Path

import click

from taskmeter import terminal
from taskmeter.cli.common import cli
from taskmeter.store import db as store_db


@cli.group("hooks")
def hooks_group():
    """Git hooks that fill the task record: the branch picks the task, commits set
    INITIAL_COMPLETION and PHASE_FIRST_CODE, a merge into main sets FINAL_APPROVAL.

    They honour core.hooksPath, keep (and run) hooks already there, return at
    once (the work happens in the background) and never change git's outcome.
    Rules and settings: docs/automation.md.
    """


repo_option = click.option(
    "--repo", type=click.Path(file_okay=False, path_type=Path), default=".", show_default=True, help="The repository."
)


@hooks_group.command("install")
@repo_option
@click.option(
    "--db", "db_path", type=click.Path(dir_okay=False), help="Record to this database (default: $METER_DB when git runs)."
)
def hooks_install_cmd(repo, db_path):
    """Install the hooks in a repository (again: refreshed, never doubled)."""
    from taskmeter.automation import git

    written = git.install(repo.resolve(), store_db.resolve_path(db_path) if db_path else None)
    terminal.info(f"installed {', '.join(Path(path).name for path in written)} in {Path(written[0]).parent}")


@hooks_group.command("uninstall")
@repo_option
def hooks_uninstall_cmd(repo):
    """Remove the hooks, putting back any they had chained."""
    from taskmeter.automation import git

    removed = git.uninstall(repo.resolve())
    terminal.info(f"removed {', '.join(Path(path).name for path in removed)}" if removed else "no taskmeter hooks here")


@hooks_group.command("status")
@repo_option
def hooks_status_cmd(repo):
    """Whether the hooks are installed, and where their background work logs."""
    from taskmeter.automation import git

    folder = git.hooks_dir(repo.resolve())
    terminal.info(f"{'installed' if git.installed(repo.resolve()) else 'not installed'} in {folder}; log: {git.hooks_log()}")
