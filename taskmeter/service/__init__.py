"""`meter service install|uninstall|status`: the proxy as a user service, started at
login and again after a crash: a systemd user unit on Linux, a launchd agent on macOS,
each written from its template beside this module with the interpreter, database,
config file and port the user runs with.

What install writes (the service file, systemd's start-at-login link, the folders it
had to make) is named in the file's first line, so uninstall removes exactly that.
`meter status` and `meter doctor` read the service's state from the file and the
proxies table, without starting a process (`installed` and `started_by_service`)."""

import os
import sys
from pathlib import Path

from taskmeter.errors import MeterError

TYPE_CHECKING = False
if TYPE_CHECKING:  # collections.abc is not loaded on `meter status`'s path
    from collections.abc import Mapping

SYSTEMD, LAUNCHD = "systemd", "launchd"
MANAGERS = (SYSTEMD, LAUNCHD)
UNIT = "taskmeter.service"
LABEL = "org.taskmeter.proxy"
MARKER = "taskmeter service, written by `meter service install`; `meter service uninstall` removes it: "
TEMPLATES = Path(__file__).with_name("templates")
# Folders the proxy finds its state, data and config in: the service sees the user's.
CARRIED_VARIABLES = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")
# The corporate proxy the meter chains to (docs/proxy.md), as it was before any `meter env`:
# a service started at login has no shell to find it in.
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")


def carried_environment(environ: "Mapping[str, str]") -> dict[str, str]:
    """What the service's proxy is given of the installing user's environment."""
    from taskmeter.proxy.environment import earlier_value

    carried = {name: environ[name] for name in CARRIED_VARIABLES if environ.get(name)}
    carried.update({name: value for name in PROXY_VARIABLES if (value := earlier_value(name, environ))})
    return carried


def this_systems_manager() -> str:
    return LAUNCHD if sys.platform == "darwin" else SYSTEMD


def service_file(manager: str) -> Path:
    if manager == LAUNCHD:
        return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user" / UNIT


def login_link(manager: str) -> Path | None:
    """systemd starts a user unit at login through this link (what `systemctl --user enable`
    makes); launchd starts every agent in LaunchAgents (RunAtLoad)."""
    return service_file(SYSTEMD).parent / "default.target.wants" / UNIT if manager == SYSTEMD else None


class Service:
    """An installed service, as its file says. (A plain class: `meter status` imports this module.)"""

    def __init__(self, manager: str, path: Path, argv: list[str], made: list[str]) -> None:
        self.manager = manager
        self.path = path
        self.argv = argv
        self.made = made  # what install made besides the file: folders and the login link

    @property
    def database(self) -> Path | None:
        return Path(self.argv[self.argv.index("--db") + 1]) if "--db" in self.argv else None

    @property
    def port(self) -> int | None:
        return int(self.argv[self.argv.index("--port") + 1]) if "--port" in self.argv else None


def installed() -> list[Service]:
    """The services install wrote (normally the one of this system's manager)."""
    found = []
    for manager in MANAGERS:
        path = service_file(manager)
        try:
            text = path.read_text()
        except OSError:
            continue
        if MARKER in text:
            found.append(_parse(manager, path, text))
    return found


def installed_for(database: Path) -> Service | None:
    """The installed service that records to `database`, if any."""
    return next((service for service in installed() if service.database == database.absolute()), None)


def _parse(manager: str, path: Path, text: str) -> Service:
    """The service as its file says; a file edited beyond reading has no command, and
    what install made is known as far as the first line still says it."""
    import json

    try:
        made = [str(entry) for entry in json.loads(text.split(MARKER, 1)[1].split("\n", 1)[0].removesuffix(" -->"))["made"]]
    except (ValueError, KeyError, TypeError):
        made = []
    try:
        if manager == LAUNCHD:
            import plistlib

            argv = plistlib.loads(text.encode())["ProgramArguments"]
        else:
            import shlex

            line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
            argv = [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(line.removeprefix("ExecStart="))]
    except (ValueError, KeyError, TypeError, StopIteration):  # plistlib's errors are ValueErrors
        argv = []
    return Service(manager, path, [str(word) for word in argv], made)


def started_by_service(pid: int) -> bool | None:
    """Whether process `pid` runs as the systemd unit (its cgroup names it); None where
    that cannot be read without a process (macOS)."""
    try:
        return f"/{UNIT}" in Path(f"/proc/{pid}/cgroup").read_text()
    except FileNotFoundError:
        return None if sys.platform == "darwin" else False
    except OSError:
        return None


def proxy_argv(database: Path, config: Path | None, port: int) -> list[str]:
    """What the service runs: this installation's interpreter (never a PATH lookup:
    a service has no shell), with the user's database, config file and port."""
    argv = [sys.executable, "-m", "taskmeter", "proxy", "--db", str(database.absolute()), "--port", str(port), "--quiet"]
    return argv + (["--config", str(config.absolute())] if config else [])


