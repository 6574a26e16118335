"""The settings as the files say them: the shipped defaults.toml, the user's
config.toml over it. Nothing here validates (that is settings.py, with pydantic,
which `meter config check`, `meter proxy` and `meter doctor` run): a command that
only reads takes the few values it needs from `read_values`, each checked to be
of the kind it computes with, and starts without pydantic.

What the two files say is kept, parsed, in the user cache folder (settings.marshal,
the user's alone), with each file's identity (device, inode, size, modification and
change times): a command whose files have not changed since reads that instead of loading
tomllib and parsing TOML, a few milliseconds of every command and status line."""

import marshal
import os
from pathlib import Path

from taskmeter.errors import MeterError
from taskmeter.private import read_own_cache, refuse_if_others_may_write, write_own_cache

ENV_VAR = "METER_CONFIG"
# What the values a command computes with must be; `meter config check` says more.
NUMBER, TEXT, FLAG, TEXTS = "a number", "text", "true or false", "a list of text"


def config_path(explicit: str | os.PathLike | None = None) -> Path:
    chosen = named_config(explicit)
    if not chosen:
        from taskmeter.userdirs import user_path  # only here: a command given the file never loads it

        chosen = user_path("config") / "config.toml"
    return Path(chosen).expanduser()


def named_config(explicit: str | os.PathLike | None = None) -> str | os.PathLike | None:
    """The config file the user named (--config, else $METER_CONFIG), or None for the default place."""
    return explicit or os.environ.get(ENV_VAR) or None


def missing_config(path: Path) -> MeterError:
    """The one rule for a config file that is named but absent: every command refuses it
    (a typo must not run the meter on defaults: its budgets, upstreams and redirects lost)."""
    import shlex

    return MeterError(f"config file {path} does not exist: `meter config init --config {shlex.quote(str(path))}` writes one")


def ca_folder(configured: str | os.PathLike | None) -> Path:
    """Where the proxy keeps its CA (proxy.confdir; default: the user data folder)."""
    if configured:
        return Path(configured)
    from taskmeter.userdirs import user_path

    return user_path("data") / "mitmproxy"


def ca_cert(folder: Path) -> Path:
    """The meter's CA certificate (mitmproxy writes it on the first start)."""
    return folder / "mitmproxy-ca-cert.pem"


def ca_bundle(folder: Path) -> Path:
    """The public roots plus the meter's CA, for clients that replace their CA list."""
    return folder / "ca-bundle.pem"


def _defaults_file() -> Path:
    # Beside this module (package data), read without importlib.resources: the status line reads it too.
    return Path(__file__).with_name("defaults.toml")


def defaults_text() -> str:
    return _defaults_file().read_text()


def starter_text() -> str:
    """A commented config.toml: every setting with its default, to uncomment."""
    lines = ["# taskmeter settings. Uncomment a line to change it; `meter config check` validates.", ""]
    for line in defaults_text().splitlines()[2:]:
        lines.append(line if not line.strip() or line.startswith("#") else f"# {line}")
    return "\n".join(lines) + "\n"


def merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def layers(explicit: str | os.PathLike | None) -> tuple[dict, dict, Path]:
    """The shipped defaults, the user's file (empty when absent) and its path."""
    path = config_path(explicit)
    user_identity = _identity(path)
    if user_identity is not None:
        # It names commands the meter runs (alert_command) and where API keys go (upstreams).
        refuse_if_others_may_write(path, "config")
    elif named_config(explicit):
        raise missing_config(path)
    key = (str(path), user_identity, _identity(_defaults_file()))
    parsed = _cached(key)
    if parsed is None:
        parsed = _parse(path if user_identity is not None else None)
        _remember(key, parsed)
    return parsed[0], parsed[1], path


def _identity(path: Path) -> tuple[int, ...] | None:
    """What changes when the file does: a new file, one written in place, or its mode
    changed (the change time, which no one can set back); None: there is none."""
    try:
        status = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def _parse(user_file: Path | None) -> tuple[dict, dict]:
    import tomllib  # only when the files changed since the last command: see the module's docstring

    defaults, user = tomllib.loads(defaults_text()), {}
    if user_file is not None:
        try:
            user = tomllib.loads(user_file.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise MeterError(f"cannot read config {user_file}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise MeterError(f"config {user_file} is not valid TOML: {exc}") from None
    return defaults, user


def _cache_file() -> Path:
    from taskmeter.userdirs import user_path

    return user_path("cache") / "settings.marshal"


def _cached(key: tuple) -> tuple[dict, dict] | None:
    """What the cache holds for `key`; None when it holds another key, or nothing
    trustworthy: a file another account could have written is not read."""
    data = read_own_cache(_cache_file())
    if data is None:
        return None
    try:
        stored_key, defaults, user = marshal.loads(data)
    except (ValueError, EOFError, TypeError):  # not what _remember writes
        return None
    return (defaults, user) if stored_key == key else None


def _remember(key: tuple, parsed: tuple[dict, dict]) -> None:
    """Keep `parsed` for the next command; quietly not, where the cache folder cannot be written."""
    try:
        data = marshal.dumps((key, *parsed))
    except ValueError:  # a TOML date or time, which marshal does not keep: parsed each time
        return
    write_own_cache(_cache_file(), data)


class Values:
    """The effective settings, unvalidated: `values.get("record.idle_minutes", NUMBER)`."""

    def __init__(self, merged: dict, path: Path) -> None:
        self._merged = merged
        self.path = path

    def get(self, name: str, kind: str):
        """The setting `name` (section.key), None when neither file sets it; a value
        that is not of `kind` is a one-line error naming it."""
        section, _, key = name.partition(".")
        value = self._merged.get(section, {}).get(key)
        expected = {NUMBER: (int, float), TEXT: (str,), FLAG: (bool,), TEXTS: (list,)}[kind]
        fits = isinstance(value, expected) and not (kind == NUMBER and isinstance(value, bool))
        if isinstance(value, list):  # a list of text: each item too
            fits = fits and all(isinstance(item, str) for item in value)
        if value is None or fits:
            return value
        raise MeterError(f"config {self.path}: {name}: {value!r} is not {kind} (`meter config check` checks the whole file)")


def read_values(explicit: str | os.PathLike | None = None) -> Values:
    defaults, user, path = layers(explicit)
    return Values(merge(defaults, user), path)
