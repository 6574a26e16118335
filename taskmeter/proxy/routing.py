"""Which calls are AI calls, which protocol they speak, and where they go."""

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

from taskmeter import protocols
from taskmeter.config import Settings
from taskmeter.protocols.record import GENERATE


@dataclass(frozen=True, slots=True)
class Endpoint:
    protocol: str
    operation: str  # generate | count_tokens | other


# Each protocol's routes (taskmeter/protocols/): a path ending, or a verb (`models/x:verb`).
_BY_VERB = {verb: Endpoint(p.name, operation) for p in protocols.ALL for verb, operation in p.verbs.items()}
_BY_ENDING = {ending: Endpoint(p.name, operation) for p in protocols.ALL for ending, operation in p.paths.items()}


def classify(method: str, path: str) -> Endpoint | None:
    """The protocol of a request from its method and path, or None when it is not
    a metered AI call (model listings, file uploads, ...). The path is judged as
    every common server may read it (`upstream_readings`): a call that any of them
    would serve as an AI call is metered."""
    if method.upper() != "POST":
        # GET /v1/responses/{id}?stream=true replays a response already metered.
        return None
    for reading in upstream_readings(path):
        endpoint = _classify_path(reading)
        if endpoint is not None:
            return endpoint
    return None


def websocket_endpoint(method: str, path: str, headers) -> Endpoint | None:
    """The Responses API over WebSocket: an upgrade (a GET) on a path where a POST
    would create a response (`/v1/responses`, `/backend-api/codex/responses`)."""
    if method.upper() != "GET" or headers.get("upgrade", "").lower() != "websocket":
        return None
    endpoint = classify("POST", path)
    return endpoint if endpoint == Endpoint("openai_responses", GENERATE) else None


def _classify_path(path: str) -> Endpoint | None:
    """By the path's ending first (Code Assist's `/v1internal:streamgeneratecontent`
    is a whole segment), else by the verb of a last segment `name:verb` (Gemini's)."""
    path = path.rstrip("/")
    by_ending = next((endpoint for ending, endpoint in _BY_ENDING.items() if path.endswith(ending)), None)
    last = path.rsplit("/", 1)[-1]
    if by_ending is not None or ":" not in last:
        return by_ending
    return _BY_VERB.get(last.rsplit(":", 1)[1])


_ESCAPED_SLASH = re.compile(r"%(2f|5c)", re.IGNORECASE)
_PATH_PARAMETERS = re.compile(r";[^/]*")
_SLASHES = re.compile(r"[/\\]+")


def upstream_readings(target: str) -> list[str]:
    """The path of a request target (query cut off) as upstream servers read it,
    lower-cased: percent-escapes decoded once (so `%2563` stays `%63`), dot
    segments removed (RFC 3986); also with runs of slashes and backslashes merged
    first (nginx, Go), with `%2F` kept as it is (servers that route on the escaped
    path), with `;parameters` dropped (Java servers), and with a `#` and what
    follows cut off (nginx). When servers differ, the meter takes every reading:
    metering a call no server serves costs nothing, missing one is a hole."""
    path = target.partition("?")[0]
    readings = []
    for base in dict.fromkeys((path, path.partition("#")[0])):
        readings += [
            unquote(base),
            _SLASHES.sub("/", unquote(base)),
            unquote(_ESCAPED_SLASH.sub(r"%25\1", base)),
            _SLASHES.sub("/", unquote(_PATH_PARAMETERS.sub("", base))),
        ]
    return list(dict.fromkeys(_remove_dot_segments(reading).lower() for reading in readings))


def _remove_dot_segments(path: str) -> str:
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if len(kept) > 1:  # never above the root
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    return "/".join(kept)


@dataclass(frozen=True, slots=True)
class GatewayTarget:
    provider: str
    scheme: str
    host: str
    port: int
    path: str  # upstream path, query included
    task_id: str | None


@dataclass(frozen=True, slots=True)
class Redirect:
    """Where the calls to an intercepted host go instead (`[intercept.redirect]`)."""

    scheme: str
    host: str
    port: int


# Logins a subscription pays for, not each token: their calls are priced at the
# API's list price and marked "api-equivalent" (docs/budgets.md). Known by the
# provider their host names (chatgpt.com, cloudcode-pa.googleapis.com) or, for
# Anthropic, by a claude.ai login's OAuth bearer token.
SUBSCRIPTION_PROVIDERS = frozenset({"chatgpt", "code_assist"})
_CLAUDE_OAUTH_BEARER = "bearer sk-ant-oat"


def subscription_login(provider: str, authorization: str | None) -> bool:
    """Whether a call is billed by a subscription: the one rule, read from the
    provider and the Authorization header (only its prefix: the token is never kept)."""
    prefix = (authorization or "")[: len(_CLAUDE_OAUTH_BEARER)]
    return provider in SUBSCRIPTION_PROVIDERS or prefix.lower() == _CLAUDE_OAUTH_BEARER


