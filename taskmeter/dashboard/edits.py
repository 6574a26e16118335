"""What a person records from the task and phase pages: the fields of `meter task`
and `meter phase` (store/tasks.py TASK_FIELDS, PHASE_FIELDS, read by tasks.parse_input),
the budget (as `--budget` and `--on-exceeded`: cli/budgets.apply_budget) and the
milestones (`meter mark`, `meter phase --mark`). Each edit is one transaction:
everything asked, or, when anything is wrong, nothing."""

import re
import sqlite3

from taskmeter.cli.budgets import apply_budget
from taskmeter.errors import MeterError
from taskmeter.store import budgets, tasks
from taskmeter.store.connection import write_transaction
from taskmeter.timefmt import format_duration, parse_user_timestamp

SCOPES = {"task": tasks.TASK_FIELDS, "phase": tasks.PHASE_FIELDS}
ON_EXCEEDED = ("warn", "block")
# Budget amounts apart: `2M $5`, `2M, $5`, `500k and 5 USD`.
_AMOUNTS_APART = re.compile(r"\s*,\s*|\s+and\s+|\s+(?=[$\d])")


def shown(field: tasks.Field, value) -> str:
    """A stored value as its form's box shows it, in a form that box reads back (tasks.parse_input)."""
    if value is None:
        return ""
    if field.kind == "duration":
        return format_duration(value).replace(" ", "")
    if field.kind == "percent":
        return f"{value:g}"
    if field.kind == "yes-no":
        return "yes" if value else "no"
    return str(value)


def budget_shown(budget) -> str:
    """A stored budget's caps as its box shows them, in the words `--budget` takes."""
    if budget is None:
        return ""
    return " ".join(([str(budget["tokens"])] if budget["tokens"] else []) + ([f"${budget['usd']:g}"] if budget["usd"] else []))


def _was(fields: dict[str, str], name: str, now_shown: str) -> str:
    """What the box `name` showed when the page was made (its `was:` twin): a box left
    as it was is not written, even when the CLI changed that field meanwhile."""
    return fields.get(f"was:{name}", now_shown).strip()


def _changed_inputs(fields: dict[str, str], table: tuple[tasks.Field, ...], stored: sqlite3.Row) -> dict:
    """The columns whose box the person changed: a box left as shown is not written
    again (a duration shown to the minute would lose its seconds); an emptied box clears."""
    values = {}
    for field in table:
        text = fields.get(field.option)
        if text is None or text.strip() == _was(fields, field.option, shown(field, stored[field.column])):
            continue
        values[field.column] = tasks.parse_input(field, text.strip()) if text.strip() else None
    return values


def _budget_change(db: sqlite3.Connection, scope: str, target: str, fields: dict[str, str]) -> tuple[tuple, str | None, bool]:
    """apply_budget's amounts, mode and removal for what the person changed in the budget boxes."""
    before = budgets.own_budget(db, scope, target)
    amounts_before, mode_before = budget_shown(before), (before["on_exceeded"] if before else None) or ""
    text = fields.get("budget", amounts_before).strip()
    mode = fields.get("on_exceeded", mode_before)
    if mode not in ("", *ON_EXCEEDED):
        raise MeterError(f"what happens when the budget is spent must be warn or block, not {mode[:24]!r}")
    amounts_changed = text != _was(fields, "budget", amounts_before)
    mode_changed = mode != _was(fields, "on_exceeded", mode_before)
    if amounts_changed and not text:
        return (), None, before is not None  # emptied: the budget goes, and its mode with it
    amounts = tuple(budgets.parse_amount(part) for part in _AMOUNTS_APART.split(text)) if amounts_changed else ()
    if mode_changed and mode and not amounts and before is None:
        raise MeterError("give the budget an amount (2M, $5) before what happens when it is spent")
    return amounts, (mode or None) if mode_changed else None, False


def edit(db: sqlite3.Connection, scope: str, target: str, fields: dict[str, str]) -> None:
    """Set what the form of the `scope` ("task" or "phase") `target` changed, in one transaction."""
    stored = tasks.get_task(db, target) if scope == "task" else tasks.get_phase(db, target)
    values = _changed_inputs(fields, SCOPES[scope], stored)
    with write_transaction(db):
        amounts, mode, remove = _budget_change(db, scope, stored["id"], fields)
        apply_budget(db, scope, stored["id"], amounts, mode, False, remove)
        if values and scope == "task":
            tasks.update_task(db, stored["id"], values)
        elif values:
            tasks.update_phase(db, stored["id"], values)


def mark(db: sqlite3.Connection, scope: str, target: str, fields: dict[str, str]) -> None:
    """Record a milestone, now or at the time given (ISO 8601 with its zone), as `meter mark` does."""
    milestones = tasks.MILESTONES if scope == "task" else tasks.PHASE_MILESTONES
    milestone = fields.get("milestone", "")
    if milestone not in milestones or (scope == "task" and milestone == "begin"):
        raise MeterError(f"choose the milestone to mark, not {milestone[:24]!r}")
    at = parse_user_timestamp(fields["at"].strip()) if fields.get("at", "").strip() else None
    force = fields.get("force") == "yes"
    if scope == "task":
        tasks.mark(db, tasks.get_task(db, target)["id"], milestone, at=at, force=force)
    else:
        tasks.mark_phase(db, target, milestone, at=at, force=force)
