"""meter reconcile: the agents' own logs against what the meter stored
(taskmeter/reconcile/, docs/reconcile.md)."""

import os
from pathlib import Path

import click

from taskmeter import terminal
from taskmeter.cli.common import MOMENT, cli, db_option, json_option, open_db, utc_option
from taskmeter.terminal import Column

AGENT_NAMES = ("claude", "codex", "gemini")


@cli.command("reconcile")
@click.option("--since", type=MOMENT, help="Only turns from this time on: today, 6h, 7d, 2026-11-20, ISO 8601.")
@click.option(
    "--agent", "agents", type=click.Choice(AGENT_NAMES), multiple=True, help="Only this agent's log (repeatable; default: all)."
)
@click.option("--import", "do_import", is_flag=True, help="Store the missed turns as calls (usage source agent-log).")
@json_option
@utc_option
@db_option
def reconcile_cmd(
    since: str | None, agents: tuple[str, ...], do_import: bool, as_json: bool, utc: bool, db_path: str | None
) -> None:
    """The agents' own logs against the meter: turns it saw, turns it missed, calls the logs lack.

    \b
    Reads Claude Code (~/.claude/projects, ~/.config/claude/projects, $CLAUDE_CONFIG_DIR),
    Codex ($CODEX_HOME or ~/.codex: sessions/, archived_sessions/) and Gemini CLI
    (~/.gemini/tmp/*/chats). --import stores each missed turn once, in the task that was
    current at its time, else its branch's task, else unassigned; a second run adds nothing.
    """
    from taskmeter.config import load_settings
    from taskmeter.reconcile.importing import import_missed
    from taskmeter.reconcile.pairing import read_logs, reconcile
    from taskmeter.reconcile.summary import summary
    from taskmeter.store.connection import write_transaction

    warnings: list[str] = []

    def warn(message: str) -> None:
        if message not in warnings:
            warnings.append(message)
            terminal.problem(message)

    pattern = load_settings().automation.branch_pattern
    imported = None
    # Only --import writes: without it, no database is made where there is none.
    with open_db(db_path, create=do_import) as db:
        logs = read_logs(list(agents or AGENT_NAMES), os.environ, Path.home(), since, warn)
        if do_import:
            # Pairing and storing in one write transaction: no call lands in between.
            with write_transaction(db):
                imported = import_missed(db, reconcile(db, logs, since, pattern))
        report = summary(reconcile(db, logs, since, pattern))
    if as_json:
        terminal.print_json({"since": since, "agents": report, "imported": imported, "warnings": warnings})
        return
    _print(report, imported, utc)


def _money(tally: dict) -> str:
    return terminal.money(tally["cost_usd"]) + (f" (+{tally['unpriced']} unpriced)" if tally["unpriced"] else "")


def _print(report: list[dict], imported: int | None, utc: bool) -> None:
    for agent in report:
        if not agent["turns"] and not agent["meter_only"]["count"]:
            terminal.info(f"{agent['title']}: no turns in {agent['log_files']} log files")
            continue
        missed = agent["missed"]
        terminal.info(
            f"{agent['title']}: {agent['turns']} turns in {agent['log_files']} log files: {agent['seen']['count']} seen,"
            f" {missed['count']} missed ({terminal.number(missed['tokens']['total'] or 0)} tokens, {_money(missed)}),"
            f" {agent['imported']['count']} imported; {agent['meter_only']['count']} calls the log does not have"
        )
        terminal.table(
            [
                Column("Task", "id"),
                Column("Seen", "count"),
                Column("Missed", "count"),
                Column("Missed tokens", "count"),
                Column("Missed cost", "money", drop=2),
                Column("Imported", "count", drop=1),
                Column("Meter only", "count", drop=3),
            ],
            [
                [
                    task["task_id"] or "unassigned",
                    task["seen"]["count"],
                    task["missed"]["count"],
                    task["missed"]["tokens"]["total"] or 0,
                    task["missed"]["cost_usd"],
                    task["imported"]["count"],
                    task["meter_only"]["count"],
                ]
                for task in agent["tasks"]
            ],
            utc=utc,
        )
        if agent["missed_turns"]:
            terminal.table(
                [
                    Column("Missed at", "time"),
                    Column("Session", "text", shrink=True, drop=3),
                    Column("Model", "text", shrink=True, drop=2),
                    Column("Tokens", "count"),
                    Column("Cost", "money", drop=1),
                    Column("Would go to", "id"),
                ],
                [
                    [
                        turn["at"],
                        turn["session"],
                        turn["model"],
                        turn["tokens"]["total"],
                        turn["cost_usd"],
                        turn["task_id"] or "unassigned",
                    ]
                    for turn in agent["missed_turns"]
                ],
                utc=utc,
            )
    if imported is not None:
        terminal.info(f"Imported {imported} missed turns as calls (usage source agent-log).")
    elif any(agent["missed"]["count"] for agent in report):
        terminal.note("`meter reconcile --import` stores the missed turns as calls, once.")
