"""A real PostgreSQL server for the team store's tests: Debian's postgresql
(scripts/ensure-postgresql installs it), `initdb` run as the `postgres` user in
a temporary folder, listening on a free loopback port, stopped by its PID.

`pg_server` is session-scoped; each test makes a database of its own
(`team_database`), and its roles carry the test's own suffix, since roles
belong to the whole server."""

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

START_SECONDS = 60
# The tests' cluster is thrown away: no commit waits for the WAL, no page is written twice.
THROWAWAY = {"synchronous_commit": "off", "full_page_writes": "off"}


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run scripts/ensure-postgresql (make test does)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One server: `admin_url` is its superuser's (password in `passfile`), `stop()` and `start()` it at will."""

    def __init__(self, folder: Path | None = None, settings: dict[str, str] | None = None) -> None:
        """A new server in a temporary folder; or, with `folder`, the one kept there (made there
        the first time, kept by `close()`: the bench's cached stores). `settings`: more `-c` options."""
        self.bin = _binaries()
        self.account = pwd.getpwnam("postgres")
        self.kept = folder is not None
        self.folder = folder or Path(tempfile.mkdtemp(prefix="taskmeter-pg-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chown(self.folder, self.account.pw_uid, self.account.pw_gid)
        self.data = self.folder / "data"
        self.settings = settings or {}
        self.passfile = self.folder / "pgpass"  # the tests' own, root's: the server never reads it
        saved = self.folder / "admin-password"
        if (self.data / "PG_VERSION").exists() and saved.exists():
            self.password = saved.read_text().strip()
        else:
            self.password = secrets.token_urlsafe(12)
            password_input = self.folder / "initdb-password"
            password_input.write_text(self.password + "\n")
            os.chown(password_input, self.account.pw_uid, self.account.pw_gid)
            self._as_postgres(
                [self.bin / "initdb", "-D", self.data, "-U", "postgres", f"--pwfile={password_input}", "--auth=scram-sha-256"]
                + ["--encoding=UTF8", "--no-sync"]
            )
            password_input.unlink()
            fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.password + "\n")
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self.passwords = {"postgres": self.password}
        self._write_passfile()
        self.start()

    def _as_postgres(self, command: list) -> None:
        subprocess.run(
            [str(part) for part in command], check=True, capture_output=True, user="postgres", group="postgres", extra_groups=[]
        )

    def start(self) -> None:
        log = open(self.folder / "server.log", "ab")  # a file, never a pipe that fills and stalls the server
        self.process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.folder)]
            + ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"]
            + [part for name, value in self.settings.items() for part in ("-c", f"{name}={value}")],
            stdout=subprocess.DEVNULL,
            stderr=log,
            user="postgres",
            group="postgres",
            extra_groups=[],
        )
        log.close()
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                psycopg.connect(self.admin_url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start: {(self.folder / 'server.log').read_text()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT) of the postmaster, by its PID."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(60)
        self.process = None

    def url(self, role: str = "postgres", database: str = "postgres") -> str:
        return f"postgresql://{quote(role, safe='')}@127.0.0.1:{self.port}/{database}"

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def add_password(self, role: str, password: str) -> None:
        self.passwords[role] = password
        self._write_passfile()

    def _write_passfile(self) -> None:
        def escaped(text: str) -> str:
            return text.replace("\\", "\\\\").replace(":", "\\:")

        lines = [f"127.0.0.1:{self.port}:*:{escaped(role)}:{escaped(word)}" for role, word in self.passwords.items()]
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def close(self) -> None:
        self.stop()
        if not self.kept:
            shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    server = PostgresServer(settings=THROWAWAY)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def team_database(pg_server):
    """A database of this test's own on the session's server, and a suffix for its roles."""
    name = f"team_{uuid.uuid4().hex[:10]}"
    if pg_server.process is None:
        pg_server.start()
    with psycopg.connect(pg_server.admin_url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield name, uuid.uuid4().hex[:6]
