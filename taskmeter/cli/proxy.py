"""Running the proxy and pointing clients at it: proxy, start, stop, doctor, env, run."""

import gc
import os
import sys

import click

from taskmeter import terminal
from taskmeter.cli.common import (
    cli,
    config_option,
    db_option,
    json_option,
    open_db,
)
from taskmeter.errors import MeterError
from taskmeter.store import connection, dashboards, proxies, tasks


@cli.command("proxy")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (default from config: 8877; 0 picks a free one).")
@click.option("--host", help="Address to listen on (default 127.0.0.1; anything else exposes the meter to your network).")
@click.option(
    "--allow-from",
    "allow_from",
    multiple=True,
    metavar="CIDR",
    help="Clients beyond loopback that may also use HTTPS-proxy mode (default: the gateway only). Repeatable.",
)
@click.option("--quiet", is_flag=True, help="No line per call (and no summary at the end) on standard output.")
@config_option
@db_option
def proxy_cmd(port, host, allow_from, quiet, config_path, db_path):
    """Run the metering proxy in the foreground until Ctrl-C.

    \b
    One port serves two ways:
      base-URL gateway   OPENAI_BASE_URL=http://127.0.0.1:8877/openai/v1, /anthropic, /gemini, ...
                         with /t/TASK/ in front to attribute a client's calls to TASK
      HTTPS proxy        HTTPS_PROXY=http://127.0.0.1:8877 plus the meter's CA
    `eval "$(meter env)"` sets both for a shell; `meter run -- CMD` for one command.
    """
    # The proxy's modules (mitmproxy's, pydantic's) and what its start makes live as long as
    # it does: the collector's passes over them while they load were 0.13 s of a 1 s start, and
    # 0.03 s more until it listens, when the Announcer freezes them and turns it on (runner.py).
    gc.disable()
    from taskmeter.config import load_settings
    from taskmeter.proxy.chain import corporate_proxy
    from taskmeter.proxy.runner import exposure_warning, run_proxy

    def proxy_settings():
        """The config file's settings with this command line's overrides: at start, and on reload."""
        settings = load_settings(config_path)
        if allow_from:
            settings = settings.model_copy(update={"proxy": settings.proxy.model_copy(update={"allow_from": list(allow_from)})})
            settings.trusted_networks()  # a malformed CIDR fails here
        return settings

    settings = proxy_settings()
    path = connection.resolve_path(db_path)
    with open_db(path) as db:  # a bad database fails here, before listening
        running = proxies.running(db)
    if running:
        other = running[0]
        raise MeterError(
            f"a meter proxy already records to {path} (pid {other['pid']} on {other['listen']}): "
            "point clients at it (`meter env`), stop it first, or give this one another --db"
        )
    listen_host = host or settings.proxy.listen_host
    listen_port = settings.proxy.port if port is None else port
    warning = exposure_warning(settings, listen_host)
    if warning:
        click.echo(terminal.fit(warning, sys.stderr), err=True)
    corporate = corporate_proxy(os.environ, listen_port)

    def ready(bound_host: str, bound_port: int) -> None:
        origin = f"http://{bound_host}:{bound_port}"
        terminal.info(f"taskmeter proxy listening on {bound_host}:{bound_port}, recording to {path}")
        terminal.info(f"  gateway: {origin}/openai/v1  {origin}/anthropic  {origin}/gemini  (see `meter env`)")
        terminal.info(f"  proxy:   HTTPS_PROXY={origin} with the CA in {settings.confdir}")
        if corporate:
            terminal.info(
                f"  upstream proxy: {corporate.scheme}://{corporate.shown_address} (the HTTPS_PROXY found at start); "
                "loopback and NO_PROXY hosts directly"
            )
        with open_db(path) as db:
            dashboard = dashboards.running(db)
        terminal.info(f"  dashboard: {dashboard}" if dashboard else "  dashboard: `meter ui` serves one on http://127.0.0.1:8878")
        sys.stdout.flush()

    from taskmeter.team.process import syncing

    with syncing(settings.team.url, path, config_path):  # the team store's syncer, in a process of its own
        run_proxy(settings, path, listen_host, listen_port, ready, quiet, reload_settings=proxy_settings, corporate=corporate)


@cli.command("start")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (default from config: 8877).")
@config_option
@db_option
def start_cmd(port, config_path, db_path):
    """Run the metering proxy in the background (log and pidfile in the user state folder)."""
    from taskmeter import lifecycle

    path = connection.resolve_path(db_path)
    args = (["--port", str(port)] if port is not None else []) + (["--config", config_path] if config_path else [])
    proxy = lifecycle.start(path, args)
    terminal.info(f"meter proxy started: pid {proxy['pid']} on {proxy['listen']}, recording to {path}")
    terminal.info(f"log: {lifecycle.log_path(path)}   stop it with `meter stop`")


