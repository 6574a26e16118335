"""`meter ui`: the dashboard served by uvicorn on 127.0.0.1, announced in the
database for the proxy's banner and `meter status` while it runs."""

import contextlib
import errno
import os
import secrets
import socket
import sys
import threading
import webbrowser
from collections.abc import Iterator
from pathlib import Path

import platformdirs
import uvicorn

from taskmeter import ctrl_c, terminal
from taskmeter.analytics.budgets import Defaults
from taskmeter.dashboard.access import moving_on_page, tokened_url
from taskmeter.dashboard.app import create_app
from taskmeter.errors import MeterError
from taskmeter.private import private_dir, private_file
from taskmeter.store import connection, dashboards

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


class StoppingServer(uvicorn.Server):
    """Sets `stopping` on Ctrl-C, so that open live feeds end by themselves within a poll:
    uvicorn would otherwise cancel them after its grace period, and log each as an error."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig: int, frame) -> None:
        self.stopping.set()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            ctrl_c.release()  # a Ctrl-C held since serve() began lands here, in handle_exit: stopped as later
            yield


def _opener(url: str) -> Path:
    """A page of the user's alone that opens `url`: the browser is given its path, not the
    token, since a command line is there for every user of the machine to read (as Jupyter does)."""
    path = private_dir(platformdirs.user_state_path("taskmeter")) / f"ui-{os.getpid()}-open.html"
    private_file(path).write_text(moving_on_page(url, "Open the taskmeter dashboard"))
    return path


def serve(db_path: Path, port: int, idle_seconds: float, budget_defaults: Defaults, open_browser: bool) -> None:
    sock = _listen(port)
    bound_port = sock.getsockname()[1]
    address = f"http://{HOST}:{bound_port}"
    access_token = secrets.token_urlsafe(32)  # per run, as Jupyter's: other users of the machine reach 127.0.0.1 too
    url = tokened_url(address, access_token)
    opener = None
    db = connection.connect(db_path, create=False)  # migrates an older database before the pages read it; makes none
    try:
        dashboards.register(db, db_path, address, url)
        terminal.info(f"taskmeter dashboard on {url} (reading {db_path}; Ctrl-C stops it)")
        sys.stdout.flush()
        if open_browser:
            opener = _opener(url)
            webbrowser.open(opener.as_uri())
        stopping = threading.Event()
        config = uvicorn.Config(
            create_app(db_path, bound_port, idle_seconds, budget_defaults, access_token, stopping),
            log_level="warning",
            access_log=False,
            # A request still running then (a page's report) is cut short rather than hold Ctrl-C.
            timeout_graceful_shutdown=1,
        )
        with ctrl_c.held_until_running():
            StoppingServer(config, stopping).run(sockets=[sock])
    finally:
        dashboards.unregister(db)
        db.close()
        sock.close()
        if opener:
            opener.unlink(missing_ok=True)
