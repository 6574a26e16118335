"""Log lines of the proxy and its recorder go to stderr with the time."""

import logging
import sys

from taskmeter.printable import printable
from taskmeter.private import private_dir, private_file


class _PrintableFormatter(logging.Formatter):
    """Log lines quote errors and names from the wire: no control character reaches the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def configure_logging(path=None) -> None:
    """Log lines to stderr, or appended to the file `path`."""
    if path is not None:
        private_dir(path.parent)
        private_file(path)  # FileHandler then appends to it, its mode kept
    handler = logging.StreamHandler(sys.stderr) if path is None else logging.FileHandler(path)
    handler.setFormatter(_PrintableFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
    meter_log = logging.getLogger("taskmeter")
    meter_log.addHandler(handler)
    meter_log.setLevel(logging.INFO)
    meter_log.propagate = False
    logging.getLogger("mitmproxy").setLevel(logging.ERROR)
