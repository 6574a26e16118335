"""Terminal and JSON rendering for the CLI; no domain logic lives here."""

import json
import sys
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table

MISSING = "—"

# Piped output gets room for a whole table row instead of rich's 80-column guess.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, default=str, ensure_ascii=False)
    sys.stdout.write("\n")


def number(value: int | float | None) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def text(value) -> str:
    return MISSING if value is None else str(value)


def table(columns: Sequence[str], rows: Iterable[Sequence], title: str | None = None) -> None:
    grid = Table(title=title, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        numeric = column.lower() in {"tokens", "in", "out", "cache r", "cache w", "reason", "calls", "iter", "flags", "cost"}
        grid.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        grid.add_row(*(text(cell) for cell in row))
    console.print(grid)


def fields(pairs: Iterable[tuple[str, object]]) -> None:
    """Aligned `NAME: value` lines, as in the seed's execution log."""
    pairs = list(pairs)
    width = max((len(name) for name, _ in pairs), default=0) + 1
    for name, value in pairs:
        console.print(f"{name + ':':<{width}} {text(value)}", markup=False)


def info(message: str) -> None:
    console.print(message, markup=False)


def warn(message: str) -> None:
    """Something the user must not miss, in a listing that goes on."""
    console.print(message, style="bold yellow", markup=False)


def error(message: str) -> None:
    err_console.print(f"meter: error: {message}", markup=False)
