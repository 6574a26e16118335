"""Log lines of the proxy and its recorder go to stderr with the time."""

import logging
import sys
from typing import TextIO

from taskmeter.printable import printable
from taskmeter.private import private_dir, private_file
from taskmeter.terminal import fit


class _PrintableFormatter(logging.Formatter):
    """Log lines quote errors and names from the wire: no control character reaches the terminal.
    On a terminal, a line fits its width, going on under the message, past the time."""

    def __init__(self, fmt: str, datefmt: str, stream: TextIO | None) -> None:
        super().__init__(fmt, datefmt)
        self._stream = stream

    def format(self, record: logging.LogRecord) -> str:
        text = printable(super().format(record))
        return fit(text, self._stream, indent=len("00:00:00 ")) if self._stream is not None else text


def configure_logging(path=None) -> None:
    """Log lines to stderr, or appended to the file `path`."""
    if path is not None:
        private_dir(path.parent)
        private_file(path)  # FileHandler then appends to it, its mode kept
    handler = logging.StreamHandler(sys.stderr) if path is None else logging.FileHandler(path)
    handler.setFormatter(_PrintableFormatter("%(asctime)s %(message)s", "%H:%M:%S", sys.stderr if path is None else None))
    meter_log = logging.getLogger("taskmeter")
    meter_log.addHandler(handler)
    meter_log.setLevel(logging.INFO)
    meter_log.propagate = False
    logging.getLogger("mitmproxy").setLevel(logging.ERROR)
