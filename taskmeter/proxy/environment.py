"""The environment that points AI clients at a running meter: `meter env` and `meter run`.

`meter env` records what it replaces, so that `meter env --unset` puts the shell
back as it was: METER_SAVED_<NAME> holds a variable's earlier value, and
METER_WAS_UNSET names the variables that had none. A variable already recorded
keeps its record, so that running `meter env` twice never saves the meter's own
value as the earlier one.
"""

import re
import shlex
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from taskmeter.config.files import ca_bundle, ca_cert
from taskmeter.telemetry import RESOURCE_VARIABLE

# Base-URL variables the common clients read, and the gateway path each needs.
BASE_URL_VARIABLES = {
    "OPENAI_BASE_URL": "/openai/v1",  # openai SDKs, many OpenAI-compatible tools
    "ANTHROPIC_BASE_URL": "/anthropic",  # anthropic SDKs, Claude Code (no /v1)
    "GOOGLE_GEMINI_BASE_URL": "/gemini",  # google-genai
    "OLLAMA_HOST": "/ollama",  # ollama CLI and libraries
}


# `meter doctor` asks it of the gateway: the proxy answers itself, nothing leaves the machine.
PING_PATH = "/_meter/ping"


def proxy_origin(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def meter_answers(listen: str, timeout: float = 0.04) -> bool:
    """Whether a meter proxy answers on `listen`, within `timeout` seconds all told
    (by default 40 ms, so that `meter env` spends at most about 50 ms on it):
    the port accepts a connection, and what answers its ping, if anything does in
    time, is a meter (a busy meter may take longer; a server that is not one says
    so at once). A raw request on a socket, so that `meter env` imports no HTTP library."""
    deadline = time.monotonic() + timeout
    host, _, port = proxy_origin(listen).removeprefix("http://").rpartition(":")
    host = host.strip("[]")
    # An ASCII host as bytes, which getaddrinfo takes (the stubs say str only): it would encode a str with
    # the idna codec, which loads stringprep and unicodedata (milliseconds of `meter env`) for ASCII already.
    address = host.encode("ascii") if host.isascii() else host
    try:
        probe = socket.create_connection((address, int(port)), timeout=timeout)  # type: ignore[arg-type]
    except OSError:  # refused, or nothing accepts in time
        return False
    with probe:
        answer = b""
        try:
            probe.sendall(f"GET {PING_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            while b'"meter"' not in answer:
                probe.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = probe.recv(4096)
                if not chunk or not (answer + chunk).startswith(b"HTTP/1.1 200"[: len(answer + chunk)]):
                    return False  # closed without the meter's answer, or another server answered
                answer += chunk
        except TimeoutError:
            return True  # accepts, and has said nothing that is not a meter's yet
        except OSError:  # reset
            return False
    return True


# What `meter env` set for the pytest plugin before `meter hooks install` installed
# it as a package: `meter env --unset` still removes our part from a shell that has it.
PYTEST_PLUGIN = "taskmeter_pytest"
LEGACY_PYTEST_VARIABLE = "TASKMETER_PYTHON"

# HTTPS-proxy mode reaches every client of the shell (git, pip, curl): only on request.
PROXY_VARIABLES = (
    "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy",
    "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CODEX_CA_CERTIFICATE",
)  # fmt: skip
NO_PROXY_VARIABLES = ("NO_PROXY", "no_proxy")
# Gateway calls go straight to the meter, not through it as a proxy.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")

SAVED_PREFIX = "METER_SAVED_"
WAS_UNSET = "METER_WAS_UNSET"
# Set by `meter env --task` to the shell's own entries and the task's (telemetry.resource_attributes):
# never the meter's alone, so only a record says what to put back.
TASK_VARIABLES = (RESOURCE_VARIABLE,)


def merged_no_proxy(*earlier: str | None) -> str:
    """The NO_PROXY entries a shell had (a corporate one's intranet hosts), then the loopback names."""
    entries = [entry.strip() for value in earlier if value for entry in value.split(",")]
    return ",".join(dict.fromkeys(entry for entry in [*entries, *LOOPBACK_NAMES] if entry))


def client_environment(
    ca_folder: Path, listen: str, task_id: str | None = None, https_proxy: bool = True, no_proxy: str | None = None
) -> dict[str, str]:
    """The base-URL variables, which only AI clients read; with `https_proxy`, also
    HTTPS_PROXY and the CA bundle (in `ca_folder`), which every client of the environment
    obeys, and NO_PROXY: the loopback names after the entries of the earlier `no_proxy`."""
    origin = proxy_origin(listen)
    prefix = f"/t/{quote(task_id, safe='')}" if task_id else ""
    env = {name: origin + prefix + path for name, path in BASE_URL_VARIABLES.items()}
    if not https_proxy:
        return env
    proxy = origin
    if task_id:
        scheme, rest = origin.split("://", 1)
        proxy = f"{scheme}://task:{quote(task_id, safe='')}@{rest}"
    bundle, ca = str(ca_bundle(ca_folder)), str(ca_cert(ca_folder))
    env.update(
        {
            "HTTPS_PROXY": proxy,
            "https_proxy": proxy,
            "NO_PROXY": merged_no_proxy(no_proxy),
            "no_proxy": merged_no_proxy(no_proxy),
            "SSL_CERT_FILE": bundle,
            "REQUESTS_CA_BUNDLE": bundle,
            "CURL_CA_BUNDLE": bundle,
            "NODE_EXTRA_CA_CERTS": ca,
            "CODEX_CA_CERTIFICATE": bundle,  # Codex replaces its roots with this file
        }
    )
    return env


def _without_task(value: str) -> str:
    """A meter URL without its task: `/t/TASK/` in a base URL, `task:TASK@` in a proxy URL."""
    return re.sub(r"//task:[^@/]*@", "//", re.sub(r"/t/[^/]+/", "/", value))


def _is_the_meters(name: str, value: str, meter: Mapping[str, str]) -> bool:
    """Whether `value` of `name` is what a `meter env` that kept no record (one
    before records were kept) set, for any task. NO_PROXY's loopback names are too common to tell."""
    if name not in meter or name in NO_PROXY_VARIABLES or name in TASK_VARIABLES:
        return False
    return _without_task(value) == _without_task(meter[name])


def earlier_value(name: str, current: Mapping[str, str]) -> str | None:
    """`name`'s value before `meter env`, as recorded, else its value now."""
    if name in current.get(WAS_UNSET, "").split():
        return None
    return current.get(SAVED_PREFIX + name, current.get(name))


def entering(meter: dict[str, str], current: Mapping[str, str]) -> dict[str, str | None]:
    """What `meter env` changes in a shell whose environment is `current`: the
    variables of `meter`, and the record of what each replaces. A task's variable
    (TASK_VARIABLES) that an earlier `meter env --task` set and `meter` does not
    goes back to its recorded value, as --unset puts it: no stale task stays."""
    was_unset = current.get(WAS_UNSET, "").split()
    changes: dict[str, str | None] = dict(meter)
    for name in TASK_VARIABLES:
        if name in meter:
            continue
        if SAVED_PREFIX + name in current:
            changes[name], changes[SAVED_PREFIX + name] = current[SAVED_PREFIX + name], None
        elif name in was_unset:
            was_unset.remove(name)
            if name in current:
                changes[name] = None
    for name in meter:
        if SAVED_PREFIX + name in current or name in was_unset:
            continue  # recorded by an earlier `meter env`
        earlier = current.get(name)
        if earlier is None or _is_the_meters(name, earlier, meter):
            was_unset.append(name)
        else:
            changes[SAVED_PREFIX + name] = earlier
    if was_unset != current.get(WAS_UNSET, "").split():
        changes[WAS_UNSET] = " ".join(was_unset) or None
    return changes


def leaving(meter: dict[str, str], current: Mapping[str, str]) -> dict[str, str | None]:
    """What `meter env --unset` changes (None: unset): each variable `meter env`
    set goes back to its recorded value, or away if it had none; a variable without
    a record only if it holds the meter's value (`meter` is every variable `meter env`
    may set but the task's, TASK_VARIABLES, which only a record names). Everything else stays as it is."""
    was_unset = current.get(WAS_UNSET, "").split()
    changes: dict[str, str | None] = {}
    for name in dict.fromkeys([*meter, *TASK_VARIABLES]):
        saved = current.get(SAVED_PREFIX + name)
        if saved is not None:
            changes[name] = saved
            changes[SAVED_PREFIX + name] = None
        elif name in current and (name in was_unset or _is_the_meters(name, current[name], meter)):
            changes[name] = None
    plugins = current.get("PYTEST_PLUGINS")
    if plugins is not None and PYTEST_PLUGIN in (entries := [entry.strip() for entry in plugins.split(",")]):
        others = ",".join(entry for entry in entries if entry and entry != PYTEST_PLUGIN)
        changes["PYTEST_PLUGINS"] = others or None
    for name in (LEGACY_PYTEST_VARIABLE, WAS_UNSET):
        if name in current:
            changes[name] = None
    return changes


_PLAIN = re.compile(r"[\w@%+=:,./-]+", re.ASCII)  # what needs no quotes (as shlex.quote has it)


def _quoted(value: str, shell: str) -> str:
    if shell == "fish":  # in fish's single quotes, \\ and \' are escapes
        if _PLAIN.fullmatch(value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if shell == "powershell":  # PowerShell takes typographic single quotes for quotes too
        return "'" + re.sub("(['\u2018\u2019\u201a\u201b])", r"\1\1", value) + "'"
    return shlex.quote(value)


def render(changes: Mapping[str, str | None], shell: str) -> str:
    """The lines that make `changes` in a shell: set each variable to its value, unset those that are None."""
    lines = []
    for name, value in changes.items():
        if value is None:
            continue
        if shell == "fish":
            lines.append(f"set -gx {name} {_quoted(value, shell)};")
        elif shell == "powershell":
            lines.append(f"$env:{name} = {_quoted(value, shell)}")
        else:
            lines.append(f"export {name}={_quoted(value, shell)}")
    unset = [name for name, value in changes.items() if value is None]
    if shell == "fish":
        lines += [f"set -e {name};" for name in unset]
    elif shell == "powershell":
        lines += [f"Remove-Item Env:{name} -ErrorAction SilentlyContinue" for name in unset]
    elif unset:
        lines.append("unset " + " ".join(unset))
    return "\n".join(lines)
