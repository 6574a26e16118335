"""Terminal and pipe output for the CLI; no domain logic lives here.

A table is for a person in a terminal: it fits the terminal's width (columns
shortened or dropped, never an ID or a time wrapped), with short local times.
Piped, the same table is plain tab-separated text with a header line and
unabbreviated values (ISO times, plain numbers), for cut, awk and sort.

Every text printed here goes through `printable` first: a model's name or
reply may carry terminal escapes. JSON keeps the exact value, escaped.

Only a table's header and a warning are styled (bold, bold yellow), and only on a
terminal: plain SGR codes, not a library, so that no command pays for one at start-up.
"""

import os
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import NamedTuple, TextIO

from taskmeter.money import usd
from taskmeter.printable import clip, printable
from taskmeter.timefmt import display, from_stored

MISSING = "—"
# A shortened text column keeps at least this many characters, ellipsis included.
_SHORTEST_TEXT = 8
_COMFORTABLE_TEXT = 16
_GAP = 2

BOLD, WARNING = "1", "1;33"  # SGR parameters


def _styles(stream: TextIO) -> bool:
    """Whether `stream` is a terminal that takes styles (https://no-color.org: NO_COLOR keeps bold, drops colour)."""
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def width_of(stream: TextIO) -> int | None:
    """The columns of the terminal `stream` writes to, asked each time (a window can be
    resized); None when it is no terminal (a pipe, a file), whose lines stay whole for grep and awk.
    As the tables' shutil.get_terminal_size: COLUMNS first, and 80 for a terminal that
    reports no size (a pseudo-terminal nobody sized says 0 columns)."""
    try:
        if not stream.isatty():
            return None
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):  # closed, or no file descriptor
        return None
    chosen = os.environ.get("COLUMNS", "")
    return int(chosen) if chosen.isdigit() and int(chosen) > 0 else columns or 80


_FIELD_GAP = re.compile(r"(?<! )  (?! )")  # exactly two spaces: between a line's fields


def wrap(text: str, width: int | None, indent: int | None = None) -> str:
    """Each line of `text` in lines of at most `width` columns, broken between the
    fields it separates with two spaces where they fit, else between words, never
    inside a word (a word too long for an indented line gives up its indent; one
    longer than a whole line keeps a line of its own: a path, an ID).
    Continuation lines are indented by `indent` (default: the line's own indent plus
    two). None: `text` as it is."""
    if width is None:
        return text
    return "\n".join(_wrap_line(line, width, indent) for line in text.split("\n"))