@cli.command("stop")
@config_option
@db_option
def stop_cmd(config_path, db_path):
    """Stop the proxy recording to the database, as Ctrl-C would: calls in flight may finish."""
    from taskmeter import lifecycle, service
    from taskmeter.config import load_settings

    path = connection.resolve_path(db_path)
    running = lifecycle.running_proxy(path) if path.exists() else None
    # Asked before it stops: afterwards its cgroup is gone with it.
    ran_as_service = running is not None and service.installed_for(path.absolute()) is not None
    ran_as_service = ran_as_service and service.started_by_service(running["pid"]) is not False
    pid = lifecycle.stop(path, timeout=load_settings(config_path).proxy.shutdown_grace_seconds + 5)
    terminal.info(f"meter proxy (pid {pid}) stopped" if pid else f"no meter proxy records to {path}")
    if pid and ran_as_service:
        # It exited cleanly, which Restart=on-failure (KeepAlive on failure) does not restart.
        terminal.info(
            "  the user service ran it: it stays stopped until your next login;"
            " `meter service install` starts it again now, `meter service uninstall` removes it"
        )


class _AgentChoice(click.Choice):
    """The agents `doctor --agent` knows, read from taskmeter.agents when first asked for (help,
    a value to check, completion): a plain `meter doctor` or `meter env` does not import them."""

    def __init__(self) -> None:
        super().__init__([])

    @property  # type: ignore[override]
    def choices(self) -> list[str]:
        from taskmeter.agents import AGENTS, UNREACHABLE

        return [*AGENTS, *UNREACHABLE]

    @choices.setter
    def choices(self, _names) -> None:  # click.Choice.__init__ sets it
        pass


@cli.command("doctor")
@click.option(
    "--agent",
    type=_AgentChoice(),
    help="Instead: whether this agent, as logged in and configured on this machine, will be metered.",
)
@json_option
@config_option
@db_option
def doctor_cmd(agent, as_json, config_path, db_path):
    """Check, one line each, that the meter can meter this shell's AI calls; exit 1 if not."""
    from taskmeter.doctor import run_agent_checks, run_checks

    if agent:
        checks = run_agent_checks(agent, connection.resolve_path(db_path), config_path, dict(os.environ))
    else:
        checks = run_checks(connection.resolve_path(db_path), config_path, dict(os.environ))
    if as_json:
        terminal.print_json([check._asdict() for check in checks])
    else:
        for check in checks:
            terminal.info(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<9} {check.detail}", indent=16)  # under the detail
    if not all(check.ok for check in checks):
        sys.exit(1)


def _listen_address(db_path, host: str, port: int) -> tuple[str, bool]:
    """The address of the proxy recording to the database, else the configured one; and whether one is registered."""
    with open_db(db_path) as db:
        running = proxies.running(db)
    if running:
        return running[-1]["listen"], True
    return f"{host}:{port}", False


@cli.command("env")
@click.option("--shell", type=click.Choice(["sh", "fish", "powershell"]), default="sh", show_default=True)
@click.option(
    "--task",
    "task_id",
    help="Attribute the calls of clients using these variables to TASK, and name it in OTEL_RESOURCE_ATTRIBUTES "
    "(as `meter run --task` does) for the agent's own telemetry.",
)
@click.option(
    "--https-proxy",
    "https_proxy",
    is_flag=True,
    help="Also HTTPS_PROXY and the meter's CA bundle, for clients without a base URL setting (every client "
    "of the shell obeys them, and fails while the meter is down).",
)
@click.option(
    "--unset", is_flag=True, help="Print the lines that put back what `meter env` replaced (with or without --https-proxy)."
)
@click.option("--create", is_flag=True, help="With --task: a new TASK may look like a typo of another (as in set-task).")
@config_option
@db_option
def env_cmd(shell, task_id, https_proxy, unset, create, config_path, db_path):
    """Print the variables that point AI clients at the running proxy.

    \b
    Use: eval "$(meter env)"          (fish: meter env --shell fish | source)
    Undo: eval "$(meter env --unset)"
    By default only the base-URL variables (OPENAI_BASE_URL, ANTHROPIC_BASE_URL, ...),
    which AI clients alone read, so git, pip and curl never depend on the meter.
    Each variable's earlier value is kept (METER_SAVED_<NAME>, METER_WAS_UNSET),
    and --unset puts it back: a corporate HTTPS_PROXY or NO_PROXY survives.
    """
    from taskmeter.config.files import NUMBER, TEXT, ca_folder, read_values
    from taskmeter.proxy.environment import (
        client_environment,
        earlier_value,
        entering,
        leaving,
        meter_answers,
        render,
    )
    from taskmeter.telemetry import RESOURCE_VARIABLE

    if create and not task_id:
        raise click.UsageError("--create goes with --task")
    if unset and (task_id or https_proxy):
        raise click.UsageError("--unset goes alone (it undoes every variable `meter env` may set)")
    if task_id:
        task_id = tasks.validate_task_id(task_id)
        _refuse_typo(db_path, task_id, create)
    values = read_values(config_path)
    listen, registered = _listen_address(db_path, values.get("proxy.listen_host", TEXT), values.get("proxy.port", NUMBER))
    ca = ca_folder(values.get("proxy.confdir", TEXT))
    if unset:
        # Every variable `meter env` may set: one it set without a record (an older meter) is known by its value.
        click.echo(render(leaving(client_environment(ca, listen), os.environ), shell))
        return
    earlier_no_proxy = [earlier_value(name, os.environ) for name in ("NO_PROXY", "no_proxy")]
    env = client_environment(ca, listen, task_id, https_proxy=https_proxy, no_proxy=",".join(filter(None, earlier_no_proxy)))
    if task_id:
        env[RESOURCE_VARIABLE] = _task_resource(
            connection.resolve_path(db_path), task_id, earlier_value(RESOURCE_VARIABLE, os.environ)
        )
    click.echo(render(entering(env, os.environ), shell))
    if not meter_answers(listen):
        from taskmeter.lifecycle import START_ADVICE

        terminal.comment(f"# meter: warning: no meter proxy answers on {listen}; AI clients pointed there fail: {START_ADVICE}")
    elif not registered:
        terminal.comment(
            f"# meter: a meter proxy answers on {listen}, but it records to another database than {connection.resolve_path(db_path)}"
        )


