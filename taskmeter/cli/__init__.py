"""The `meter` command line: parse arguments, call the domain code, print.

Every failure a user can cause ends as one line on stderr and exit status 1.
The commands live in the modules beside this one; importing click and the
command's module is left to main() (cli.common.COMMAND_MODULES says which module),
so that `meter statusline` starts without either and every command without the others.
"""

import gc
import os
import sys


def _ctrl_c_before_main(kind, value, traceback) -> None:
    """Ctrl-C while `meter` imports this module, before main() runs: status 130, no
    traceback (nothing is begun yet). Only the command line imports this module."""
    if issubclass(kind, KeyboardInterrupt):
        os._exit(130)
    sys.__excepthook__(kind, value, traceback)


sys.excepthook = _ctrl_c_before_main


# A command allocates in one burst (its imports, then its report) and ends: the interpreter's
# collection of cycles every 700 new objects costs it 3-4 ms (`meter report hourly`: 44 times);
# every 50,000, cycles are still collected, a few times. The servers keep the interpreter's
# default: small collections often, not one long pause on their event loop.
COMMAND_COLLECTION_THRESHOLD = 50_000
SERVERS = (["proxy"], ["ui"])


def main() -> None:
    """Entry point: no traceback ever reaches the user. Ctrl-C at any moment from
    here on, imports included, ends the command with status 130 and no traceback."""
    if not isinstance(sys.unraisablehook, _QuietAboutCtrlC):
        sys.unraisablehook = _QuietAboutCtrlC(sys.unraisablehook)
    threshold = gc.get_threshold()
    if sys.argv[1:2] not in SERVERS:
        gc.set_threshold(COMMAND_COLLECTION_THRESHOLD, *threshold[1:])
    try:
        _run()
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        gc.set_threshold(*threshold)  # as it was, for a caller that runs main() in process


class _QuietAboutCtrlC:
    """A Ctrl-C while the interpreter ends (joining threads, atexit) says nothing;
    Python would print it as an exception ignored, with a traceback."""

    def __init__(self, default) -> None:
        self._default = default

    def __call__(self, unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            self._default(unraisable)


def _run() -> None:
    if sys.argv[1:2] == ["statusline"]:  # imported only then: every other command starts without it
        from taskmeter import statusline

        if statusline.fast_path(sys.argv[1:]):
            return
    if sys.argv[1:3] in (
        ["hooks", "git-event"],
        ["hooks", "test-run"],
    ):  # what hooks run in the background, many at once: no click
        from taskmeter.automation import git, testruns

        (git.main if sys.argv[2] == "git-event" else testruns.main)(sys.argv[3:])
        return
    import sqlite3

    import click

    from taskmeter import terminal
    from taskmeter.cli.common import cli
    from taskmeter.errors import Ambiguous, MeterError
    from taskmeter.store import connection

    try:
        cli.main(prog_name="meter", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click's word for Ctrl-C in a command (after a newline)
            sys.exit(130)
        terminal.error("aborted")
        sys.exit(1)
    except click.ClickException as exc:
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see `{exc.ctx.command_path} --help`)"
        terminal.error(exc.format_message().replace("\n", " ") + hint)
        sys.exit(1)
    except MeterError as exc:
        terminal.error(str(exc))
        for candidate in exc.candidates if isinstance(exc, Ambiguous) else []:
            terminal.comment(f"  {candidate}")
        sys.exit(1)
    except sqlite3.Error as exc:
        terminal.error(str(connection.describe_sqlite_error(exc, "the database")))
        sys.exit(1)
    except OSError as exc:
        terminal.error(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        sys.exit(1)
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("METER_DEBUG"):
            raise
        terminal.error(f"internal error: {type(exc).__name__}: {exc} (set METER_DEBUG=1 for the traceback)")
        sys.exit(1)
