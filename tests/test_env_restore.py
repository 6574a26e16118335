"""Issue 24, the shell: `eval "$(meter env --unset)"` puts back exactly what
`meter env` replaced (a corporate HTTPS_PROXY, NO_PROXY, CA bundle, the user's
PYTEST_PLUGINS) and touches nothing else, in dash, bash, zsh and fish, with
values that need quoting and `meter env` run more than once; `meter env` says on
one line of stderr when no meter answers. Each output is really evaluated by
the shell, against a real `meter proxy` on loopback."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from taskmeter.proxy.environment import render
from tests.fake_upstream import SHUTDOWN_POLL_SECONDS
from tests.proxy_harness import VENV_BIN, RunningProxy, write_config

pytestmark = pytest.mark.e2e  # real shells running real `meter env`

SHELLS = ("dash", "bash", "zsh", "fish")  # scripts/ensure-shells installs zsh and fish
# A corporate shell: values with spaces, both quotes, a dollar and a backslash.
CORPORATE = {
    "HTTPS_PROXY": "http://j.doe:pa ss'w\"o$rd\\x@proxy.corp.example:3128",
    "https_proxy": "http://proxy.corp.example:3128",
    "NO_PROXY": ".corp.example,10.0.0.0/8",
    "SSL_CERT_FILE": "/etc/corp certs/ca $bundle.pem",
    "PYTEST_PLUGINS": "pytest_cov,corp_plugin",
}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("env")
    config = write_config(folder / "config.toml", folder / "ca", {"openai": "http://127.0.0.1:9"})
    running = RunningProxy(config, folder / "meter.db")
    yield running
    running.stop()


def _clean_environment(home: Path, **variables: str) -> dict[str, str]:
    """A login-like environment: nothing of the test runner's but PATH."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", **variables}


def _script(shell: str, meter: str, steps: list[str], dumps: Path) -> list[str]:
    """The command line that runs each `meter env` step in `shell`, evaluating its
    output, and writes the environment to dumps/N.json before, between and after."""
    dump = f"{sys.executable} -c 'import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], \"w\"))'"
    if shell == "fish":
        lines = [f"function m; {meter} --shell fish $argv; end"]
        evaluate = "m {} | source"
    else:
        lines = [f'm() {{ {meter} "$@"; }}']
        evaluate = 'eval "$(m {})"'
    lines.append(f"{dump} {dumps / '0.json'}")
    for number, step in enumerate(steps, 1):
        lines.append(evaluate.format(step))
        lines.append(f"{dump} {dumps / f'{number}.json'}")
    lines.append("true")  # the last dump is no `exec` of the shell (bash's lowers SHLVL)
    return [shutil.which(shell) or shell, "-c", "\n".join(lines)]


