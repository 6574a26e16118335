"""Issue 23, instant commands and one status snapshot. Each command that only reads
loads what it uses and nothing heavy (no rich, pydantic, mitmproxy, tiktoken,
starlette, genai-prices or HTTP library); click finds each command in the module
cli.common.COMMAND_MODULES names; the config is read without pydantic, its
defaults defined once; `meter tasks --json` says what `meter report task ID
--json` says; `meter status --json`, the dashboard's Now page and the status line
show one state, time counted as working time. Through a real `meter proxy`, the
official openai SDK and the loopback fake upstream."""

import ast
import json
import os
import pkgutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from unittest import mock

import openai
import pytest

import taskmeter.cli
from bench.measures import READ_COMMANDS
from taskmeter.analytics.budgets import configured_defaults
from taskmeter.config import files
from taskmeter.config.settings import flat, load_settings
from taskmeter.dashboard.pages import now_page
from taskmeter.statusline import _duration, _tokens
from taskmeter.store import alerts, connection, tasks
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import VENV_BIN, RunningProxy, write_config

pytestmark = pytest.mark.e2e  # real meter commands in subprocesses, and a real proxy

HEAVY = (
    "rich",
    "pydantic",
    "mitmproxy",
    "tiktoken",
    "starlette",
    "genai_prices",
    "httpx",
    "urllib.request",
    "http.client",
    "jinja2",
    "psycopg",
)
# Standard modules that cost milliseconds a command (OpenSSL's hashlib, secrets, subprocess,
# socket, shutil with its compression modules, click's completion, the idna codec's unicodedata, and
# tomllib once a command has cached the settings, decimal through statistics where no forecast draws on
# approved tasks, csv but for CSV): only the commands that use them load them.
COSTLY = (
    *("hashlib", "secrets", "subprocess", "socket", "shutil", "click.shell_completion", "unicodedata", "tomllib"),
    *("decimal", "csv"),
)
# status and env name the pidfile by a hash of the database's path; env asks the proxy's port whether
# a meter answers; doctor asks the network, runs git and the like.
USES_COSTLY = {"status": {"hashlib"}, "env": {"hashlib", "socket"}, "doctor": set(COSTLY)}
# Modules of types alone, for the type checker: no command imports them.
TYPES_ONLY = ("taskmeter.analytics.records",)
CHAT = {f.name: f for f in ALL}["openai/chat_nonstream_cached_tokens"]


@pytest.fixture
def proxy(tmp_path):
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=CHAT.body)
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
        running = RunningProxy(config, tmp_path / "meter.db")
        try:
            yield running, upstream
        finally:
            running.stop()


def _meter(db_path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(VENV_BIN / "meter"), *args, "--db", str(db_path)], capture_output=True, text=True, timeout=60, env=env
    )
    assert not check or result.returncode == 0, result.stderr
    return result


def _ask(proxy, task: str | None = None, n: int = 1) -> None:
    prefix = f"/t/{task}" if task else ""
    client = openai.OpenAI(base_url=f"{proxy.origin}{prefix}/openai/v1", api_key="sk-test", max_retries=0)
    for k in range(n):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"question {k}"}])


def test_each_read_command_loads_nothing_heavy(proxy, tmp_path):
    running, upstream = proxy
    _meter(running.db_path, "set-task", "P5-000", "--estimate", "1h")
    _ask(running, n=2)
    assert len(running.rows(wait_for=2)) == len(upstream.received) == 2  # every call stored once

    def loaded(*arguments: str) -> list[str]:
        return _heavy_loaded(running.db_path, tmp_path, *arguments)

    # With a proxy running, doctor asks its gateway: an HTTP client, but neither mitmproxy nor pydantic.
    assert set(loaded("doctor")) == {"http.client", "urllib.request"}
    running.stop()
    files._cache_file().unlink(missing_ok=True)  # the first command parses the settings and caches them
    assert "tomllib" in _heavy_loaded(running.db_path, tmp_path, "budget", modules=COSTLY)
    for name, arguments in READ_COMMANDS.items():
        found = _heavy_loaded(
            running.db_path,
            tmp_path,
            *(argument.format(phase="P5") for argument in arguments),
            modules=(*HEAVY, *COSTLY, *TYPES_ONLY),
        )
        assert set(found) <= USES_COSTLY.get(name, set()), (name, found)  # output piped: no table to fit to a terminal