def _refuse_typo(db_path, task_id: str, create: bool) -> None:
    """A task ID given to `meter env` or `meter run` that looks like a typo needs
    --create, as with set-task: the proxy itself records whatever task a call names."""
    path = connection.resolve_path(db_path)
    if not create and path.exists():
        with open_db(path, create=False) as db:
            tasks.refuse_typo(db, task_id)


def _task_resource(path, task_id: str | None, existing: str | None) -> str:
    """OTEL_RESOURCE_ATTRIBUTES over `existing` with the task, its phase and the
    developer: the agent's own OpenTelemetry carries the task too (docs/telemetry.md)."""
    from taskmeter import telemetry

    return telemetry.resource_attributes(
        existing,
        {
            "taskmeter.task.id": task_id,
            "taskmeter.phase.id": _phase_of(path, task_id) if task_id else None,
            "taskmeter.developer": telemetry.developer(),
        },
    )


def _phase_of(path, task_id: str) -> str:
    """The task's phase as stored, else the one its ID names (as its first call makes it)."""
    if path.exists():
        with open_db(path, create=False) as db:
            row = db.execute("SELECT phase_id FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is not None:
            return row["phase_id"]
    return tasks.infer_phase(task_id)


@cli.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--task", "task_id", help="Attribute this command's AI calls to TASK (default: the current task).")
@click.option("--create", is_flag=True, help="With --task: a new TASK may look like a typo of another (as in set-task).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@config_option
@db_option
def run_cmd(task_id, create, command, config_path, db_path):
    """Run COMMAND with its AI clients pointed at the proxy: meter run --task P1-010 -- claude

    \b
    Every command gets the base URLs and HTTPS-proxy mode (`meter env --https-proxy`).
    A known agent (codex, claude, gemini, aider, opencode, llm; also through npx)
    is pointed the way it honours, e.g. Codex by -c options (docs/agents.md).

    The running proxy is used; when none runs, one is started for COMMAND and
    stopped when the last `meter run` using it ends (other terminals' runs
    keep it). Ctrl-C goes to COMMAND; its exit status is meter run's.
    """
    import shutil
    import signal
    import subprocess

    from taskmeter import agents, lifecycle, telemetry
    from taskmeter.config import load_settings
    from taskmeter.proxy.environment import client_environment
    from taskmeter.proxy.routing import Router

    if create and not task_id:
        raise click.UsageError("--create goes with --task")
    if task_id:
        task_id = tasks.validate_task_id(task_id)
    settings = load_settings(config_path)
    program = shutil.which(command[0])
    path = connection.resolve_path(db_path)
    if task_id:
        _refuse_typo(path, task_id, create)  # before COMMAND runs
    if program is None:
        raise MeterError(f"command not found: {command[0]}")
    proxy = lifecycle.join(path, ["--config", config_path] if config_path else [])
    try:
        no_proxy = ",".join(filter(None, (os.environ.get("NO_PROXY"), os.environ.get("no_proxy"))))
        env = {**os.environ, **client_environment(settings.confdir, proxy["listen"], task_id, no_proxy=no_proxy)}
        env[telemetry.RESOURCE_VARIABLE] = _task_resource(path, task_id, env.get(telemetry.RESOURCE_VARIABLE))
        router = Router(settings)
        machine = agents.default_machine(dict(os.environ), lambda host: router.provider_for_host(host) is not None)
        argv, env, _ = agents.prepare([program, *command[1:]], env, machine)
        sys.stdout.flush()
        # Ctrl-C is COMMAND's; we stay to clean up. (A handler, not SIG_IGN, which COMMAND would inherit.)
        signal.signal(signal.SIGINT, lambda *_: None)
        returncode = subprocess.run(argv, env=env).returncode
    finally:
        lifecycle.leave(path, timeout=settings.proxy.shutdown_grace_seconds + 5)
    sys.exit(returncode if returncode >= 0 else 128 - returncode)
