"""`meter proxy`: an embedded mitmproxy master with the meter addon, in the foreground."""

import asyncio
import errno
import gc
import importlib.util
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import certifi
import mitmproxy
from mitmproxy import options

from taskmeter import ctrl_c, telemetry
from taskmeter.config import Settings
from taskmeter.config.settings import AlertSettings, BudgetSettings, flat
from taskmeter.errors import MeterError
from taskmeter.handover.pipe import Handover, RunAccount
from taskmeter.ids import new_id
from taskmeter.logs import configure_logging
from taskmeter.money import usd
from taskmeter.private import private_dir
from taskmeter.proxy import upstream_errors
from taskmeter.proxy.addons import Capture, Gateway, TaskAttribution
from taskmeter.proxy.chain import CorporateProxy, UpstreamChain
from taskmeter.proxy.refusals import Guard
from taskmeter.proxy.routing import Router
from taskmeter.proxy.websocket import ResponsesWebSocket
from taskmeter.store import connection, proxies

if TYPE_CHECKING:
    from mitmproxy.master import Master

log = logging.getLogger(__name__)


def _check_port_free(host: str, port: int) -> None:
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MeterError(
                    f"port {port} on {host} is already in use: is another `meter proxy` running? Try --port"
                ) from None
            raise MeterError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def exposure_warning(settings: Settings, listen_host: str) -> str | None:
    """What a listening address beyond loopback opens to the network, or None on loopback."""
    if ipaddress.ip_address(socket.gethostbyname(listen_host)).is_loopback:
        return None
    served = ", ".join(f"/{name}/" for name in settings.network_upstreams)
    gateway = (
        f"the gateway to {served} (the [upstreams] your config file names)"
        if served
        else "the gateway, to no upstream yet (name them under [upstreams] in your config file)"
    )
    if not settings.proxy.allow_from:
        return (
            f"meter: warning: listening on {listen_host}: clients not on loopback may use only {gateway}; "
            "no HTTPS_PROXY, no other hosts; --allow-from CIDR lets a network do more"
        )
    networks = ", ".join(settings.proxy.allow_from)
    return (
        f"meter: warning: listening on {listen_host}: clients not on loopback may use {gateway}; "
        f"those in {networks} may also use it as an HTTPS proxy (to any host but this machine's loopback services)"
    )


def _addon_modules_alone() -> None:
    """`mitmproxy.addons.NAME` then loads that addon's module alone: the package's own
    module loads all 31 of mitmproxy's default addons (flask for its mitm.it page, ldap3
    for proxy logins, ...), a fifth of a second of CPU at every start, for the six the meter
    runs. A process that already loaded the package (a test's) keeps it as it is."""
    if "mitmproxy.addons" in sys.modules:
        return
    spec = importlib.util.find_spec("mitmproxy.addons")
    assert spec is not None
    package = importlib.util.module_from_spec(spec)  # its __path__, without running its module
    sys.modules["mitmproxy.addons"] = mitmproxy.addons = package


