"""The forked `meter` the tests run their commands, proxies and dashboards with
(tests/meter_forks.py) is the `meter` script: the same output, error lines and exit status
for each command, in the command's own environment and folder; a command past its timeout
is killed and the next one still runs; a running one is a process as subprocess.Popen
shows one."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.meter_forks import METER, starts_alike
from tests.proxy_harness import VENV_BIN

pytestmark = pytest.mark.e2e


def script(args: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "meter"), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def test_each_command_is_what_the_meter_script_says_and_does(tmp_path):
    env = {**os.environ, "METER_DB": str(tmp_path / "meter.db"), "TZ": "America/New_York"}
    config = tmp_path / "config.toml"
    config.write_text("[record]\nidle_minutes = -5\n")
    # What the fork writes is what the script reads.
    assert METER.run(["set-task", "P1-001", "--estimate", "1h", "--title", "login form"], env=env, timeout=60).returncode == 0
    assert METER.run(["task", "P1-001", "--estimate", "2h"], env=env, timeout=60).returncode == 0
    assert METER.run(["mark", "approved", "--force"], env=env, timeout=60).returncode == 0  # its figures stop moving
    shown = json.loads(script(["report", "task", "P1-001", "--json"], env, tmp_path).stdout)
    assert (shown["title"], shown["estimated_duration"], shown["estimate_latest"]) == ("login form", 3600, 7200)
    commands = [
        ["--version"],
        ["tasks", "--json"],
        ["report", "task", "P1-001", "--json"],
        ["report", "--team"],  # errors: one line, status 1 or 2
        ["report", "daily", "--developer", "bob"],
        ["retag", "nonexistent", "--to", "P1-002"],
        ["no-such-command"],
        ["config", "check", str(config)],
    ]
    for args in commands:
        forked = METER.run(args, env=env, timeout=60, cwd=str(tmp_path))
        ran = script(args, env, tmp_path)
        assert (forked.returncode, forked.stdout, forked.stderr) == (ran.returncode, ran.stdout, ran.stderr), args
    assert METER.run(["report", "--team"], env=env, timeout=60).returncode == 1
    # The command's own environment: another database, another time zone.
    other = {**env, "METER_DB": str(tmp_path / "other.db"), "TZ": "Asia/Tokyo"}
    began = METER.run(["set-task", "P9-001"], env=other, timeout=60)
    assert began.returncode == 0 and "+09:00" in began.stdout, began.stdout
    listed = script(["tasks", "--json"], other, tmp_path)
    assert [task["task_id"] for task in json.loads(listed.stdout)] == ["P9-001"]
    assert "P9-001" not in METER.run(["tasks", "--json"], env=env, timeout=60).stdout


def test_a_command_past_its_timeout_is_killed_and_the_next_one_runs(tmp_path):
    env = {**os.environ, "METER_DB": str(tmp_path / "meter.db")}
    assert METER.run(["set-task", "P1-001"], env=env, timeout=60).returncode == 0
    with pytest.raises(subprocess.TimeoutExpired):
        METER.run(["log", "--follow"], env=env, timeout=1)  # runs until stopped
    assert METER.run(["tasks", "--json"], env=env, timeout=60).returncode == 0


def test_a_running_fork_is_a_process_as_popen_shows_one(tmp_path):
    """What RunningProxy and the dashboard's tests read of a fork: its PID, its piped output as
    it comes, whether it still runs, and the status a signal ends it with, as the script's."""
    env = {**os.environ, "METER_DB": str(tmp_path / "meter.db")}
    assert METER.run(["set-task", "P1-001"], env=env, timeout=60).returncode == 0

    def started_script(args, env, **pipes):
        return subprocess.Popen([str(VENV_BIN / "meter"), *args], env=env, text=True, **pipes)

    ended = []
    for start in (METER.popen, started_script):
        dashboard = start(["ui", "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert "dashboard on http://127.0.0.1:" in dashboard.stdout.readline()
        assert dashboard.poll() is None and Path(f"/proc/{dashboard.pid}").exists()
        with pytest.raises(subprocess.TimeoutExpired):
            dashboard.wait(0.2)
        dashboard.send_signal(signal.SIGINT)
        ended.append((dashboard.wait(30), dashboard.stdout.read(), dashboard.stderr.read()))
        assert dashboard.poll() == ended[-1][0] and not Path(f"/proc/{dashboard.pid}").exists()
    assert ended[0] == ended[1] and ended[0][0] == 0, ended


def test_an_environment_that_acts_at_start_up_runs_the_script():
    assert starts_alike(dict(os.environ))
    assert not starts_alike({**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert not starts_alike({name: value for name, value in os.environ.items() if name != "PYTHONPATH"} | {"LD_PRELOAD": "x.so"})
    profiled = METER.popen(["--version"], env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}, stderr=subprocess.PIPE)
    assert isinstance(profiled, subprocess.Popen) and "import time:" in profiled.stderr.read()
    assert profiled.wait(30) == 0
