"""OpenTelemetry export of stored calls (docs/telemetry.md).

This module is light (no OpenTelemetry SDK): where export goes (`[otel] endpoint`
or the standard OTEL_EXPORTER_OTLP_* variables), the state file `meter status`
reads, and the OTEL_RESOURCE_ATTRIBUTES that `meter run` gives its command. The
exporter itself, which loads the SDK, is telemetry/otel.py, imported by the
recorder only when an endpoint is configured.
"""

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from taskmeter.errors import MeterError

TRACES_PATH = "v1/traces"
METRICS_PATH = "v1/metrics"
# The standard variables, in the OTel specification's order of precedence for each signal.
ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
SIGNAL_VARIABLES = {"traces": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "metrics": "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"}
PROTOCOL_VARIABLE = "OTEL_EXPORTER_OTLP_PROTOCOL"
SIGNAL_PROTOCOL_VARIABLES = {"traces": "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "metrics": "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"}
RESOURCE_VARIABLE = "OTEL_RESOURCE_ATTRIBUTES"


@dataclass(frozen=True)
class Endpoints:
    """The full OTLP/HTTP URLs spans and metrics go to; None: that signal is not exported."""

    traces: str | None
    metrics: str | None
    # Why a signal the variables name is not exported, a line each (said at proxy start).
    notes: tuple[str, ...] = ()

    def recorder_args(self) -> list[str]:
        """The recorder's command-line options for them."""
        args = []
        if self.traces:
            args += ["--otel-traces-endpoint", self.traces]
        if self.metrics:
            args += ["--otel-metrics-endpoint", self.metrics]
        return args


def check_url(url: str) -> str:
    """`url` when it is an http(s) URL with a host; raises ValueError saying what is wrong."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (a port that is no number raises here)
    except ValueError:
        raise ValueError(f"{url!r} has a port that is no number") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{url!r} is not an OTLP/HTTP endpoint such as http://localhost:4318")
    return url


def _with_path(base: str, path: str) -> str:
    """A signal's URL from a base endpoint, as the specification builds it: the path appended."""
    return base.rstrip("/") + "/" + path


def resolve(configured: str | None, environ: Mapping[str, str]) -> Endpoints:
    """Where calls are exported: `[otel] endpoint` (a base URL, /v1/traces and
    /v1/metrics appended) when set; otherwise the standard variables, each
    signal's own (used as it is) before OTEL_EXPORTER_OTLP_ENDPOINT (a base).
    Nothing when neither is set, or OTEL_SDK_DISABLED=true, and not a signal
    whose variables ask for gRPC (the meter speaks OTLP/HTTP: a note says so).
    A malformed URL is a one-line MeterError naming where it came from."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Endpoints(None, None)
    if configured:
        try:
            check_url(configured)
        except ValueError as exc:
            raise MeterError(f"otel.endpoint: {exc}") from None
        return Endpoints(_with_path(configured, TRACES_PATH), _with_path(configured, METRICS_PATH))
    found: dict[str, str | None] = {}
    notes = []
    for signal, path in (("traces", TRACES_PATH), ("metrics", METRICS_PATH)):
        own, base = environ.get(SIGNAL_VARIABLES[signal], "").strip(), environ.get(ENDPOINT_VARIABLE, "").strip()
        variable, url = (SIGNAL_VARIABLES[signal], own) if own else (ENDPOINT_VARIABLE, base and _with_path(base, path))
        try:
            found[signal] = check_url(url) if url else None
        except ValueError as exc:
            raise MeterError(f"{variable}: {exc}") from None
        protocol_variable = (
            SIGNAL_PROTOCOL_VARIABLES[signal] if environ.get(SIGNAL_PROTOCOL_VARIABLES[signal]) else PROTOCOL_VARIABLE
        )
        protocol = environ.get(protocol_variable, "").strip().lower()
        if found[signal] and protocol == "grpc":
            found[signal] = None
            notes.append(
                f"meter: {signal} are not exported to OpenTelemetry: {protocol_variable}=grpc, and the meter speaks "
                "OTLP/HTTP (set [otel] endpoint to the collector's HTTP port, 4318 by default)"
            )
    return Endpoints(found["traces"], found["metrics"], tuple(notes))


# ------------------------------------------------------------ export state, for `meter status`


def state_path(db_path: Path) -> Path:
    """Written by the recorder's exporter when export starts failing, recovers, or drops calls."""
    return db_path.with_name(db_path.name + ".telemetry.json")


def read_state(db_path: Path) -> dict | None:
    """What the running recorder's exporter last said, or None (no export runs, or it was never written)."""
    from taskmeter.store.proxies import meter_process_alive

    try:
        state = json.loads(state_path(db_path).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("pid"), int):
        return None
    return state if meter_process_alive(state["pid"]) else None


# What names an export problem where it is shown: `telemetry: ...` in `meter status`
# and the dashboard, the `telemetry` check of `meter doctor`.
PROBLEM_LABEL = "telemetry"


def export_problems(state: dict | None, moment) -> list[str]:
    """What the running recorder's export state (read_state) says is wrong, a line
    each (after PROBLEM_LABEL), as `meter status`, `meter doctor` and the dashboard
    show it; `moment` writes a stored timestamp for the reader."""
    state = state or {}
    lines = [
        f"export to {url} failing since {moment(failing['since'])} ({failing['cause']}); calls are recorded here all the same"
        for url, failing in state.get("failing", {}).items()
    ]
    if state.get("dropped_calls"):
        lines.append(
            f"{state['dropped_calls']} stored calls were not exported (the export queue was full, or export could not run)"
        )
    return lines


# ------------------------------------------------------------ the agent's own telemetry


def resource_attributes(existing: str | None, attributes: Mapping[str, str | None]) -> str:
    """OTEL_RESOURCE_ATTRIBUTES with `attributes` set (values percent-encoded, as
    the specification requires), over an existing value whose other entries stay."""
    entries: dict[str, str] = {}
    for entry in (existing or "").split(","):
        key, equals, value = entry.partition("=")
        if equals and key.strip():
            entries[key.strip()] = value.strip()
    for name, setting in attributes.items():
        if setting is not None:
            entries[name] = quote(setting, safe="")
    return ",".join(f"{key}={value}" for key, value in entries.items())


def developer() -> str | None:
    """Who makes the calls: `git config user.email`; None without git or the setting."""
    import subprocess

    try:
        found = subprocess.run(
            ["git", "config", "--get", "user.email"], capture_output=True, text=True, timeout=5, env={**os.environ, "LC_ALL": "C"}
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None
