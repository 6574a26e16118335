"""Behind a corporate proxy: the meter reaches its upstreams through the HTTPS_PROXY
it found when it started (mitmproxy's upstream mode), unless that is the meter
itself. Hosts the NO_PROXY it found names, and this machine's loopback (which no
corporate proxy can reach: a local ollama, a test server), are reached directly.

A shell that `meter env --https-proxy` pointed at a meter has the corporate
values recorded (METER_SAVED_HTTPS_PROXY, ...): those are the ones chained to.
"""

import base64
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast
from urllib.parse import unquote, urlsplit

from mitmproxy import connection, http
from mitmproxy.net.server_spec import ServerSpec

from taskmeter.proxy.environment import earlier_value
from taskmeter.proxy.routing import host_address, is_loopback_host

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorporateProxy:
    scheme: Literal["http", "https"]
    host: str
    port: int
    authorization: str | None  # Proxy-Authorization for the user:password in its URL
    no_proxy: str

    @property
    def mode(self) -> str:
        """mitmproxy's mode spec: upstream:http://host:port."""
        return f"upstream:{self.scheme}://{self.shown_address}"

    @property
    def shown_address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def corporate_proxy(environ: Mapping[str, str], own_port: int) -> CorporateProxy | None:
    """The proxy that HTTPS_PROXY (or https_proxy) names, as it was before any `meter env`,
    unless it is a meter: this one (our port on loopback) or one `meter env --task` names."""
    url = earlier_value("HTTPS_PROXY", environ) or earlier_value("https_proxy", environ)
    if not url:
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        log.warning("meter: HTTPS_PROXY %s is no http:// or https:// proxy address; upstreams are reached directly", ascii(url))
        return None
    if parts.username == "task" or (is_loopback_host(parts.hostname) and port == own_port):
        return None  # a meter's own address: chaining to it would loop
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
    no_proxy = ",".join(filter(None, (earlier_value(name, environ) for name in ("NO_PROXY", "no_proxy"))))
    return CorporateProxy(cast(Literal["http", "https"], parts.scheme), parts.hostname, port, authorization, no_proxy)


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return None


class UpstreamChain:
    """Each server connection goes through the corporate proxy, or directly to a
    loopback or NO_PROXY host; the proxy's credentials go to the proxy alone."""

    def __init__(self, proxy: CorporateProxy) -> None:
        self._proxy = proxy
        self._via: ServerSpec = (proxy.scheme, (proxy.host, proxy.port))
        # NO_PROXY as curl and requests read it: `*`, a name and its subdomains (with or without a leading dot), a network.
        entries = [entry.strip().lower().lstrip("*").lstrip(".") for entry in proxy.no_proxy.split(",")]
        self._names = tuple(entry for entry in entries if entry and not _network(entry))
        self._networks = [network for entry in entries if (network := _network(entry))]
        self._everything = "*" in (entry.strip() for entry in proxy.no_proxy.split(","))
        self._direct: dict[str, bool] = {}  # per host: a few hosts, looked up on each call

    def _is_direct(self, host: str) -> bool:
        direct = self._direct.get(host)
        if direct is None:
            name, address = host.lower().rstrip("."), host_address(host)
            direct = (
                self._everything
                or is_loopback_host(host)
                or any(name == entry or name.endswith("." + entry) for entry in self._names)
                or (address is not None and any(address in network for network in self._networks))
            )
            self._direct[host] = direct
        return direct

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        request = flow.request
        via = None if self._is_direct(request.host) else self._via
        if flow.server_conn.via != via:
            if flow.server_conn.timestamp_start is not None:  # an open connection keeps its route
                flow.server_conn = connection.Server(address=flow.server_conn.address)
            flow.server_conn.via = via
        # What a client sent the meter for itself is no credential of the corporate proxy's.
        request.headers.pop("proxy-authorization", None)
        if via is not None and request.scheme == "http":
            # Plain HTTP goes to the proxy in absolute form, with its credentials (HTTPS: in the CONNECT).
            request.authority = f"{request.host}:{request.port}"
            if self._proxy.authorization:
                request.headers["proxy-authorization"] = self._proxy.authorization
        elif request.scheme == "http":
            request.authority = ""

    def http_connect_upstream(self, flow: http.HTTPFlow) -> None:
        """The CONNECT the meter sends the corporate proxy."""
        if self._proxy.authorization:
            flow.request.headers["proxy-authorization"] = self._proxy.authorization