def lean_master(opts: options.Options) -> "Master":
    """mitmproxy's master with only the addons a meter runs, in the order DumpMaster adds
    them: blocking clients from public addresses (block_global), no h2c upgrades, the proxy
    server, the choice of protocol layers (allow_hosts), TLS interception with the meter's
    CA, and the exit when start-up logged an error. DumpMaster's other addons do nothing
    with the options the meter sets (replays, scripts, maps, saving flows, proxy and upstream
    logins, DNS, the mitm.it page, its command history), so a meter does without them."""
    _addon_modules_alone()
    from mitmproxy.addons import block, disable_h2c, errorcheck, next_layer, proxyserver, tlsconfig
    from mitmproxy.master import Master

    master = Master(opts, with_termlog=False)
    master.addons.add(
        block.Block(),
        disable_h2c.DisableH2C(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(),
    )
    return master


class Announcer:
    """Once mitmproxy listens: register in the database, secure the CA, say where we are."""

    def __init__(self, settings: Settings, db_path: Path, proxy_id: str, ready) -> None:
        self._settings = settings
        self._db_path = db_path
        self._proxy_id = proxy_id
        self._ready = ready

    async def running(self) -> None:
        from mitmproxy import ctx

        server = ctx.master.addons.get("proxyserver")
        host, port = server.listen_addrs()[0][:2]
        # File and database work, once: in a thread, so no hook blocks the event loop.
        await asyncio.to_thread(self._announce, f"{host}:{port}")
        # What was made to start the proxy lives as long as it does: kept out of
        # the collector's full passes, each of which held the event loop 50-80 ms.
        # The collector was off during the start (cli/proxy.py): on from here.
        gc.freeze()
        gc.enable()
        self._ready(host, port)

    def _announce(self, listen: str) -> None:
        self._secure_ca()
        db = connection.connect(self._db_path)
        try:
            proxies.register(db, self._proxy_id, listen)
        finally:
            db.close()

    def _secure_ca(self) -> None:
        confdir = self._settings.confdir
        os.chmod(confdir, 0o700)
        for path in confdir.iterdir():
            if path.is_file() and path.suffix in (".pem", ".p12", ".cer"):
                os.chmod(path, 0o600)
        # httpx and requests *replace* their CA list with SSL_CERT_FILE: give them
        # the usual public roots plus the meter's CA.
        bundle = Path(certifi.where()).read_text() + "\n" + self._settings.ca_cert.read_text()
        target = self._settings.ca_bundle
        temporary = target.with_suffix(".tmp")
        temporary.write_text(bundle)
        os.chmod(temporary, 0o600)
        os.replace(temporary, target)


def _quiet_about_cancelled_connections(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """Connections cancelled at shutdown are expected; anything else is reported."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


class GracefulStop:
    """The first Ctrl-C or SIGTERM stops accepting calls and lets those in flight
    finish, up to the grace period; a second signal, or the end of the grace
    period, cuts the rest, which are recorded as aborted."""

    def __init__(
        self, master: "Master", gateway: Gateway, capture: Capture, sockets: ResponsesWebSocket, grace_seconds: float
    ) -> None:
        self._master = master
        self._gateway = gateway
        self._capture = capture
        self._sockets = sockets
        self.grace = grace_seconds
        self._drain: asyncio.Task | None = None

    def _in_flight(self) -> int:
        return len(self._capture.live) + self._sockets.in_flight()

    def signalled(self) -> None:
        if self._gateway.draining or not self._in_flight() or self.grace <= 0:
            self._cut()
            return
        self._gateway.draining = True
        self._master.options.update(server=False)  # closes the listening socket; connections stay
        log.warning(
            "meter: stopping: %d call(s) in flight may finish within %.0f s (Ctrl-C again to cut them)",
            self._in_flight(),
            self.grace,
        )
        self._drain = asyncio.get_running_loop().create_task(self._wait_for_calls())

    async def _wait_for_calls(self) -> None:
        deadline = time.monotonic() + self.grace
        while self._in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._cut()

    def _cut(self) -> None:
        self._capture.shutting_down = True
        self._master.shutdown()


class ConfigReload:
    """SIGHUP: read the config file again. Upstreams, intercepted hosts,
    allow_from, usage injection, the parse limit and the grace period apply at
    once; settings the running proxy cannot change are named ("restart to apply").
    A file that does not validate changes nothing."""

    NEEDS_RESTART = (
        "proxy.listen_host", "proxy.port", "proxy.confdir", "proxy.upstream_ca", "proxy.store_bodies", "proxy.retention_days",
        "proxy.max_pending_mb", "record.session_gap_minutes", "record.idle_minutes", "otel.endpoint",
        *(f"budgets.{name}" for name in BudgetSettings.model_fields),
        *(f"alerts.{name}" for name in AlertSettings.model_fields),
    )  # fmt: skip

    def __init__(self, load, settings: Settings, master: "Master", addons: list, stop: "GracefulStop") -> None:
        self._load = load
        self._settings = settings
        self._master = master
        self._addons = addons
        self._stop = stop

    def signalled(self) -> None:
        try:
            new = self._load()
        except MeterError as exc:
            log.error("meter: config not reloaded, nothing changed: %s", exc)
            return
        before, after = flat(self._settings), flat(new)
        changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
        later = [name for name in changed if name in self.NEEDS_RESTART]
        now = [name for name in changed if name not in self.NEEDS_RESTART]
        for addon in self._addons:
            addon.apply_settings(new)
        self._master.options.update(allow_hosts=Router(new).allow_hosts())
        self._stop.grace = new.proxy.shutdown_grace_seconds
        self._settings = new
        log.warning("meter: config reloaded: %s", ", ".join(now) + " applied" if now else "no change to apply")
        if later:
            log.warning("meter: restart to apply: %s", ", ".join(later))


def guard_settings(settings: Settings) -> str:
    """What the recorder's Guard needs of the settings, as its --guard argument."""
    return json.dumps(
        {
            "budgets": settings.budgets.model_dump(),
            "alerts": settings.alerts.model_dump(),
            "idle_seconds": settings.record.idle_minutes * 60,
        }
    )


async def _serve(
    settings: Settings, db_path: Path, host: str, port: int, ready, quiet: bool, reload_settings, corporate: CorporateProxy | None
) -> None:
    ctrl_c.release()  # a Ctrl-C held since run_proxy began lands here (status 130, as before listening)
    private_dir(settings.confdir)
    export = telemetry.resolve(settings.otel.endpoint, os.environ)  # a malformed URL is a one-line error, before we start
    for note in export.notes:
        log.warning("%s", note)
    if export.traces or export.metrics:
        log.info(
            "meter: stored calls are exported to OpenTelemetry: %s", ", ".join(filter(None, [export.traces, export.metrics]))
        )
    proxy_id = new_id()
    loop = asyncio.get_running_loop()
    guard = Guard(loop)
    handover = Handover(
        db_path,
        [
            *("--store-bodies", settings.proxy.store_bodies),
            *("--retention-days", str(settings.proxy.retention_days)),
            *("--session-gap-minutes", str(settings.record.session_gap_minutes)),
            *("--guard", guard_settings(settings)),
            *export.recorder_args(),
        ],
        proxy_id,
        int(settings.proxy.max_pending_mb * 1024 * 1024),
        # A copy of our stdout: in the recorder, fd 1 is the acknowledgement pipe.
        live_view_fd=None if quiet else os.dup(sys.stdout.fileno()),
        on_guard_state=guard.take_state,
        urgent=lambda: guard.counts_in_flight,
    )
    started = time.monotonic()
    # From the recorder's start, a SIGTERM (`meter stop`, an interrupted `meter start`) waits for the
    # loop, which hands it to the handler set below once the proxy is made (nothing between awaits):
    # by default it would end the process on the spot, leaving the recorder's health file and no summary.
    loop.add_signal_handler(signal.SIGTERM, lambda: None)
    handover.start()
    try:  # from here on, whatever ends the run (Ctrl-C during start-up too) hands over what was seen
        mode = corporate.mode if corporate else "regular"
        opts = options.Options(listen_host=host, listen_port=port, mode=[mode], confdir=str(settings.confdir))
        master = lean_master(opts)
        master.options.update(
            # Both sides HTTP/1.1, server connections opened per request: proper 502s
            # and error hooks, and no h2->h1 close-delimited responses.
            connection_strategy="lazy",
            http2=False,
            allow_hosts=Router(settings).allow_hosts(),
            ssl_verify_upstream_trusted_ca=str(settings.proxy.upstream_ca) if settings.proxy.upstream_ca else None,
            # Long agent streams can idle between events.
            tcp_timeout=1800,
        )
        gateway, capture = Gateway(settings), Capture(settings, handover.submit)
        sockets = ResponsesWebSocket(settings, handover.submit, guard)
        upstream_errors.install()
        chain = [UpstreamChain(corporate)] if corporate else []  # after the Gateway, which sets where a call goes
        master.addons.add(
            gateway, *chain, TaskAttribution(), capture, sockets, guard, Announcer(settings, db_path, proxy_id, ready)
        )

        stop = GracefulStop(master, gateway, capture, sockets, settings.proxy.shutdown_grace_seconds)
        reload = ConfigReload(reload_settings, settings, master, [gateway, capture, sockets], stop)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.signalled)
        loop.add_signal_handler(signal.SIGHUP, reload.signalled)
        loop.set_exception_handler(_quiet_about_cancelled_connections)
        await master.run()
    except SystemExit:
        raise MeterError("the proxy could not start (see the messages above)") from None
    finally:
        handover.stop()
        if not quiet:
            _say_summary(handover, time.monotonic() - started)


def _say_summary(handover: Handover, seconds: float) -> None:
    """The run's last line, once its recorder has stored what it could."""
    from taskmeter import terminal

    terminal.info(summary_line(handover.account(), seconds))
    sys.stdout.flush()


def summary_line(account: RunAccount, seconds: float) -> str:
    """What a run recorded, and where every call it saw went: `meter: stopped after 2.0 min:
    25 calls recorded (1 failed), 375 tokens, $0.01; all 25 calls seen are stored`. A failed call
    got no model answer (no response, HTTP 4xx or 5xx), as the reports count them."""
    line = f"meter: stopped after {seconds / 60:.1f} min: "
    stored = account.stored
    if stored is None:
        line += "the database could not be read to count the calls stored"
    else:
        line += (
            f"{stored['calls']:,} calls recorded ({stored['failed']:,} failed), "
            f"{stored['tokens']:,} tokens, {usd(stored['cost'])}"
        )
    # Where calls went other than the database: (verb for one, for several, where), and how many.
    elsewhere = [
        (("waits", "wait", "in the spool (stored once the database can take them)"), account.spooled),
        (("is", "are", "in the quarantine (`meter status` says where)"), account.quarantined),
        (("was", "were", "lost"), account.lost),
    ]
    if stored is not None:
        unplaced = account.seen - stored["calls"] - account.spooled - account.quarantined - account.lost
        elsewhere.append((("is", "are", "not accounted for (see the messages above)"), unplaced))
    parts = [f"{count:,} {one if count == 1 else several} {where}" for (one, several, where), count in elsewhere if count]
    if not parts:
        return line + f"; all {account.seen:,} calls seen are stored"
    return line + f"; of {account.seen:,} calls seen, " + ", ".join(parts)


def run_proxy(
    settings: Settings,
    db_path: Path,
    host: str,
    port: int,
    ready,
    quiet: bool,
    reload_settings,
    corporate: CorporateProxy | None = None,
) -> None:
    """Run until SIGINT/SIGTERM, taking `reload_settings()` on SIGHUP; `ready(host, port)`
    is called once listening. Unless `quiet`, the recorder prints a line per call.
    Upstreams are reached through the `corporate` proxy, if any."""
    _check_port_free(host, port)
    configure_logging()
    with ctrl_c.held_until_running():
        asyncio.run(_serve(settings, db_path, host, port, ready, quiet, reload_settings, corporate))
