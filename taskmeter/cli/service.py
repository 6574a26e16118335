"""The proxy as a user service: meter service install|uninstall|status."""

import os
import shutil
import subprocess
import sys

import click

from taskmeter import service, terminal
from taskmeter.cli.common import cli, config_option, db_option, json_option
from taskmeter.store import connection

manager_option = click.option(
    "--manager",
    type=click.Choice(service.MANAGERS),
    default=service.this_systems_manager,
    show_default="this system's",
    help="The service manager: a systemd user unit, or a launchd agent (macOS).",
)


@cli.group("service")
def service_group():
    """The metering proxy as a user service, so AI clients never find it down: a
    systemd user unit on Linux, a launchd agent on macOS, started at login and
    again after a crash, with this database, config file and port.
    """


@service_group.command("install")
@click.option("--port", type=click.IntRange(1, 65535), help="Port to listen on (default from config: 8877).")
@click.option("--no-start", is_flag=True, help="Write the service only: it starts at the next login.")
@manager_option
@config_option
@db_option
def service_install_cmd(port, no_start, manager, config_path, db_path):
    """Install (again: updated, never doubled) and start the service."""
    from taskmeter import lifecycle
    from taskmeter.config import files, load_settings

    settings = load_settings(config_path)  # a config the proxy would refuse fails here, not in a restart loop
    database = connection.resolve_path(db_path).absolute()
    config = files.config_path(config_path)
    argv = service.proxy_argv(database, config if config.exists() else None, port or settings.proxy.port)
    environment = service.carried_environment(os.environ)
    stop_timeout = int(settings.proxy.shutdown_grace_seconds) + 5
    installed, changed = service.install(manager, argv, environment, stop_timeout, lifecycle.log_path(database))
    terminal.info(f"{'installed' if changed else 'already installed'}: {installed.path}")
    terminal.info(f"  it runs `meter proxy` on port {installed.port}, recording to {database}")
    if no_start:
        terminal.info("  it starts at your next login (--no-start)")
        return
    running = lifecycle.running_proxy(database) if database.exists() else None
    if running and service.started_by_service(running["pid"]) is False:  # None: launchd, which cannot be told here
        terminal.warn(
            f"not started now: a proxy started outside the service (pid {running['pid']}) records to {database};"
            " `meter stop` it, then `meter service install` again"
        )
        return
    problem = _start(installed, restart=changed)
    if problem:
        terminal.warn(f"not started now: {problem}; it starts at your next login")
    else:
        terminal.info("  started")


@service_group.command("uninstall")
def service_uninstall_cmd():
    """Stop the service and remove exactly what install wrote."""
    found = service.installed()
    if not found:
        terminal.info("no taskmeter service is installed")
        return
    for installed in found:
        _stop(installed)
        for path in service.uninstall(installed):
            terminal.info(f"removed {path}")
        if installed.manager == service.SYSTEMD:
            _run(["systemctl", "--user", "daemon-reload"])


@service_group.command("status")
@json_option
@db_option
def service_status_cmd(as_json, db_path):
    """Whether the service is installed, for which database and port, and running
    (exit 1 unless it is installed for this database and a proxy records there)."""
    from taskmeter import lifecycle

    database = connection.resolve_path(db_path).absolute()
    running = lifecycle.running_proxy(database) if database.exists() else None
    ok, detail = service.describe(database, running["pid"] if running else None)
    found = service.installed_for(database) or next(iter(service.installed()), None)
    state = {
        "ok": ok,
        "detail": detail,
        "installed": found is not None,
        "manager": found.manager if found else None,
        "path": str(found.path) if found else None,
        "database": str(found.database) if found else None,
        "port": found.port if found else None,
        "starts_at_login": bool(found) and (found.manager == service.LAUNCHD or _login_link_holds(found)),
        "pid": running["pid"] if running else None,
        "manager_says": _manager_says(found) if found else None,
    }
    if as_json:
        terminal.print_json(state)
    else:
        terminal.info(f"service: {detail}")
        if found:
            login = "yes" if state["starts_at_login"] else "no"
            terminal.info(f"  records to {found.database} on port {found.port}; starts at login: {login}")
            if state["manager_says"]:
                terminal.info(f"  {found.manager}: {state['manager_says']}")
    if not (found and found.database == database and running):
        sys.exit(1)


def _login_link_holds(installed: service.Service) -> bool:
    link = service.login_link(installed.manager)
    return link is not None and link.is_symlink() and link.resolve() == installed.path.resolve()


def _run(argv: list[str]) -> str | None:
    """Run a service manager's command; what went wrong, or None."""
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} is not on PATH"
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{' '.join(argv)}`: {exc}"
    if result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip()).splitlines()
        return f"`{' '.join(argv)}`: {said[-1] if said else f'exit {result.returncode}'}"
    return None


def _launchd_domain() -> str:
    return f"gui/{os.getuid()}"


def _start(installed: service.Service, restart: bool) -> str | None:
    if installed.manager == service.SYSTEMD:
        verb = "restart" if restart else "start"
        return _run(["systemctl", "--user", "daemon-reload"]) or _run(["systemctl", "--user", verb, service.UNIT])
    loaded = _run(["launchctl", "print", f"{_launchd_domain()}/{service.LABEL}"]) is None
    if loaded and not restart:
        return None  # launchd runs it already, and nothing changed (bootstrap would fail: already loaded)
    if loaded:
        _run(["launchctl", "bootout", f"{_launchd_domain()}/{service.LABEL}"])
    return _run(["launchctl", "bootstrap", _launchd_domain(), str(installed.path)])


def _stop(installed: service.Service) -> None:
    """Stop it if its manager runs it; a manager that cannot be reached runs nothing of ours."""
    if installed.manager == service.SYSTEMD:
        _run(["systemctl", "--user", "stop", service.UNIT])
    else:
        _run(["launchctl", "bootout", f"{_launchd_domain()}/{service.LABEL}"])


def _manager_says(installed: service.Service) -> str | None:
    if installed.manager == service.SYSTEMD and shutil.which("systemctl"):
        result = subprocess.run(["systemctl", "--user", "is-active", service.UNIT], capture_output=True, text=True, timeout=30)
        said = (result.stdout.strip() or result.stderr.strip()).splitlines()
        return said[-1] if said else None
    if installed.manager == service.LAUNCHD and shutil.which("launchctl"):
        result = subprocess.run(
            ["launchctl", "print", f"{_launchd_domain()}/{service.LABEL}"], capture_output=True, text=True, timeout=30
        )
        state = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("state =")]
        return state[0] if state else "not loaded"
    return None
