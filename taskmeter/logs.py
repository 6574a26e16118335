"""Log lines of the proxy and its recorder go to stderr with the time."""

import logging
import sys


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    meter_log = logging.getLogger("taskmeter")
    meter_log.addHandler(handler)
    meter_log.setLevel(logging.INFO)
    meter_log.propagate = False
    logging.getLogger("mitmproxy").setLevel(logging.ERROR)
