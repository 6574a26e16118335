"""The settings as the files say them: the shipped defaults.toml, the user's
config.toml over it. Nothing here validates (that is settings.py, with pydantic,
which `meter config check`, `meter proxy` and `meter doctor` run): a command that
only reads takes the few values it needs from `read_values`, each checked to be
of the kind it computes with, and starts without pydantic."""

import os
import tomllib
from pathlib import Path

from taskmeter.errors import MeterError
from taskmeter.private import refuse_if_others_may_write

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


def defaults_text() -> str:
    # Beside this module (package data), read without importlib.resources: the status line reads it too.
    return Path(__file__).with_name("defaults.toml").read_text()


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
    defaults = tomllib.loads(defaults_text())
    path = config_path(explicit)
    user: dict = {}
    if path.exists():
        # It names commands the meter runs (alert_command) and where API keys go (upstreams).
        refuse_if_others_may_write(path, "config")
        try:
            user = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise MeterError(f"cannot read config {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise MeterError(f"config {path} is not valid TOML: {exc}") from None
    elif named_config(explicit):
        raise missing_config(path)
    return defaults, user, path


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