def _heavy_loaded(db_path, tmp_path, *arguments: str, modules: tuple[str, ...] = HEAVY, answer: str = "it answered") -> list[str]:
    """Which of `modules` (or their submodules) `meter ARGUMENTS --db DB_PATH` loads, run with no config
    file. Its `answer` is on stdout, else ("meter: error: ...") its error line."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['meter', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('taskmeter', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"heavy = {modules!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy), file=sys.stderr)\n"
    )
    environ = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "no-config")}
    environ.pop("METER_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-c", probe, *arguments, "--db", str(db_path)], capture_output=True, text=True, timeout=60, env=environ
    )
    assert "Traceback" not in done.stderr, (arguments, done.stderr)
    if answer.startswith("meter: error"):
        assert done.stderr.startswith(answer), (arguments, done.stderr)
    else:
        assert "meter: error" not in done.stderr and done.stdout, (arguments, done.stderr)  # it answered
    return ast.literal_eval(done.stderr.strip().splitlines()[-1])  # the list the probe printed


def test_status_and_the_listings_load_only_their_own_modules(proxy, tmp_path):
    """`meter status` counts the spool and quarantine lines without the hand-over's codec
    (dataclasses, logging, the secrets patterns), `log` and `status` without each
    other's modules, and the service's and team store's status without psycopg
    while no team store is joined."""
    running, upstream = proxy
    _meter(running.db_path, "set-task", "P5-000", "--estimate", "1h")
    _ask(running, n=2)
    assert len(running.rows(wait_for=2)) == len(upstream.received) == 2  # every call stored once
    running.stop()
    own = (
        "taskmeter.handover.callfile",
        "taskmeter.secrets",
        "logging",
        "taskmeter.analytics.listings",
        "taskmeter.analytics.records",
        "taskmeter.store.interactions",  # its dataclasses: status reads the last call's start alone
    )
    assert _heavy_loaded(running.db_path, tmp_path, "status", modules=own) == []
    assert _heavy_loaded(running.db_path, tmp_path, "status", "--json", modules=own) == []
    # A usage report's table or JSON needs neither the other formats nor the report types.
    unused = (*HEAVY, "taskmeter.store.interactions", "taskmeter.analytics.formats", "taskmeter.analytics.records")
    for report in ("blocks", "sessions", "hourly", "daily", "models"):
        assert _heavy_loaded(running.db_path, tmp_path, "report", report, modules=unused) == [], report
    # The blocks need no client's names (the sessions' agents), nor the period reports' module; they and
    # the usage reports need none of the task and phase histories.
    not_theirs = ("taskmeter.clients", "taskmeter.analytics.periods", "taskmeter.analytics.history")
    assert _heavy_loaded(running.db_path, tmp_path, "report", "blocks", modules=not_theirs) == []
    for report in ("hourly", "daily", "models"):
        assert _heavy_loaded(running.db_path, tmp_path, "report", report, modules=("taskmeter.analytics.history",)) == [], report
    assert _heavy_loaded(running.db_path, tmp_path, "service", "status", modules=("psycopg",)) == []
    in_no_team = "meter: error: this meter is in no team"
    assert _heavy_loaded(running.db_path, tmp_path, "team", "status", modules=("psycopg",), answer=in_no_team) == []


def test_click_finds_every_command_in_the_module_that_defines_it():
    from taskmeter.cli.common import COMMAND_MODULES, cli

    for module in pkgutil.iter_modules(taskmeter.cli.__path__):
        __import__(f"taskmeter.cli.{module.name}")
    defined = {name: command.callback.__module__ for name, command in cli.commands.items()}
    assert defined == {name: f"taskmeter.cli.{module}" for name, module in COMMAND_MODULES.items()}


def _flatten(table: dict, prefix: str = "") -> dict:
    flat_table = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat_table |= _flatten(value, f"{prefix}{key}.")
        else:
            flat_table[f"{prefix}{key}"] = value
    return flat_table


def test_the_defaults_are_defined_once_and_valid(tmp_path, monkeypatch):
    """What the read path takes from defaults.toml is what validation makes of it: the model
    adds no default of its own but "unset" (None), which TOML cannot say."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("METER_CONFIG", raising=False)
    defaults, user, _ = files.layers(None)
    assert user == {}
    shipped = _flatten(defaults)
    validated = flat(load_settings())  # the shipped defaults are valid
    assert {name: value for name, value in validated.items() if value is not None} == shipped
    assert files.read_values().get("record.idle_minutes", files.NUMBER) == load_settings().record.idle_minutes


