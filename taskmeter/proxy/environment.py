"""The environment that points AI clients at a running meter: `meter env` and `meter run`."""

import shlex
from pathlib import Path
from urllib.parse import quote

from taskmeter.config.files import ca_bundle, ca_cert

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


# What `meter env` set for the pytest plugin before `meter hooks install` installed
# it as a package: `meter env --unset` still removes them from a shell that has them.
PYTEST_VARIABLES = ("PYTEST_PLUGINS", "TASKMETER_PYTHON")

# HTTPS-proxy mode reaches every client of the shell (git, pip, curl): only on request.
PROXY_VARIABLES = (
    "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy",
    "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CODEX_CA_CERTIFICATE",
)  # fmt: skip


def client_environment(ca_folder: Path, listen: str, task_id: str | None = None, https_proxy: bool = True) -> dict[str, str]:
    """The base-URL variables, which only AI clients read; with `https_proxy`, also
    HTTPS_PROXY and the CA bundle (in `ca_folder`), which every client of the environment obeys."""
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
            # Gateway calls go straight to the meter, not through it as a proxy.
            "NO_PROXY": "127.0.0.1,localhost,::1",
            "no_proxy": "127.0.0.1,localhost,::1",
            "SSL_CERT_FILE": bundle,
            "REQUESTS_CA_BUNDLE": bundle,
            "CURL_CA_BUNDLE": bundle,
            "NODE_EXTRA_CA_CERTS": ca,
            "CODEX_CA_CERTIFICATE": bundle,  # Codex replaces its roots with this file
        }
    )
    return env


def render_unsets(names, shell: str) -> str:
    """The lines that remove `names` from a shell's environment."""
    if shell == "fish":
        return "\n".join(f"set -e {name};" for name in names)
    if shell == "powershell":
        return "\n".join(f"Remove-Item Env:{name} -ErrorAction SilentlyContinue" for name in names)
    return "unset " + " ".join(names)


def render_exports(env: dict[str, str], shell: str) -> str:
    lines = []
    for name, value in env.items():
        if shell == "fish":
            lines.append(f"set -gx {name} {shlex.quote(value)};")
        elif shell == "powershell":
            escaped = value.replace("'", "''")
            lines.append(f"$env:{name} = '{escaped}'")
        else:
            lines.append(f"export {name}={shlex.quote(value)}")
    return "\n".join(lines)