def _run(shell: str, proxy: RunningProxy, tmp_path: Path, environment: dict, steps: list[str]) -> tuple[list[dict], str]:
    """The environment before and after each step, and what the shell wrote to stderr."""
    assert shutil.which(shell), f"{shell} is missing: `make test` installs it (scripts/ensure-shells)"
    dumps = tmp_path / shell
    dumps.mkdir()
    meter = f"{VENV_BIN / 'meter'} env --config {proxy.config} --db {proxy.db_path}"
    done = subprocess.run(
        _script(shell, meter, steps, dumps), env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # `_` is each shell's last argument, not part of what `meter env` may change.
    states = [json.loads((dumps / f"{n}.json").read_text()) for n in range(len(steps) + 1)]
    return [{name: value for name, value in state.items() if name != "_"} for state in states], done.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_unset_puts_back_the_corporate_shell_exactly(shell, proxy, tmp_path):
    before = _clean_environment(tmp_path, **CORPORATE)
    steps = ["", "--https-proxy --task P1-001", "--https-proxy", "--unset"]
    states, stderr = _run(shell, proxy, tmp_path, before, steps)
    initial, plain, tasked, proxied, after = states
    bundle = str(proxy.config.parent / "ca" / "ca-bundle.pem")

    assert plain["OPENAI_BASE_URL"] == f"{proxy.origin}/openai/v1"
    assert plain["HTTPS_PROXY"] == CORPORATE["HTTPS_PROXY"]  # without --https-proxy, left alone
    assert tasked["OPENAI_BASE_URL"] == f"{proxy.origin}/t/P1-001/openai/v1"
    assert tasked["HTTPS_PROXY"] == proxy.origin.replace("http://", "http://task:P1-001@")
    assert proxied["HTTPS_PROXY"] == proxied["https_proxy"] == proxy.origin
    # The intranet stays direct; gateway calls too.
    assert proxied["NO_PROXY"] == proxied["no_proxy"] == ".corp.example,10.0.0.0/8,127.0.0.1,localhost,::1"
    assert proxied["SSL_CERT_FILE"] == bundle
    assert proxied["PYTEST_PLUGINS"] == CORPORATE["PYTEST_PLUGINS"]
    # Run three times: what is kept is what the shell had before the first, never the meter's own value.
    assert proxied["METER_SAVED_HTTPS_PROXY"] == CORPORATE["HTTPS_PROXY"]
    assert proxied["METER_SAVED_SSL_CERT_FILE"] == CORPORATE["SSL_CERT_FILE"]

    assert after == initial
    assert initial["HTTPS_PROXY"] == CORPORATE["HTTPS_PROXY"]  # the shell really held the value with quotes
    assert "meter" not in stderr  # a meter answers: no warning


@pytest.mark.parametrize("shell", ["dash", "fish"])
def test_unset_of_a_shell_without_records_removes_only_the_meters_values(shell, proxy, tmp_path):
    # What a `meter env --https-proxy --task P1-002` from before records were kept left in a shell,
    # and the pytest plugin it once added to the user's own.
    old = {
        "OPENAI_BASE_URL": f"{proxy.origin}/t/P1-002/openai/v1",
        "HTTPS_PROXY": proxy.origin.replace("http://", "http://task:P1-002@"),
        "PYTEST_PLUGINS": "corp_plugin,taskmeter_pytest",
        "TASKMETER_PYTHON": "/gone/python",
    }
    mine = {"NO_PROXY": "127.0.0.1,localhost,::1", "ANTHROPIC_BASE_URL": "https://llm.corp.example/anthropic"}
    before = _clean_environment(tmp_path, **old, **mine)
    (initial, after), _ = _run(shell, proxy, tmp_path, before, ["--unset"])
    removed = {"OPENAI_BASE_URL", "HTTPS_PROXY", "TASKMETER_PYTHON"}
    assert {name: value for name, value in initial.items() if name not in removed} | {"PYTEST_PLUGINS": "corp_plugin"} == after


def test_env_warns_once_on_stderr_when_no_meter_answers(tmp_path):
    # A port where another web server answers, and a port nobody listens on.
    other = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)  # answers 501 to anything
    threading.Thread(target=other.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS}, daemon=True).start()
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        for port in (other.server_address[1], closed_port):
            config = tmp_path / f"config-{port}.toml"
            config.write_text(f'[proxy]\nport = {port}\nconfdir = "{tmp_path / "ca"}"\n')
            done = subprocess.run(
                [str(VENV_BIN / "meter"), "env", "--config", str(config), "--db", str(tmp_path / "meter.db")],
                env=_clean_environment(tmp_path),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0
            assert f"export OPENAI_BASE_URL=http://127.0.0.1:{port}/openai/v1" in done.stdout
            [warning] = done.stderr.splitlines()
            assert f"no meter proxy answers on 127.0.0.1:{port}" in warning
            assert "`meter start`" in warning and "`meter service install`" in warning
    finally:
        other.shutdown()
        other.server_close()


def test_powershell_and_fish_quote_what_their_own_rules_need():
    value = 'it\'s ‘x’ $y \\ "z"'
    assert render({"A": value}, "powershell") == "$env:A = 'it''s ‘‘x’’ $y \\ \"z\"'"
    assert render({"A": value}, "fish") == "set -gx A 'it\\'s ‘x’ $y \\\\ \"z\"';"
    assert render({"A": None, "B": "1"}, "powershell") == "$env:B = '1'\nRemove-Item Env:A -ErrorAction SilentlyContinue"
