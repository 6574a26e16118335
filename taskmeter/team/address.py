"""The team store's address and connections: a postgresql:// URL that holds no
password (libpq finds it in PGPASSFILE, ~/.pgpass or a service file), and one
clear line for each way connecting fails."""

import subprocess
from urllib.parse import urlsplit

from taskmeter.errors import MeterError

CONNECT_TIMEOUT_SECONDS = 5


class TeamStoreError(MeterError):
    """The team store cannot be used now; the message is one line for `meter team status`."""


def checked_url(url: str) -> str:
    """A postgresql:// (or postgres://) URL without a password, else a one-line error."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("postgresql", "postgres"):
        raise MeterError(f"{url!r} is not a postgresql:// URL (postgresql://ROLE@HOST[:PORT]/DATABASE)")
    try:
        _ = parts.port  # a port that is no number raises here
    except ValueError:
        raise MeterError(f"{url!r} has a port that is not a number") from None
    if parts.password is not None:
        raise MeterError(
            "the team store's URL must not hold a password: put it in PGPASSFILE (~/.pgpass) or a libpq service file"
        )
    return url.strip()


def describe(url: str) -> str:
    """The URL as a person reads it: role@host:port/database (never a password: it has none)."""
    parts = urlsplit(url)
    where = parts.hostname or "localhost"
    if parts.port:
        where += f":{parts.port}"
    return f"{parts.username + '@' if parts.username else ''}{where}{parts.path or ''}"


def default_developer() -> str | None:
    """`git config user.email`, or None where git or the setting is missing."""
    try:
        found = subprocess.run(["git", "config", "user.email"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


def connect(url: str, autocommit: bool = False, **options):
    """A connection to the team store, or TeamStoreError in one line."""
    import psycopg

    try:
        return psycopg.connect(
            url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_SECONDS, application_name="taskmeter", **options
        )
    except psycopg.Error as exc:
        raise TeamStoreError(connection_failure(exc, url)) from None


def connection_failure(exc: Exception, url: str) -> str:
    """One line for why connecting to (or talking with) the team store failed."""
    text = " ".join(str(exc).split())
    where = describe(url)
    lowered = text.lower()
    if "password authentication failed" in lowered or "authentication failed" in lowered:
        return f"the team store at {where} refused the password (check PGPASSFILE or ~/.pgpass)"
    if "no password supplied" in lowered or "fe_sendauth" in lowered:
        return f"no password for the team store at {where}: add it to PGPASSFILE (~/.pgpass) or a libpq service file"
    if "does not exist" in lowered and "database" in lowered:
        return f"the team store at {where} has no such database ({text})"
    if "role" in lowered and "does not exist" in lowered:
        return f"the team store at {where} has no such role: the admin runs `meter team setup --developer NAME`"
    if any(
        sign in lowered
        for sign in ("connection refused", "could not translate", "timeout expired", "no route", "network is unreachable")
    ):
        return f"cannot reach the team store at {where} (is the server running, and the URL right?)"
    if "service" in lowered and ("not found" in lowered or "definition" in lowered):
        return f"the libpq service of {url!r} is not defined ({text})"
    return f"the team store at {where}: {text}"
