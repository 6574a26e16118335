"""The config file, the database path and shell completion: config path|show|check|init, path, completion."""

import json
import os

import click

from taskmeter import terminal
from taskmeter.cli.common import (
    cli,
    config_option,
    db_option,
    json_option,
)
from taskmeter.errors import MeterError
from taskmeter.private import private_dir, private_file
from taskmeter.store import connection
from taskmeter.terminal import Column


@cli.group("config")
def config_group():
    """Where the settings live, what they are, and whether a file is valid."""


@config_group.command("path")
@config_option
def config_path_cmd(config_path):
    """Print the config file's path (whether or not it exists yet)."""
    from taskmeter.config import files

    path = files.config_path(config_path)
    if path.exists():
        terminal.info(f"{path}")
    elif files.named_config(config_path):
        terminal.info(f"{path}  ({files.missing_config(path)}; until then every other command refuses it)")
    else:
        terminal.info(f"{path}  (does not exist: the shipped defaults apply; `meter config init` writes one)")


@config_group.command("show")
@json_option
@config_option
def config_show_cmd(as_json, config_path):
    """Print every effective setting and where it came from (default or the file)."""
    from taskmeter.config import settings as config_settings

    rows = config_settings.settings_with_sources(config_path)
    if as_json:
        terminal.print_json([{"setting": name, "value": value, "source": source} for name, value, source in rows])
        return
    terminal.table(
        [Column("Setting"), Column("Value", shrink=True), Column("Source", shrink=True)],
        [[name, json.dumps(value), source] for name, value, source in rows],
    )


@config_group.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@config_option
def config_check_cmd(file, config_path):
    """Validate FILE (default: the config file) without starting anything."""
    from taskmeter import telemetry
    from taskmeter.config import files, settings

    path = files.config_path(file or config_path)
    if not path.exists():
        raise files.missing_config(path)
    loaded = settings.load_settings(path)
    # The OTEL_EXPORTER_OTLP_* variables `meter proxy` would read here.
    for note in telemetry.resolve(loaded.otel.endpoint, os.environ).notes:
        terminal.warn(note)
    terminal.info(f"{path}: valid")


@config_group.command("init")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@config_option
def config_init_cmd(force, config_path):
    """Write a commented starter config file with every setting and its default."""
    from taskmeter.config import files

    path = files.config_path(config_path)
    if path.exists() and not force:
        raise MeterError(f"{path} exists; edit it, or use --force to replace it")
    try:
        private_dir(path.parent)
        private_file(path).write_text(files.starter_text())
    except OSError as exc:
        raise MeterError(f"cannot write {path}: {exc.strerror}") from None
    terminal.info(f"wrote {path}")


@cli.command("path")
@db_option
def path_cmd(db_path):
    """Print the database path (for sqlite3 or Datasette)."""
    terminal.info(str(connection.resolve_path(db_path)))


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_cmd(shell):
    """Print the shell code that completes meter's commands, options, task IDs and call IDs.

    \b
      bash: eval "$(meter completion bash)"     (in ~/.bashrc)
      zsh:  eval "$(meter completion zsh)"      (in ~/.zshrc)
      fish: meter completion fish > ~/.config/fish/completions/meter.fish
    """
    from click.shell_completion import get_completion_class

    completion = get_completion_class(shell)(cli, {}, "meter", "_METER_COMPLETE")
    click.echo(completion.source())