def test_a_setting_of_the_wrong_kind_is_one_line_on_the_read_path(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[record]\nidle_minutes = "soon"\n')
    environ = {**os.environ, "METER_CONFIG": str(config)}
    connection.connect(tmp_path / "meter.db").close()
    done = _meter(tmp_path / "meter.db", "tasks", env=environ, check=False)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "record.idle_minutes" in done.stderr and "meter config check" in done.stderr
    check = subprocess.run([str(VENV_BIN / "meter"), "config", "check", str(config)], capture_output=True, text=True)
    assert check.returncode == 1 and "record.idle_minutes" in check.stderr


def test_tasks_json_says_what_each_task_report_says(proxy):
    running, upstream = proxy
    db_path = running.db_path
    _meter(db_path, "set-task", "P1-001", "--estimate", "30m")
    _ask(running, n=3)
    _meter(db_path, "mark", "initial")
    _meter(db_path, "iteration", "--note", "again")
    _ask(running, "P1-002", n=2)  # a second terminal's calls, while P1-001 is current
    _meter(db_path, "set-task", "P1-002", "--estimate", "1h")
    _ask(running, n=1)
    rows = running.rows(wait_for=6)
    assert len(rows) == len(upstream.received) == 6  # every call stored once
    _meter(db_path, "flag", rows[0]["id"])
    for task_id in ("P1-001", "P1-002"):  # approved: nothing depends on the time the commands run
        _meter(db_path, "mark", "approved", task_id, "--force")
    listed = {task["task_id"]: task for task in json.loads(_meter(db_path, "tasks", "--json").stdout)}
    assert set(listed) == {"P1-001", "P1-002"}
    for task_id, task in listed.items():
        report = json.loads(_meter(db_path, "report", "task", task_id, "--json").stdout)
        assert {name: value for name, value in task.items() if name != "current"} == report
    assert listed["P1-001"]["ai_interactions"] == 3 and listed["P1-001"]["iterations_count"] == 2
    assert listed["P1-002"]["ai_interactions"] == 3 and listed["P1-001"]["actual_duration"] > 0


def _at(minutes_ago: float) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes_ago)


