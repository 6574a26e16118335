"""The web dashboard: meter ui."""

import click

from taskmeter.cli.common import budget_defaults, cli, db_option, idle_seconds
from taskmeter.store import connection


@cli.command("ui")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8878, show_default=True, help="Port on 127.0.0.1 (0 picks a free one)."
)
@click.option(
    "--open", "open_browser", is_flag=True, help="Open the dashboard (the URL with its access token) in the web browser."
)
@db_option
def ui_cmd(port, open_browser, db_path):
    """Serve the dashboard on 127.0.0.1 until Ctrl-C; open the URL it prints (it carries a per-run token).

    \b
    Now      the current task, its budget, open alerts, a live feed of calls, tokens and cost per hour today
    Tasks    every task with its state and figures, by date range and search
    Task     the execution record, a timeline, its calls as rows that open, its fields, budget and milestones to set
    Call     what `meter show` says of one call, with flag and retag
    Phases   tokens per task, the token trend, the seed's targets as pass/fail tiles, its fields to set
    History  tokens and cost per day, week or month by model; unassigned calls to retag
    Every page says whether a proxy is recording.
    """
    try:
        # Imported within: Ctrl-C while the dashboard loads stops it as quietly as Ctrl-C later.
        from taskmeter.dashboard.server import serve

        serve(connection.resolve_path(db_path), port, idle_seconds(), budget_defaults(), open_browser)
    except KeyboardInterrupt:  # uvicorn stops on Ctrl-C, then raises it again: the way to stop, not a failure
        return