class GatewayError(ValueError):
    """An origin-form request that names no known upstream."""


# Upstreams whose API lives wholly under a version segment: Claude Code wants
# ANTHROPIC_BASE_URL without `/v1`, AI-SDK clients (opencode) append `/messages`
# to it and so need it with `/v1`; the gateway serves both from the one URL.
_API_VERSION = {"anthropic": "v1"}


def _versioned(upstream: str, tail: str) -> str:
    """`tail` with the upstream's version segment in front when no server would
    read one there already (the path goes on as it came, only prefixed)."""
    version = _API_VERSION.get(upstream)
    if version is None:
        return tail
    head = f"/{version}"
    if any(reading == head or reading.startswith(head + "/") for reading in upstream_readings("/" + tail)):
        return tail
    return f"{version}/{tail}"


def _host_pattern(glob: str) -> re.Pattern:
    # `*` stands for one or more characters inside one label.
    return re.compile("^" + re.escape(glob.lower()).replace(r"\*", "[^.]+") + "$")


def _host(parts: SplitResult) -> str:
    assert parts.hostname is not None  # the settings refuse a URL without a host
    return parts.hostname


class Router:
    def __init__(self, settings: Settings) -> None:
        self._upstreams: dict[str, tuple[str, str, int, str]] = {}
        for name, url in settings.upstreams.items():
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            self._upstreams[name] = (parts.scheme, _host(parts), port, parts.path.rstrip("/"))
        self._network_upstreams = set(settings.network_upstreams)
        self._hosts = [(_host_pattern(glob), provider) for glob, provider in settings.intercept.hosts.items()]
        for name, (_, host, _, _) in self._upstreams.items():
            self._hosts.insert(0, (_host_pattern(host), name))
        self._redirects = {}
        for host, url in settings.intercept.redirect.items():
            parts = urlsplit(url)
            self._redirects[host] = Redirect(parts.scheme, _host(parts), parts.port or (443 if parts.scheme == "https" else 80))

    def gateway(self, path: str, from_network: bool = False) -> GatewayTarget:
        """`/t/<TASK>/<upstream>/<rest>` or `/<upstream>/<rest>` to its upstream URL:
        the prefix is read percent-decoded, the rest goes upstream as it came. A
        client `from_network` (not on loopback) reaches only the upstreams the config
        file names, never a shipped default such as the loopback-only Ollama."""
        task_id = None
        rest = path
        segments = path.split("/", 3)
        if len(segments) > 2 and unquote(segments[1]) == "t":
            task_id = unquote(segments[2])
            rest = segments[3] if len(segments) > 3 else ""
        name, _, tail = rest.lstrip("/").partition("/")
        name = unquote(name)
        served = self._network_upstreams if from_network else self._upstreams
        if name not in served:
            known = ", ".join(f"/{n}/" for n in self._upstreams if n in served) or "none"
            if name in self._upstreams:
                raise GatewayError(
                    f"upstream {name!r} is served only to clients on this machine; to serve it to the network, "
                    "name it under [upstreams] in your config file (`meter config path`) and reload the proxy"
                )
            raise GatewayError(
                f"no upstream named {name!r} at this meter; use one of {known}, or add it under [upstreams] "
                "in the config file (`meter config path`) and reload the proxy (kill -HUP its pid)"
            )
        scheme, host, port, base = self._upstreams[name]
        return GatewayTarget(name, scheme, host, port, f"{base}/{_versioned(name, tail)}", task_id)

    def provider_for_host(self, host: str) -> str | None:
        host = host.lower().rstrip(".")
        for pattern, provider in self._hosts:
            if pattern.match(host):
                return provider
        return None

    def redirect_for(self, host: str) -> Redirect | None:
        """Where calls to `host` go instead, if the config redirects it."""
        return self._redirects.get(host.lower().rstrip("."))

    def allow_hosts(self) -> list[str]:
        """mitmproxy `allow_hosts` regexes: only these hosts are intercepted."""
        return [pattern.pattern.rstrip("$") + r"(:\d+)?$" for pattern, _ in self._hosts]


def host_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a numeric host names, in every form the system resolver takes
    (`127.1`, `0x7f000001`, `2130706433`, `[::ffff:127.0.0.1]`, IPv4-mapped as
    IPv4): parsed, never looked up. None for a name."""
    host = host.strip("[]").rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def is_loopback_host(host: str) -> bool:
    """A host that names this machine without DNS: `localhost` and its subdomains
    (RFC 6761), a loopback address, or the unspecified address (0.0.0.0, ::),
    which a connection takes to mean this machine."""
    name = host.lower().strip("[]").rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = host_address(name)
    return address is not None and (address.is_loopback or address.is_unspecified)
