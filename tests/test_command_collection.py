"""Issue 23, instant commands: a one-shot `meter` command collects cycles every
COMMAND_COLLECTION_THRESHOLD new objects, not every 700 (3-4 ms of `meter report hourly`);
the servers (`meter proxy`, `meter ui`) keep the interpreter's default, and a caller that
runs main() in process gets its own setting back."""

import gc
import sys

from taskmeter import cli


def test_commands_collect_cycles_less_often_and_servers_as_the_interpreter_does(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "_run", lambda: seen.setdefault(sys.argv[1], gc.get_threshold()))
    before = gc.get_threshold()
    for command in ("report", "statusline", "proxy", "ui"):
        monkeypatch.setattr(sys, "argv", ["meter", command])
        cli.main()
        assert gc.get_threshold() == before
    assert seen["report"] == seen["statusline"] == (cli.COMMAND_COLLECTION_THRESHOLD, *before[1:])
    assert seen["proxy"] == seen["ui"] == before
