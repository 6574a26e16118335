"""Validate settings whole: shipped defaults.toml, then the user's config.toml (files.py reads them).

Every default is defaults.toml's: a field has a default here only where the setting
may be left unset (None), which TOML cannot say."""

import ipaddress
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from taskmeter.config import files
from taskmeter.config.automation import branch_pattern_rule, coverage_target_rule
from taskmeter.errors import MeterError


class ProxySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen_host: str
    port: int = Field(ge=0, le=65535)
    inject_stream_usage: bool
    store_bodies: Literal["none", "text", "full"]
    retention_days: int = Field(ge=0)
    max_parsed_body_mb: int = Field(ge=1)
    max_pending_mb: float = Field(gt=0)
    shutdown_grace_seconds: float = Field(ge=0)
    websocket: Literal["meter", "refuse"]

    @field_validator("max_pending_mb")
    @classmethod
    def _fits_a_frame(cls, value: float) -> float:
        from taskmeter.handover.pipe import MAX_PENDING_MB

        if value > MAX_PENDING_MB:
            raise ValueError(f"at most {MAX_PENDING_MB} (a batch for the recorder must fit one frame of its pipe), not {value:g}")
        return value

    @property
    def parse_limit_bytes(self) -> int:
        """How much of a response is kept for parsing: `max_parsed_body_mb`, and at
        most a quarter of `max_pending_mb` (but 1 MB at least), so that one response
        never fills the hand-over alone: it would go to the spool, encoded in the
        proxy's own process, where it holds the event loop for seconds."""
        return int(min(self.max_parsed_body_mb, max(1, self.max_pending_mb / 4)) * 1024 * 1024)

    @field_validator("store_bodies", mode="before")
    @classmethod
    def _bodies_mode(cls, value):
        """Before texts, store_bodies was true or false: they mean "full" and "none"."""
        return {True: "full", False: "none"}.get(value, value) if isinstance(value, bool) else value

    # Clients beyond loopback that may use HTTPS-proxy mode and absolute-form
    # requests (CIDRs); all others may use only the gateway to [upstreams].
    allow_from: list[str]

    @field_validator("allow_from")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a network such as 192.168.1.0/24") from None
        return networks

    # Web pages (origins such as "http://localhost:5173") that may call through the
    # meter; requests from any other page are refused (docs/proxy.md, "Security").
    allowed_origins: list[str]

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        """Each as a browser sends it in `Origin`: scheme://host[:port], lower case."""
        normalised = []
        for origin in origins:
            parts = urlsplit(origin.lower())
            port = parts.port  # a port that is no number raises here
            extra = parts.path.strip("/") or parts.query or parts.fragment or "@" in parts.netloc
            if parts.scheme not in ("http", "https") or not parts.hostname or extra:
                raise ValueError(f"{origin!r} is not an origin such as http://localhost:5173 (scheme, host and port only)")
            default_port = port in (None, {"http": 80, "https": 443}[parts.scheme])
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            normalised.append(f"{parts.scheme}://{host}" + ("" if default_port else f":{port}"))
        return normalised

    # Where the proxy keeps its CA (key files 0600); default: the user data folder.
    confdir: Path | None = None
    # Extra CA file trusted for upstream TLS (e.g. a corporate or test CA).
    upstream_ca: Path | None = None


class InterceptSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hosts: dict[str, str]
    # An intercepted host -> the http(s)://address[:port] its calls are sent to instead.
    redirect: dict[str, str]

    @field_validator("redirect")
    @classmethod
    def _redirect_urls(cls, redirect: dict[str, str]) -> dict[str, str]:
        targets = {}
        for host, url in redirect.items():
            parts = urlsplit(url)
            try:
                port_ok = parts.port is None or parts.port > 0  # a port that is no number raises here
            except ValueError:
                port_ok = False
            if not port_ok or parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
                raise ValueError(f"redirect of {host!r} must be http://ADDRESS[:PORT] or https://ADDRESS[:PORT], not {url!r}")
            targets[host.lower().rstrip(".")] = url.rstrip("/")
        return targets


class RecordSettings(BaseModel):
    """How calls and activity become sessions and working time (docs/metrics.md)."""

    model_config = ConfigDict(extra="forbid")

    session_gap_minutes: float = Field(gt=0)
    idle_minutes: float = Field(gt=0)


class AutomationSettings(BaseModel):
    """What the git hooks and the pytest plugin read from a repository (docs/automation.md)."""

    model_config = ConfigDict(extra="forbid")

    branch_pattern: str
    main_branch: str
    coverage_target: float | None = None

    _target = field_validator("coverage_target")(coverage_target_rule)
    _pattern = field_validator("branch_pattern")(branch_pattern_rule)