def render(manager: str, argv: list[str], environment: dict[str, str], stop_timeout: int, log: Path, made: list[str]) -> str:
    import json
    from string import Template

    for word in [*argv, *environment.values(), str(log)]:
        if any(ord(character) < 32 or character in "\"'\\" for character in word):
            raise MeterError(f"cannot write a service for {word!r}: a path with a quote, backslash or control character")
    marker = MARKER + json.dumps({"made": made}).replace("--", "-\\u002d")  # no "--" in an XML comment
    if manager == LAUNCHD:
        from xml.sax.saxutils import escape

        values = {
            "label": LABEL,
            "arguments": "\n".join(f"\t\t<string>{escape(word)}</string>" for word in argv),
            "environment": "\n".join(
                f"\t\t<key>{escape(name)}</key>\n\t\t<string>{escape(value)}</string>" for name, value in environment.items()
            ),
            "log": escape(str(log)),
        }
        template = "org.taskmeter.proxy.plist"
    else:
        values = {
            "exec_start": " ".join(_systemd_word(word).replace("$", "$$") for word in argv),
            "environment": "".join(f"Environment={_systemd_word(f'{name}={value}')}\n" for name, value in environment.items()),
            "database": _systemd_word(argv[argv.index("--db") + 1]),
        }
        template = UNIT
    return Template((TEMPLATES / template).read_text()).substitute(values, marker=marker, stop_timeout=stop_timeout)


def _systemd_word(word: str) -> str:
    """One word of a unit file's command line or assignment: % doubled (systemd's
    specifiers), quoted when it holds a space."""
    word = word.replace("%", "%%")
    return f'"{word}"' if " " in word or not word else word


def install(manager: str, argv: list[str], environment: dict[str, str], stop_timeout: int, log: Path) -> tuple[Service, bool]:
    """Write the service (again: the same file, nothing doubled); returns it and
    whether anything changed. Nothing is left half-written: a failure undoes it all."""
    path = service_file(manager)
    previous = next((service for service in installed() if service.manager == manager), None)
    if path.exists() and previous is None:
        raise MeterError(f"{path} exists and is not taskmeter's: nothing changed; move it away first")
    link = login_link(manager)
    folders = _missing_folders(path.parent if link is None else link.parent)
    new_link = link is not None and not link.is_symlink()
    made = list(previous.made) if previous else []
    made += [str(new) for new in [*folders, *([link] if new_link else [])] if str(new) not in made]
    text = render(manager, argv, environment, stop_timeout, log, made)
    old_text = path.read_text() if previous else None
    undo: list[Path] = []
    try:
        for folder in folders:
            folder.mkdir(mode=0o755)
            undo.append(folder)
        if text != old_text:
            _write_whole(path, text)
            if old_text is None:
                undo.append(path)
        if new_link and link is not None:
            link.symlink_to(path)
            undo.append(link)
    except OSError as exc:
        for done in reversed(undo):
            done.unlink() if done.is_symlink() or done.is_file() else done.rmdir()
        if old_text is not None and text != old_text and path.exists():
            _write_whole(path, old_text)
        where = f": {exc.filename}" if exc.filename else ""
        raise MeterError(f"cannot install the service: {exc.strerror or exc}{where}; nothing changed") from None
    return _parse(manager, path, text), text != old_text or new_link


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and its parents that do not exist yet, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def _write_whole(path: Path, text: str) -> None:
    """Replace `path` in one step: a reader sees the old file or the new one, never part."""
    import tempfile

    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o600)  # the user's alone: a corporate proxy's password may be in it
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def uninstall(service: Service) -> list[str]:
    """Remove what install wrote, innermost first; returns what was removed."""
    removed = []
    for made_path in [str(service.path), *reversed(service.made)]:
        path = Path(made_path)
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed.append(made_path)
        elif path.is_dir() and not any(path.iterdir()):  # a folder the user has put things in since stays
            path.rmdir()
            removed.append(made_path)
    return removed


def describe(database: Path, running_pid: int | None) -> tuple[bool, str]:
    """One line on the service of `database` for `meter status`, `meter doctor` and
    `meter service status`, and whether it is as it should be; no process is started."""
    service = installed_for(database)
    if service is None:
        others = installed()
        if others and others[0].database is None:
            return False, f"{others[0].path} cannot be read: `meter service install` writes it again"
        if others:
            return False, f"installed for {others[0].database}, not this database ({others[0].path})"
        return True, "not installed (`meter service install` keeps the proxy running, from login on)"
    if not os.path.exists(service.argv[0]):  # the installation it names was moved or removed
        return False, f"broken: its interpreter {service.argv[0]} no longer exists: reinstall with `meter service install`"
    if running_pid is None:
        why = "`journalctl --user -u taskmeter` says why" if service.manager == SYSTEMD else f"its log: {log_of(service)}"
        return False, f"installed ({service.path}) but no proxy runs: {why}"
    ours = started_by_service(running_pid)
    if ours is False:
        return True, f"installed ({service.path}); the proxy running now (pid {running_pid}) was started outside it"
    return True, f"running (pid {running_pid}, {service.manager}: {service.path})"


def log_of(service: Service) -> Path | None:
    """Where a launchd agent's proxy writes (systemd's goes to the journal)."""
    if service.manager != LAUNCHD:
        return None
    import plistlib

    return Path(plistlib.loads(service.path.read_bytes())["StandardOutPath"])
