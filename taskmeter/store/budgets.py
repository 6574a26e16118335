"""Budgets per task and per phase, in tokens and/or US dollars (docs/budgets.md)."""

import re
import sqlite3

from taskmeter.errors import MeterError
from taskmeter.store import alerts
from taskmeter.store.connection import write_transaction
from taskmeter.timefmt import now_stored

# Patterns as text, compiled by `re` (and cached) when a budget is parsed, not by every command that imports this.
_TOKENS = r"^(\d+(?:\.\d+)?)\s*([kKmMbB]?)(?:\s*tokens?)?$"
_USD = r"^\$\s*(\d+(?:\.\d+)?)$|^(\d+(?:\.\d+)?)\s*(?:usd|USD|\$)$"
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


def parse_amount(text: str) -> tuple[str, int | float]:
    """`2M`, `500k`, `150000` (tokens) or `$5`, `5 USD` (dollars): ("tokens", 2000000) or ("usd", 5.0)."""
    value = text.strip()
    usd = re.match(_USD, value)
    if usd:
        amount = float(usd.group(1) or usd.group(2))
        if amount > 0:
            return "usd", amount
    tokens = re.match(_TOKENS, value)
    if tokens:
        amount = round(float(tokens.group(1)) * _SCALE[tokens.group(2).lower()])
        if amount > 0:
            return "tokens", amount
    raise MeterError(f"cannot read {text!r} as a budget: give tokens (2M, 500k, 150000) or dollars ('$5', '5 USD'), above 0")


def set_budget(
    db: sqlite3.Connection,
    scope: str,
    target: str,
    amounts: list[tuple[str, int | float]],
    on_exceeded: str | None = None,
    also: bool = False,
) -> None:
    """Set the budget of a task or phase to `amounts`: a cap of the same unit is
    replaced, and a cap of the other unit is removed unless `also` keeps it."""
    tokens = next((amount for kind, amount in reversed(amounts) if kind == "tokens"), None)
    usd = next((amount for kind, amount in reversed(amounts) if kind == "usd"), None)
    kept = "coalesce(excluded.{0}, {0})" if also else "excluded.{0}"
    with write_transaction(db):
        db.execute(
            "INSERT INTO budgets (scope, target, tokens, usd, on_exceeded, set_at) VALUES (?, ?, ?, ?, ?, ?)"
            f" ON CONFLICT(scope, target) DO UPDATE SET tokens = {kept.format('tokens')}, usd = {kept.format('usd')},"
            " on_exceeded = coalesce(excluded.on_exceeded, on_exceeded), set_at = excluded.set_at",
            (scope, target, tokens, usd, on_exceeded, now_stored()),
        )
        # A new budget starts its warnings afresh.
        alerts.clear(db, key_prefix=f"budget:{scope}:{target}:")


def own_budget(db: sqlite3.Connection, scope: str, target: str) -> sqlite3.Row | None:
    """The budget set for a task or phase (tokens, usd, on_exceeded), or None."""
    return db.execute("SELECT tokens, usd, on_exceeded FROM budgets WHERE scope = ? AND target = ?", (scope, target)).fetchone()


def caps_text(budget: sqlite3.Row | dict | None) -> str:
    """Every cap of a budget in one phrase: `10,000 tokens and $1.00`."""
    if budget is None:
        return "none"
    caps = []
    if budget["tokens"]:
        caps.append(f"{budget['tokens']:,} tokens")
    if budget["usd"]:
        usd = budget["usd"]
        caps.append(f"${usd:,.2f}" if round(usd, 2) == usd else f"${usd:g}")
    return " and ".join(caps)


def set_mode(db: sqlite3.Connection, scope: str, target: str, on_exceeded: str) -> None:
    with write_transaction(db):
        changed = db.execute(
            "UPDATE budgets SET on_exceeded = ? WHERE scope = ? AND target = ?", (on_exceeded, scope, target)
        ).rowcount
    if not changed:
        raise MeterError(f"{target} has no budget of its own: give one with --budget")


def clear_budget(db: sqlite3.Connection, scope: str, target: str) -> bool:
    with write_transaction(db):
        removed = db.execute("DELETE FROM budgets WHERE scope = ? AND target = ?", (scope, target)).rowcount > 0
        alerts.clear(db, key_prefix=f"budget:{scope}:{target}:")
    return removed