def _wrap_line(line: str, width: int, indent: int | None) -> str:
    if len(line) <= width:
        return line
    own = len(line) - len(line.lstrip(" "))
    hanging = " " * min(own + 2 if indent is None else indent, width // 2)
    lines: list[str] = []
    current, filled = line[:own], False
    for field in _FIELD_GAP.split(line[own:]):
        gap = "  " if filled else ""
        if len(current + gap + field) <= width:
            current, filled = current + gap + field, True
            continue
        # The field whole on a line of its own if it fits one; else its words, from where the line is.
        if filled and (len(hanging + field) <= width or len(current + gap + field.split(" ", 1)[0]) > width):
            lines.append(current.rstrip())
            current, gap = hanging, ""
        import textwrap  # only a line too long for the terminal: a command that wraps none starts without it

        pieces = textwrap.wrap(
            field,
            width,
            initial_indent=current + gap,
            subsequent_indent=hanging,
            break_long_words=False,
            break_on_hyphens=False,
        ) or [current]  # a field of spaces only
        lines += pieces[:-1]
        current, filled = pieces[-1], True
    lines.append(current.rstrip())
    # A word too long for its indented line gives up as much of the indent as it must.
    return "\n".join(
        line[min(len(line) - width, len(line) - len(line.lstrip(" "))) :] if len(line) > width else line for line in lines
    )


def fit(text: str, stream: TextIO, indent: int | None = None) -> str:
    """`text` wrapped for the terminal `stream` writes to (see `wrap`); as it is when piped."""
    return wrap(text, width_of(stream), indent)


def _line(stream: TextIO, text: str, style: str = "", indent: int | None = None) -> None:
    """One line, wrapped to the terminal's width and styled on a terminal; flushed,
    so that stdout and stderr keep their order."""
    text = fit(text, stream, indent)
    if style and _styles(stream):
        style = BOLD if os.environ.get("NO_COLOR") else style
        text = f"\x1b[{style}m{text}\x1b[0m"
    stream.write(text + "\n")
    stream.flush()


class Column(NamedTuple):
    """One column: what kind of value it holds decides how it is written.

    kind: text, id, time, count, money, or figure (a number already formatted).
    drop: when the terminal is too narrow, columns go in decreasing `drop`
    order; 0 is never dropped. shrink: text that may be cut with an ellipsis.
    """

    header: str
    kind: str = "text"
    drop: int = 0
    shrink: bool = False

    @property
    def numeric(self) -> bool:
        return self.kind in ("count", "money", "figure")


def to_pipe() -> bool:
    return not sys.stdout.isatty()


# JSON escapes C0 controls itself; with ensure_ascii=False it leaves C1 ones (and DEL) raw, which
# some terminals obey. They only occur inside strings, where an escape is the same value.
_RAW_IN_JSON = re.compile(r"[\x7f-\x9f]")


def print_json(value) -> None:
    import json  # here: a table needs none of it

    text = json.dumps(value, indent=2, default=str, ensure_ascii=False)
    sys.stdout.write(_RAW_IN_JSON.sub(lambda match: f"\\u{ord(match[0]):04x}", text) + "\n")


def number(value: int | float | None) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def money(value: float | None) -> str:
    if value is None:
        return MISSING
    return usd(value)


def moment(stored: str | None, utc: bool = False, short: bool = True, today: datetime | None = None) -> str:
    """A stored timestamp as a person reads it: local time (UTC with `utc`), and
    in a table only what differs from now: 14:02:11, 11-23 14:02 or 2025-11-23."""
    if stored is None:
        return MISSING
    if not short:
        return display(stored, utc)
    when = from_stored(stored)
    when = when if utc else when.astimezone()
    zone = "Z" if utc else ""
    today = today or (datetime.now(UTC) if utc else datetime.now().astimezone())
    if when.date() == today.date():
        return when.strftime("%H:%M:%S") + zone
    if when.year == today.year:
        return when.strftime("%m-%d %H:%M") + zone
    return when.strftime("%Y-%m-%d")


def _cell(column: Column, value, utc: bool, piped: bool) -> str:
    if piped:
        if value is None:
            return ""
        if type(value) is int and column.kind not in ("time", "money"):  # a count: most cells, written as they are
            return str(value)
        if column.kind == "time":
            return moment(value, utc, short=False)
        if column.kind == "money":
            return f"{value:.6f}"
        return printable(" ".join(str(value).split()))  # no tab or newline may break a row
    if column.kind == "time":
        return moment(value, utc)
    if column.kind == "count":
        return number(value)
    if column.kind == "money":
        return money(value)
    return MISSING if value is None else printable(" ".join(str(value).split()))


def _fit(columns: list[Column], cells: list[list[str]], width: int) -> tuple[list[int], list[int]]:
    """Which columns to show and how wide, so that a row fits `width`."""
    shown = list(range(len(columns)))
    widths = [max([len(columns[i].header), *(len(row[i]) for row in cells)]) for i in shown]

    def total() -> int:
        return sum(widths[i] for i in shown) + _GAP * (len(shown) - 1)

    def shrink(floor: int) -> None:
        for i in sorted(shown, key=lambda i: -widths[i]):
            if columns[i].shrink and total() > width:
                widths[i] = max(floor, len(columns[i].header), widths[i] - (total() - width))

    shrink(_COMFORTABLE_TEXT)
    for i in sorted((i for i in shown if columns[i].drop), key=lambda i: -columns[i].drop):
        if total() <= width:
            break
        shown.remove(i)
    shrink(_SHORTEST_TEXT)
    return shown, widths


def _piped_cells(column: Column, values: Sequence, utc: bool) -> list[str]:
    """A column's cells as `_cell` writes them piped, column by column: a count as it is and a cost
    to the micro-dollar without a call each, a text (a period, a model: the same, row after row)
    worked out once. Thousands of rows cost a third of a call per cell."""
    if column.kind == "money":
        return [f"{value:.6f}" if type(value) is float else _cell(column, value, utc, True) for value in values]
    counts = column.kind != "time"
    texts: dict[str, str] = {}
    cells = []
    for value in values:
        if type(value) is int and counts:
            cells.append(str(value))
        elif type(value) is str:
            text = texts.get(value)
            if text is None:
                text = texts[value] = _cell(column, value, utc, True)
            cells.append(text)
        else:
            cells.append(_cell(column, value, utc, True))
    return cells


def table(columns: Sequence[Column], rows: Iterable[Sequence], utc: bool = False) -> None:
    columns, rows = list(columns), list(rows)
    piped = to_pipe()
    if piped:
        sys.stdout.write("\t".join(column.header for column in columns) + "\n")
        values = zip(*rows, strict=True) if rows else ([] for _ in columns)
        by_column = [_piped_cells(column, cells, utc) for column, cells in zip(columns, values, strict=True)]
        sys.stdout.writelines("\t".join(row) + "\n" for row in zip(*by_column, strict=True))
        return
    cells = [[_cell(column, value, utc, piped) for column, value in zip(columns, row, strict=True)] for row in rows]
    import shutil  # only a table: with the compression modules it loads, milliseconds for the other commands

    shown, widths = _fit(columns, cells, shutil.get_terminal_size().columns)

    def line(values: list[str]) -> str:
        parts = []
        for i in shown:
            text = clip(values[i], widths[i])
            parts.append(text.rjust(widths[i]) if columns[i].numeric else text.ljust(widths[i]))
        return (" " * _GAP).join(parts).rstrip()

    _line(sys.stdout, line([column.header for column in columns]), BOLD)
    sys.stdout.writelines(line(row) + "\n" for row in cells)
    sys.stdout.flush()


def fields(pairs: Iterable[tuple[str, object]]) -> None:
    """Aligned `NAME: value` lines, as in the seed's execution log."""
    pairs = list(pairs)
    width = max((len(name) for name, _ in pairs), default=0) + 1
    for name, value in pairs:
        text = MISSING if value is None else printable(str(value))
        _line(sys.stdout, f"{name + ':':<{width}} {text}", indent=width + 1)  # a long value wraps under itself


def text(block: str) -> None:
    """A report's text or Markdown, as it is (it ends with its own newline)."""
    sys.stdout.write(printable(block))


def info(message: str, indent: int | None = None) -> None:
    """A line of output; on a terminal, wrapped with `indent` (see `wrap`)."""
    _line(sys.stdout, printable(message), indent=indent)


def note(message: str) -> None:
    """A remark under a table: on stderr when piped, so the table stays plain data."""
    _line(sys.stderr if to_pipe() else sys.stdout, printable(message))


def comment(message: str) -> None:
    """A line on stderr beside output that a shell evaluates (`meter env`)."""
    _line(sys.stderr, printable(message))


def warn(message: str) -> None:
    """Something the user must not miss, in a listing that goes on."""
    _line(sys.stdout, printable(message), WARNING)


def problem(message: str) -> None:
    """One line about bad input that the command reads past: on stderr, so output stays data."""
    _line(sys.stderr, f"meter: warning: {printable(message)}")


def error(message: str) -> None:
    _line(sys.stderr, f"meter: error: {printable(message)}")