def test_status_the_now_page_and_the_status_line_show_one_state_in_working_time(proxy):
    """P2-001 began three hours ago, was current for ten minutes, and is current again
    now: its working time is minutes, its wall time hours. The status line says what
    `meter status --json` and the Now page say, and counts working time."""
    running, upstream = proxy
    db_path = running.db_path
    db = connection.connect(db_path)
    try:
        with mock.patch.object(tasks, "now", lambda: _at(180)):
            tasks.set_task(db, "P2-001", estimate_seconds=3600)
        with mock.patch.object(tasks, "now", lambda: _at(170)):
            tasks.set_task(db, "P2-002")
    finally:
        db.close()
    _meter(db_path, "set-task", "P2-001")
    _meter(db_path, "task", "P2-001", "--budget", "5k")
    _ask(running, n=2)
    assert len(running.rows(wait_for=2)) == len(upstream.received) == 2
    db = connection.connect(db_path)
    try:
        alerts.raise_alert(db, "loop", "loop:s1:x", "loop: session s1 sent 10 calls")
        page = now_page(db, 15 * 60, configured_defaults(files.read_values()))
    finally:
        db.close()

    status = json.loads(_meter(db_path, "status", "--json").stdout)
    line = _meter(db_path, "statusline").stdout.strip()
    after = json.loads(_meter(db_path, "status", "--json").stdout)["task"]  # working time grows while P2-001 is current
    task = status["task"]
    worked = {_duration(task["actual_duration"]), _duration(after["actual_duration"])}
    assert task["wall_duration"] > 170 * 60 and 10 * 60 <= task["actual_duration"] < 20 * 60
    assert page["task"]["task_id"] == status["task_id"] == "P2-001"
    assert page["budget"] == status["budget"] and status["budget"]["target"] == "P2-001"
    assert [alert["id"] for alert in page["alerts"]] == [alert["alert_id"] for alert in status["alerts"]]
    assert any(f"P2-001 {minutes}/1h00m" in line for minutes in worked), line  # not the three hours of wall time
    expected = [
        _tokens(task["token_count_used"]),
        f"budget {status['budget']['used_share'] * 100:.0f}%" + ("!" if status["budget"]["used_share"] >= 1 else ""),
        "⚠ 1 alert",
    ]
    assert all(part in line.split(" · ") for part in expected), line
    assert not line.startswith("NOT METERED")  # the proxy records to this database


def test_the_status_line_loads_neither_click_nor_platformdirs_nor_the_report_types(tmp_path):
    """It runs on every prompt: none of what the other commands load but it does not need."""
    db_path = tmp_path / "meter.db"
    connection.connect(db_path).close()
    _meter(db_path, "set-task", "P1-001", "--estimate", "1h")
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['meter', 'statusline', '--db', sys.argv[1]]\n"
        "runpy.run_module('taskmeter', run_name='__main__')\n"
        "unwanted = ('click', 'platformdirs', 'taskmeter.analytics.records', 'taskmeter.cli.common', 'dataclasses', *HEAVY)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in unwanted or m in unwanted), file=sys.stderr)\n"
    ).replace("*HEAVY", ", ".join(repr(name) for name in HEAVY))
    environ = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "no-config"), "HOME": str(tmp_path)}
    environ.pop("METER_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-c", probe, str(db_path)], input="{}", capture_output=True, text=True, timeout=60, env=environ
    )
    assert done.stdout.startswith("NOT METERED · P1-001 0m/1h00m"), done
    assert ast.literal_eval(done.stderr.strip().splitlines()[-1]) == []


def test_doctor_without_a_proxy_loads_no_agent_and_no_network_module(tmp_path):
    """With no proxy recording, `meter doctor` checks no gateway, shell or CA: it loads
    neither the agents (read only for `--agent`), nor the proxy's environment, telemetry
    or sockets, nor hashlib (the pidfile's name) or dataclasses."""
    db_path = tmp_path / "meter.db"
    connection.connect(db_path).close()
    unused = (
        *HEAVY,
        "taskmeter.agents",
        "taskmeter.proxy.environment",
        "taskmeter.telemetry",
        "socket",
        "hashlib",
        "dataclasses",
    )
    assert _heavy_loaded(db_path, tmp_path, "doctor", modules=unused) == []
    assert _heavy_loaded(db_path, tmp_path, "doctor", "--agent", "codex", modules=("taskmeter.agents",)) == ["taskmeter.agents"]
