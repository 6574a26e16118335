"""Text from the wire made safe to print on a terminal. Standard library only:
the recorder prints with it too.

A model name, a response, an error or a title may carry control characters:
ESC starts the sequences that clear the screen (`\\x1b[2J`), set the window
title (`\\x1b]0;...\\x07`) or rewrite what is shown; CR and backspace overwrite
it. Every C0 and C1 control character (and DEL) is shown as U+FFFD instead;
newline and tab are kept in texts of several lines (bodies), and are spaces
in a one-line text.

A text shown in a column or a preview is cut to its width (`clip`, `first_line`).
"""

import re

REPLACEMENT = "\ufffd"
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROLS_AND_LAYOUT = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _replace(match: re.Match) -> str:
    return " " if match[0] in "\n\t" else REPLACEMENT


def printable(text: str, one_line: bool = False) -> str:
    """`text` with its control characters replaced; `one_line` also turns newlines and tabs into spaces."""
    if text.isprintable():  # no control character (the patterns' characters are all of category Cc): most text, fast
        return text
    if one_line:
        return _CONTROLS_AND_LAYOUT.sub(_replace, text)
    return _CONTROLS.sub(REPLACEMENT, text)


def clip(text: str, width: int) -> str:
    """`text` cut to `width` characters, the cut marked with an ellipsis."""
    return text if len(text) <= width else text[: width - 1] + "…"


def first_line(text: str | None, width: int = 100) -> str | None:
    line = next((line.strip() for line in (text or "").splitlines() if line.strip()), None)
    return None if line is None else clip(line, width)
