"""Which calls are AI calls, which protocol they speak, and where they go."""

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from taskmeter.config import Settings


@dataclass(frozen=True, slots=True)
class Endpoint:
    protocol: str
    operation: str  # generate | count_tokens | other


_GENERATE, _COUNT, _OTHER = "generate", "count_tokens", "other"


def classify(method: str, path: str) -> Endpoint | None:
    """The protocol of a request from its method and path (query excluded), or None
    when it is not a metered AI call (model listings, file uploads, ...)."""
    if method != "POST":
        # GET /v1/responses/{id}?stream=true replays a response already metered.
        return None
    path = path.rstrip("/")
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        verb = last.rsplit(":", 1)[1]
        if verb in ("generateContent", "streamGenerateContent"):
            return Endpoint("gemini", _GENERATE)
        if verb == "countTokens":
            return Endpoint("gemini", _COUNT)
        if verb in ("rawPredict", "streamRawPredict"):  # Claude on Vertex AI
            return Endpoint("anthropic", _GENERATE)
        return None
    if path.endswith(("/chat/completions", "/completions")):
        return Endpoint("openai_chat", _GENERATE)
    if path.endswith("/responses/input_tokens"):
        return Endpoint("openai_responses", _COUNT)
    if path.endswith("/responses"):
        return Endpoint("openai_responses", _GENERATE)
    if path.endswith("/messages/count_tokens"):
        return Endpoint("anthropic", _COUNT)
    if path.endswith("/messages"):
        return Endpoint("anthropic", _GENERATE)
    if path.endswith(("/api/chat", "/api/generate")):
        return Endpoint("ollama", _GENERATE)
    if path.endswith(("/converse", "/converse-stream")):
        return Endpoint("bedrock", _GENERATE)
    if path.endswith("/embeddings"):
        return Endpoint("openai_chat", _OTHER)
    return None


@dataclass(frozen=True, slots=True)
class GatewayTarget:
    provider: str
    scheme: str
    host: str
    port: int
    path: str  # upstream path, query included
    task_id: str | None


class GatewayError(ValueError):
    """An origin-form request that names no known upstream."""


def _host_pattern(glob: str) -> re.Pattern:
    # `*` stands for one or more characters inside one label.
    return re.compile("^" + re.escape(glob.lower()).replace(r"\*", "[^.]+") + "$")


class Router:
    def __init__(self, settings: Settings) -> None:
        self._upstreams = {}
        for name, url in settings.upstreams.items():
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            self._upstreams[name] = (parts.scheme, parts.hostname, port, parts.path.rstrip("/"))
        self._hosts = [(_host_pattern(glob), provider) for glob, provider in settings.intercept.hosts.items()]
        for name, (_, host, _, _) in self._upstreams.items():
            self._hosts.insert(0, (_host_pattern(host), name))

    def gateway(self, path: str) -> GatewayTarget:
        """`/t/<TASK>/<upstream>/<rest>` or `/<upstream>/<rest>` to its upstream URL."""
        task_id = None
        rest = path
        if rest.startswith("/t/"):
            _, _, task_segment, rest = (rest.split("/", 3) + [""])[:4]
            task_id = unquote(task_segment)
            rest = "/" + rest
        name, _, tail = rest.lstrip("/").partition("/")
        if name not in self._upstreams:
            known = ", ".join(f"/{n}/" for n in self._upstreams)
            raise GatewayError(
                f"no upstream named {name!r} at this meter; use one of {known}, or add it under [upstreams] "
                "in the config file (`meter config path`) and reload the proxy (kill -HUP its pid)"
            )
        scheme, host, port, base = self._upstreams[name]
        return GatewayTarget(name, scheme, host, port, f"{base}/{tail}", task_id)

    def provider_for_host(self, host: str) -> str | None:
        host = host.lower().rstrip(".")
        for pattern, provider in self._hosts:
            if pattern.match(host):
                return provider
        return None

    def allow_hosts(self) -> list[str]:
        """mitmproxy `allow_hosts` regexes: only these hosts are intercepted."""
        return [pattern.pattern.rstrip("$") + r"(:\d+)?$" for pattern, _ in self._hosts]
