"""`meter statusline`: the click side, for --help and `meter --help`. A plain
`meter statusline [--db PATH]` never gets here (see taskmeter.statusline.fast_path)."""

import click

from taskmeter.cli.common import cli, db_option


@cli.command("statusline")
@click.option(
    "--chain",
    metavar="COMMAND",
    help="Then the line of COMMAND, given the same stdin; it gets 1 s (set by `meter claude install`).",
)
@db_option
def statusline_cmd(chain, db_path):
    """One short line for shell prompts and Claude Code's statusLine: task, working time
    against estimate, tokens, cost, flags, and NOT METERED when calls are not metered.

    \b
    Reads Claude Code's status JSON from stdin when one is piped: then NOT METERED
    means no call of that Claude Code session has been recorded.
      PS1='$(meter statusline) \\$ '
      ~/.claude/settings.json: {"statusLine": {"type": "command", "command": "meter statusline"}}
    """
    from taskmeter.statusline import print_status

    print_status(db_path, chain)
