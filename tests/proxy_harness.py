"""A real `meter proxy` in its own process (a fork of the preloaded meter), on loopback, with a throwaway CA and config."""

import atexit
import ctypes
import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import tomllib
from pathlib import Path

from taskmeter.private import private_dir
from taskmeter.store import connection
from taskmeter.timefmt import now_stored
from tests.meter_forks import METER
from tests.meter_forks import VENV_BIN as VENV_BIN  # where the tests find the venv's scripts
from tests.migrated import migrated_file

_libc = ctypes.CDLL(None, use_errno=True)
_SPLICE_F_NONBLOCK = 2


def unread_input(pid: int) -> bytes:
    """What was written to a process's standard input (a pipe) that it has not
    read yet, copied with tee(2): the process still reads all of it."""
    pipe = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NONBLOCK)
    copy_out, copy_in = os.pipe()
    try:
        os.set_blocking(copy_out, False)
        copied = _libc.tee(pipe, copy_in, 1 << 20, _SPLICE_F_NONBLOCK)
        return os.read(copy_out, copied) if copied > 0 else b""
    finally:
        for fd in (pipe, copy_out, copy_in):
            os.close(fd)


def write_config(path: Path, confdir: Path, upstreams: dict[str, str], **proxy) -> Path:
    lines = ["[proxy]", f'confdir = "{confdir}"']
    lines += [
        f"{key} = {value!r}".replace("'", '"') if isinstance(value, str) else f"{key} = {str(value).lower()}"
        for key, value in proxy.items()
    ]
    lines.append("[upstreams]")
    lines += [f'{name} = "{url}"' for name, url in upstreams.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@functools.cache
def _ca_template() -> Path:
    """A CA made as `meter proxy` makes its own on a first start (by mitmproxy, with its
    settings), once per test process."""
    from mitmproxy import certs, options

    folder = Path(tempfile.mkdtemp(prefix="meter-ca-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    certs.CertStore.create_store(folder, options.CONF_BASENAME, options.KEY_SIZE)
    return folder


def _configured_confdir(config: Path) -> Path | None:
    """The CA folder `config` names (none: the user's, or a config the proxy will refuse)."""
    try:
        confdir = tomllib.loads(config.read_text()).get("proxy", {}).get("confdir")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return Path(confdir) if isinstance(confdir, str) else None


def as_after_a_first_start(config: Path, db_path: Path) -> None:
    """What a proxy's first start on `config` and `db_path` makes and the test has not:
    its CA (an RSA key) and a migrated database, copied from ones made once per test process.
    A later start reads them as it reads its own: making them took 0.1 s of CPU a start.
    A test about making them passes fresh=True to RunningProxy instead."""
    confdir = _configured_confdir(config)
    if confdir is not None and not (confdir.exists() and any(confdir.glob("mitmproxy-*"))):
        for made in _ca_template().iterdir():
            shutil.copy(made, private_dir(confdir))  # mitmproxy's modes: the proxy still makes them private
    left_by_another = [Path(f"{db_path}{suffix}") for suffix in ("", "-wal", "-shm")]
    if db_path.parent.is_dir() and not any(path.exists() for path in left_by_another):
        migrated_file(db_path)


# Set for each test by conftest.py: only tests marked e2e (or browser, bench) start processes.
processes_allowed = True
# The banner's last line: the proxy has done its start-up work (files, database) once it is printed.
BANNER_END = "  dashboard:"


def proxy_in_front_of(tmp_path: Path, upstream_port: int, providers=("openai", "anthropic")) -> "RunningProxy":
    """A meter proxy on a fresh database in `tmp_path`, each of `providers` sent to one loopback fake upstream."""
    origin = f"http://127.0.0.1:{upstream_port}"
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", dict.fromkeys(providers, origin))
    return RunningProxy(config, tmp_path / "meter.db")


def meter(
    proxy: "RunningProxy", *args: str, env: dict[str, str] | None = None, stdin: str = "", check: bool = False
) -> subprocess.CompletedProcess:
    """`meter ARGS` on the proxy's database, in the test's environment (or `env`), reading `stdin`
    (with `check`, it must succeed): a fork of a process that imported the CLI once
    (tests/meter_forks.py), as the script runs it."""
    done = METER.run([*args, "--db", str(proxy.db_path)], env=env, timeout=60, stdin=stdin)
    assert done.returncode == 0 or not check, done.stderr
    return done


def meter_json(proxy: "RunningProxy", *args: str):
    """`meter ARGS --json` on the proxy's database, which must succeed, read."""
    return json.loads(meter(proxy, *args, "--json", check=True).stdout)


def claude_code_turn(proxy: "RunningProxy", prompt: str, session: str) -> None:
    """A turn as Claude Code sends it through the proxy: its User-Agent and its session header."""
    import anthropic

    client = anthropic.Anthropic(
        base_url=f"{proxy.origin}/anthropic",
        api_key="sk-ant-test",
        max_retries=0,
        default_headers={"user-agent": "claude-cli/2.1.197 (external, cli)", "x-claude-code-session-id": session},
    )
    client.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": prompt}])


class RunningProxy:
    # Every proxy a test starts, so that none outlives its test (see conftest.py).
    started: list["RunningProxy"] = []

    def __init__(
        self, config: Path, db_path: Path, extra_env: dict | None = None, extra_args: list[str] = (), fresh: bool = False
    ) -> None:
        """A proxy on `config` and `db_path`; unless `fresh`, as after a first start (as_after_a_first_start)."""
        if not processes_allowed:
            raise AssertionError("this test starts a `meter proxy`: mark it e2e (pytest.mark.e2e), `make check` runs none")
        if not fresh:
            as_after_a_first_start(config, db_path)
        self.config = config
        self.db_path = db_path
        # The test runner's own HTTPS_PROXY is no corporate proxy of the test's; extra_env may name one.
        env = {name: value for name, value in os.environ.items() if name not in ("HTTPS_PROXY", "https_proxy")}
        env.update(extra_env or {})
        # A fork of the preloaded meter (tests/meter_forks.py): a proxy's imports are 0.6 s of CPU.
        self.process = METER.popen(
            ["proxy", "--port", "0", "--config", str(config), "--db", str(db_path), *extra_args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # Read stderr as it comes: a full pipe would block the proxy's logging.
        self._stderr: list[str] = []
        # Where the test of a module sharing this proxy began: see begin_test().
        self._begun_at = ""
        self._earlier_stderr = 0
        self._stderr_reader = threading.Thread(target=lambda: self._stderr.extend(self.process.stderr), daemon=True)
        self._stderr_reader.start()
        RunningProxy.started.append(self)
        line = self.process.stdout.readline()
        if "listening on" not in line:
            self.process.kill()
            self.process.wait()
            time.sleep(0.1)
            raise RuntimeError(f"proxy did not start: {line!r} {self.stderr()}")
        self.address = line.split("listening on ")[1].split(",")[0]
        self.origin = f"http://{self.address}"
        # The live view: (when read, line) for every later line of standard output.
        self.live_view: list[tuple[float, str]] = []
        self._live_view_reader = threading.Thread(target=self._read_live_view, daemon=True)
        self._live_view_reader.start()
        self.wait_for_output(BANNER_END, what="the end of the proxy's banner")

    def wait_for_output(self, text: str, timeout: float = 30, what: str = "") -> str:
        """The first line of standard output after "listening on" that holds `text`,
        once printed (a proxy that exited prints no more: the line, or "")."""
        deadline = time.monotonic() + timeout
        while True:
            line = next((line for _, line in self.live_view if text in line), None)
            if line is not None:
                return line
            if self.process.poll() is not None:
                return ""
            if time.monotonic() > deadline:
                raise AssertionError(f"the proxy never printed {what or repr(text)}: {self.stderr()}")
            time.sleep(0.01)

    def listening(self) -> bool:
        """Whether the proxy's port is open (a listening socket in /proc/net/tcp)."""
        port = int(self.address.rsplit(":", 1)[1])
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as lines:
                next(lines)
                for line in lines:
                    local, state = line.split()[1], line.split()[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                        return True
        return False

    def _read_live_view(self) -> None:
        for line in self.process.stdout:
            self.live_view.append((time.monotonic(), line.rstrip("\n")))

    def stop(self, sig=signal.SIGINT, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr_reader.join(5)  # what the proxy wrote last is in stderr() once this returns
        return self.process.returncode

    def whole_live_view(self, timeout: float = 10) -> list[str]:
        """Every line of standard output after the banner, once the proxy (and its recorder) closed it."""
        self._live_view_reader.join(timeout)
        assert not self._live_view_reader.is_alive(), "the proxy's standard output is still open"
        return [line for _, line in self.live_view]

    def begin_test(self) -> None:
        """A module's tests share this proxy (a start costs a second of CPU): from
        now on rows() and stderr() hold only what the test beginning made, so
        "each call stored once, and nothing else" still means the test's calls. By when
        the calls started, not by what is stored now: an earlier test's call may still be on
        its way to the database (the hand-over gathers calls for up to a second)."""
        self._begun_at = now_stored()
        self._earlier_stderr = len(self._stderr)

    def stderr(self) -> str:
        """What the proxy has written to stderr so far (since begin_test())."""
        return "".join(self._stderr[self._earlier_stderr :])

    def rows(self, wait_for: int = 1, timeout: float = 10) -> list[dict]:
        """Interactions in the database (started since begin_test()) once at least `wait_for` are stored."""
        deadline = time.monotonic() + timeout
        # One connection for the whole wait: opening one parses the schema (its triggers), 3 ms each time.
        db = connection.connect(self.db_path)
        try:
            while True:
                query = "SELECT * FROM interactions WHERE started_at >= ? ORDER BY started_at"
                rows = [dict(r) for r in db.execute(query, (self._begun_at,))]
                if len(rows) >= wait_for or time.monotonic() > deadline:
                    return rows
                time.sleep(0.05)
        finally:
            db.close()
