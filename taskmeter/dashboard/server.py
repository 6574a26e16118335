"""`meter ui`: the dashboard served by uvicorn on 127.0.0.1, announced in the
database for the proxy's banner and `meter status` while it runs."""

import errno
import socket
import sys
import webbrowser
from pathlib import Path

import uvicorn

from taskmeter import terminal
from taskmeter.analytics.budgets import Defaults
from taskmeter.dashboard.app import create_app
from taskmeter.errors import MeterError
from taskmeter.store import dashboards
from taskmeter.store import db as store_db

HOST = "127.0.0.1"  # loopback only: the dashboard can flag and retag


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise MeterError(f"port {port} is in use: give another with `meter ui --port N` (0 picks a free one)") from None
        raise MeterError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from None
    sock.listen(128)
    return sock


def serve(db_path: Path, port: int, idle_seconds: float, budget_defaults: Defaults, open_browser: bool) -> None:
    sock = _listen(port)
    bound_port = sock.getsockname()[1]
    address = f"http://{HOST}:{bound_port}"
    db = store_db.connect(db_path, create=False)  # migrates an older database before the pages read it; makes none
    try:
        dashboards.register(db, address)
        terminal.info(f"taskmeter dashboard on {address}, reading {db_path} (Ctrl-C stops it)")
        sys.stdout.flush()
        if open_browser:
            webbrowser.open(address)
        config = uvicorn.Config(
            create_app(db_path, bound_port, idle_seconds, budget_defaults),
            log_level="warning",
            access_log=False,
            # Open live feeds would otherwise hold Ctrl-C until the browser leaves.
            timeout_graceful_shutdown=1,
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        dashboards.unregister(db)
        db.close()
        sock.close()