class BudgetSettings(BaseModel):
    """Budgets and what spending one does (docs/budgets.md)."""

    model_config = ConfigDict(extra="forbid")

    on_budget_exceeded: Literal["warn", "block"]
    task_tokens: int | None = Field(default=None, gt=0)
    task_usd: float | None = Field(default=None, gt=0)
    # Whether the API-equivalent price of subscription calls spends USD budgets.
    count_subscription_usd: bool


class AlertSettings(BaseModel):
    """Runaway-agent and burn-rate alerts (docs/budgets.md)."""

    model_config = ConfigDict(extra="forbid")

    loop_calls: int = Field(ge=2)
    loop_minutes: float = Field(gt=0)
    on_loop: Literal["warn", "block"]
    burn_rate_k: float = Field(gt=0)
    alert_command: list[str]


class StatuslineSettings(BaseModel):
    """What `meter statusline` shows, in order (taskmeter/statusline.py ITEMS)."""

    model_config = ConfigDict(extra="forbid")

    show: list[str]

    @field_validator("show")
    @classmethod
    def _known_items(cls, show: list[str]) -> list[str]:
        from taskmeter.statusline import ITEMS

        for item in show:
            if item not in ITEMS:
                raise ValueError(f"{item!r} is not one of {', '.join(ITEMS)}")
            if show.count(item) > 1:
                raise ValueError(f"{item!r} is listed twice")
        return show


class OtelSettings(BaseModel):
    """OpenTelemetry export of stored calls (docs/telemetry.md)."""

    model_config = ConfigDict(extra="forbid")

    # The collector's OTLP/HTTP base URL (/v1/traces and /v1/metrics are appended);
    # unset: the standard OTEL_EXPORTER_OTLP_* variables decide, and without them nothing is exported.
    endpoint: str | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, endpoint: str | None) -> str | None:
        from taskmeter.telemetry import check_url

        return check_url(endpoint) if endpoint else None


class TeamSettings(BaseModel):
    """The team store this meter syncs to (docs/team.md)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    developer: str | None = None
    share_text: bool

    @field_validator("url")
    @classmethod
    def _postgresql_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        from taskmeter.team.address import checked_url

        try:
            return checked_url(url)
        except MeterError as exc:
            raise ValueError(str(exc)) from None


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    proxy: ProxySettings
    record: RecordSettings
    automation: AutomationSettings
    budgets: BudgetSettings
    alerts: AlertSettings
    statusline: StatuslineSettings
    upstreams: dict[str, str]
    intercept: InterceptSettings
    otel: OtelSettings
    team: TeamSettings
    # The [upstreams] the user's config file names (the others are shipped defaults):
    # only these are served to clients beyond loopback. Set by load_settings.
    _user_upstreams: frozenset[str] = PrivateAttr(default=frozenset())

    @field_validator("upstreams")
    @classmethod
    def _upstream_urls(cls, upstreams: dict[str, str]) -> dict[str, str]:
        for name, url in upstreams.items():
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"upstream name {name!r} must be letters, digits, - or _")
            if name == "t":
                raise ValueError("upstream name 't' is reserved for /t/<TASK>/ prefixes")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"upstream {name!r} must be an http:// or https:// URL, not {url!r}")
        return {name: url.rstrip("/") for name, url in upstreams.items()}

    @property
    def network_upstreams(self) -> list[str]:
        """The upstreams served to clients beyond loopback: those the config file names."""
        return [name for name in self.upstreams if name in self._user_upstreams]

    @property
    def confdir(self) -> Path:
        return files.ca_folder(self.proxy.confdir)

    def trusted_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        try:
            return [ipaddress.ip_network(network, strict=False) for network in self.proxy.allow_from]
        except ValueError as exc:
            raise MeterError(f"--allow-from: {exc}") from None

    @property
    def ca_cert(self) -> Path:
        return files.ca_cert(self.confdir)

    @property
    def ca_bundle(self) -> Path:
        return files.ca_bundle(self.confdir)


def load_settings(explicit: str | os.PathLike | None = None) -> Settings:
    defaults, user, path = files.layers(explicit)
    try:
        settings = Settings.model_validate(files.merge(defaults, user))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MeterError(f"config {path}: {where}: {first['msg']}") from None
    settings._user_upstreams = frozenset(user.get("upstreams", {}))
    return settings


def flat(settings: Settings) -> dict[str, object]:
    """Every setting by its dotted name (`proxy.port`, `upstreams.openai`)."""
    return _flatten(settings.model_dump(mode="json"))


def _flatten(table: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def settings_with_sources(explicit: str | os.PathLike | None = None) -> list[tuple[str, object, str]]:
    """Every effective setting as (dotted name, value, where it came from)."""
    settings = load_settings(explicit)  # valid, or a one-line error
    _, user, path = files.layers(explicit)
    from_file = _flatten(user)
    effective = flat(settings)
    effective["proxy.confdir"] = str(settings.confdir)  # the folder in use, also when it is the default
    return [(name, value, str(path) if name in from_file else "default") for name, value in effective.items()]
