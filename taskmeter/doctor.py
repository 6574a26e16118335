"""`meter doctor`: each thing the meter needs, checked and explained in one line."""

import json
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from taskmeter.errors import MeterError
from taskmeter.store import connection, proxies


class Check(NamedTuple):  # not a dataclass: dataclasses loads inspect, a fifth of what doctor imports
    name: str
    ok: bool
    detail: str


def run_checks(db_path: Path, config_path: str | None, environ: dict[str, str]) -> list[Check]:
    from taskmeter.config import files

    checks = []
    if config_path or files.config_path().exists():  # validated whole; the shipped defaults are valid (a test holds it)
        from taskmeter.config import load_settings

        try:
            ca_folder = load_settings(config_path).confdir
            checks.append(Check("config", True, "valid"))
        except MeterError as exc:
            return [Check("config", False, str(exc))]
    else:
        ca_folder = files.ca_folder(None)
        checks.append(Check("config", True, f"none at {files.config_path()}: the shipped defaults"))

    try:
        db = connection.connect(db_path)
        try:
            db.execute("BEGIN IMMEDIATE")  # takes the write lock, writes nothing
            db.execute("ROLLBACK")
            running = proxies.running(db)
        finally:
            db.close()
        checks.append(Check("database", True, f"{db_path} is writable"))
    except Exception as exc:
        return [*checks, Check("database", False, f"{db_path}: {exc}")]

    from taskmeter import service
    from taskmeter.lifecycle import START_ADVICE

    checks.append(Check("service", *service.describe(db_path.absolute(), running[0]["pid"] if running else None)))
    checks += _automation_checks(Path.cwd())
    if not running:
        checks.append(Check("proxy", False, f"no meter proxy records to {db_path}: {START_ADVICE}"))
        return checks
    from taskmeter.proxy.environment import BASE_URL_VARIABLES, PING_PATH, proxy_origin  # here: what a running proxy needs

    proxy = running[0]
    origin = proxy_origin(proxy["listen"])
    recording = proxy["recording"] == proxies.RECORDING
    checks.append(
        Check("proxy", recording, f"pid {proxy['pid']} on {proxy['listen']}" + ("" if recording else f": {proxy['recording']}"))
    )
    checks += _telemetry_checks(db_path)

    pointed = {name: environ[name] for name in BASE_URL_VARIABLES if environ.get(name)}
    elsewhere = [name for name, value in pointed.items() if not value.startswith(origin)]
    if not pointed:
        checks.append(Check("shell", False, 'no base-URL variable points at the meter here: eval "$(meter env)"'))
    elif elsewhere:
        checks.append(Check("shell", False, f'{", ".join(elsewhere)} point elsewhere than {origin}: eval "$(meter env)"'))
    else:
        checks.append(Check("shell", True, f"{', '.join(pointed)} point at {origin}"))

    import urllib.request  # here: only the check that goes over the network pays for it

    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to the meter
        with opener.open(origin + PING_PATH, timeout=5) as answer:
            reached = json.loads(answer.read()) == {"meter": "ok"}
        checks.append(Check("gateway", reached, f"{origin} answers" if reached else f"{origin} answered, but not as the meter"))
    except OSError as exc:
        checks.append(Check("gateway", False, f"{origin} cannot be reached: {exc}"))

    https_proxy = environ.get("HTTPS_PROXY") or environ.get("https_proxy")
    if not https_proxy or not _same_place(https_proxy, origin):
        checks.append(Check("ca", True, "HTTPS-proxy mode is not used in this shell: no CA needed"))
    else:
        bundle = environ.get("SSL_CERT_FILE") or environ.get("REQUESTS_CA_BUNDLE")
        try:
            trusted = bundle and files.ca_cert(ca_folder).read_text().strip() in Path(bundle).read_text()
        except OSError:
            trusted = False
        detail = (
            f"{bundle} holds the meter's CA"
            if trusted
            else 'SSL_CERT_FILE does not hold the meter\'s CA: eval "$(meter env --https-proxy)"'
        )
        checks.append(Check("ca", bool(trusted), detail))
    return checks


def _telemetry_checks(db_path: Path) -> list[Check]:
    """OpenTelemetry export of the running recorder, as `meter status` says it: a
    failing endpoint or calls not exported (none while export is well, or off)."""
    from taskmeter import telemetry
    from taskmeter.terminal import moment

    problems = telemetry.export_problems(telemetry.read_state(db_path), moment)
    return [Check(telemetry.PROBLEM_LABEL, False, problem) for problem in problems]


def _automation_checks(folder: Path) -> list[Check]:
    """The git hooks and Claude Code hooks of the project here, where installed: whether
    the meter they run still runs (a moved or deleted installation silently stops them)."""
    from taskmeter.automation import claude, git
    from taskmeter.automation.command import broken, render, repair_claude, repair_hooks

    checks = []
    top = next((path for path in (folder, *folder.parents) if (path / ".git").exists()), None)
    try:
        hooks = git.enrolment_of(git.hooks_dir(top) / "post-commit") if top else None
    except MeterError:  # git is not installed
        hooks = None
    if top and hooks is not None:
        hook_words = git.hook_command(top) or []
        problem = broken(hook_words)
        detail = (
            f"broken: {problem}: reinstall with `{repair_hooks(top, hooks.get('db'))}`"
            if problem
            else f"{top}'s git hooks run `{render(hook_words)}`"
        )
        checks.append(Check("hooks", not problem, detail))
    project = top or folder
    try:
        words = claude.installed_command(project)
    except MeterError:  # their settings file is unreadable: `meter claude install` says so
        words = None
    if words is not None:
        problem = broken(words)
        detail = (
            f"broken: {problem}: reinstall with `{repair_claude(project)}`"
            if problem
            else f"{project}'s Claude Code hooks run `{render(words)}`"
        )
        checks.append(Check("claude", not problem, detail))
    return checks


def run_agent_checks(name: str, db_path: Path, config_path: str | None, environ: dict[str, str]) -> list[Check]:
    """Whether agent `name`, as logged in and configured here, will be metered: one
    line per finding, each saying what to do when it will not."""
    import shutil

    from taskmeter import agents
    from taskmeter.config import load_settings
    from taskmeter.proxy.environment import proxy_origin
    from taskmeter.proxy.routing import Router

    if name in agents.UNREACHABLE:
        return [Check(name, False, agents.UNREACHABLE[name])]
    try:
        settings = load_settings(config_path)
    except MeterError as exc:
        return [Check("config", False, str(exc))]
    agent = agents.AGENTS[name]
    checks = []
    installed = next(filter(None, map(shutil.which, agent.commands)), None)
    checks.append(
        Check(name, bool(installed), f"installed at {installed}" if installed else f"`{agent.commands[0]}` is not on PATH")
    )
    try:
        db = connection.connect(db_path)
        try:
            running = proxies.running(db)
        finally:
            db.close()
    except Exception:
        running = []
    listen = running[0]["listen"] if running else f"{settings.proxy.listen_host}:{settings.proxy.port}"
    router = Router(settings)
    machine = agents.default_machine(environ, lambda host: router.provider_for_host(host) is not None)
    checks += [Check(name, finding.ok, finding.detail) for finding in agent.diagnose(machine, proxy_origin(listen))]
    return checks


def _same_place(url: str, origin: str) -> bool:
    """Does `url` (HTTPS_PROXY, with or without task credentials) name the meter?"""
    there, meter = urlsplit(url), urlsplit(origin)
    return (there.hostname, there.port) == (meter.hostname, meter.port)
