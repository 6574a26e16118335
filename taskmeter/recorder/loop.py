"""The recorder process (`python -m taskmeter.recorder DB`): one loop that
reads a batch of finished calls from the proxy, stores it (or spools it), and
acknowledges it. Parsing, token estimates, pricing and SQLite run here, so they
never hold the proxy's interpreter lock. The proxy side is taskmeter/handover/pipe.py.

What may happen to a batch, and only then is it acknowledged:
- stored: every call is finalised into a row; a row the database refuses is
  retried alone, and one that still fails goes to the quarantine, as does a
  call whose reading hit a bug of ours (a body at fault is noted in its row);
- spooled: the database cannot be written now (locked, read-only, full), so the
  calls go to the spool, replayed once it can;
- held: neither database nor spool can be written. Each call's row (metadata,
  usage and what it said, not its bodies) is held in memory, up to
  HELD_ROWS_MAX rows and HELD_TEXT_CHARS of text; past that, calls are lost
  (or their text is), counted, and the count reaches `meter status`.

A nearly full disk takes small transactions when a big one never fits: held
rows, and any batch refused for lack of space, are stored CATCH_UP_ROWS at a
time, their usage first and what they said after (kept in memory until it
fits), each followed by a checkpoint that gives the WAL's space back.
Before it acknowledges a batch, the loop tells the proxy how many calls it holds
and has lost, so that the count is exact and `meter status` shows it at once.

Budget and alert planning (recorder/planner.py) is not recording: whatever it
raises is logged once per kind, and recording goes on.
"""

import json
import logging
import os
import pickle
import queue
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from taskmeter.callline import call_line
from taskmeter.handover import callfile
from taskmeter.handover.pipe import ACKNOWLEDGED, GUARD_STATE, HEADER, RECORDER_STATE, REPLY
from taskmeter.printable import printable
from taskmeter.store.calls import CallRow
from taskmeter.store.proxies import HEARTBEAT_SECONDS, RECORDING
from taskmeter.store.sessions import DEFAULT_SESSION_GAP_SECONDS
from taskmeter.store.writer import DatabaseUnavailable, Writer
from taskmeter.terminal import fit
from taskmeter.timefmt import to_stored

if TYPE_CHECKING:
    from taskmeter.telemetry.otel import CallExport

log = logging.getLogger(__name__)

# How often a recorder looks for calls waiting in the spool or in memory, and
# retries a database it could not write. Between batches it sleeps until the
# next of these, the heartbeat or the budgets' refresh (recorder/planner.py) is
# due, not on a timer of its own: each wake costs CPU, which at a few calls a
# second weighs on every call.
RETRY_SECONDS = 1.0
# Work due this soon is done at a wake for other work: an idle recorder wakes
# once per REFRESH_SECONDS, not once for each kind of work on its own clock.
EARLY_SECONDS = 0.25
# It wakes this long after a due time, never a hair before (a second wake).
_LATE_SECONDS = 0.001
HELD_ROWS_MAX = 10_000
# What held calls said (characters in all), kept until it can be stored; past
# this, a call is held with its usage only, and a note says so.
HELD_TEXT_CHARS = 32 * 1024 * 1024
CATCH_UP_ROWS = 20
REPLAY_BATCH = 500
LIVE_VIEW_BACKLOG = 1000
FRAMES_PER_TRANSACTION = 32
# Stored text past retention_days is deleted at start and then this often.
PRUNE_SECONDS = 3600
# A pipe gives at most its buffer (64 KB on Linux) a read; asking for more made
# each read allocate, and give back, a megabyte.
PIPE_READ_BYTES = 1 << 16


class FrameReader:
    """Length-prefixed frames from a pipe, read without blocking past `timeout`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self.closed = False

    def next(self, timeout: float) -> tuple[int, bytes] | None:
        deadline = time.monotonic() + timeout
        while True:
            frame = self._take()
            if frame is not None or self.closed:
                return frame
            remaining = max(0.0, deadline - time.monotonic())
            if not select.select([self._fd], [], [], remaining)[0]:
                return None
            data = os.read(self._fd, PIPE_READ_BYTES)
            if not data:
                self.closed = True  # a torn last frame: the proxy resends what we did not acknowledge
            self._buffer += data

    def waiting(self, limit: int) -> list[tuple[int, bytes]]:
        """The frames that arrived meanwhile, up to `limit`, without waiting."""
        frames: list[tuple[int, bytes]] = []
        while len(frames) < limit:
            frame = self.next(timeout=0)
            if frame is None:
                break
            frames.append(frame)
        return frames

    def _take(self) -> tuple[int, bytes] | None:
        if len(self._buffer) < HEADER.size:
            return None
        length, seq = HEADER.unpack_from(self._buffer)
        if len(self._buffer) < HEADER.size + length:
            return None
        payload = bytes(self._buffer[HEADER.size : HEADER.size + length])
        del self._buffer[: HEADER.size + length]
        return seq, payload


class LiveView:
    """Lines for the proxy's terminal, written by a thread of their own: a terminal
    that stops reading (Ctrl-S, a paused pager) must never hold up recording.
    Past LIVE_VIEW_BACKLOG waiting writes, lines are skipped and the gap is said,
    before the next line written or at the end."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._lines: queue.Queue = queue.Queue(maxsize=LIVE_VIEW_BACKLOG)
        self._skipped = 0
        self._skipped_lock = threading.Lock()  # counted by show(), said and reset by the writer
        self._thread = threading.Thread(target=self._write, name="taskmeter-live-view", daemon=True)
        self._thread.start()

    def show(self, text: str) -> None:
        try:
            self._lines.put_nowait(text)
        except queue.Full:
            with self._skipped_lock:
                self._skipped += text.count("\n")

    def close(self, timeout: float = 2.0) -> None:
        """Write what is waiting (for up to `timeout`), then close the stream."""
        try:
            self._lines.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._stream.close()

    def _write(self) -> None:
        while True:
            text = self._lines.get()
            with self._skipped_lock:
                skipped, self._skipped = self._skipped, 0
            gap = f"meter: {skipped} lines not shown (the terminal was not reading)\n" if skipped else ""
            try:
                self._stream.write(fit(gap + (text or ""), self._stream))  # to the terminal's width
                self._stream.flush()
            except (OSError, ValueError):
                return  # the terminal is gone; recording goes on
            if text is None:
                return


class RecorderLoop:
    def __init__(
        self,
        db_path: Path,
        finalizer,
        proxy_id: str | None,
        live_view=None,
        retention_days: int = 0,
        session_gap_seconds: float = DEFAULT_SESSION_GAP_SECONDS,
    ) -> None:
        self.writer = Writer(db_path, session_gap_seconds)
        self._retention_days = retention_days
        self._last_prune: float = -PRUNE_SECONDS
        self._live_view = live_view  # one line per call stored (the proxy sums the run up)
        self.spool = callfile.spool_path(db_path)
        self.quarantine = callfile.quarantine_path(db_path)
        self._finalizer = finalizer
        self._proxy_id = proxy_id
        self._held: list[CallRow] = []  # rows that could be neither stored nor spooled
        self._texts_waiting: list[CallRow] = []  # rows stored without what they said, for lack of space
        self._text_chars = 0  # what the rows of both lists said, in characters
        self.dropped = 0  # calls lost
        self.tell: Callable[[dict], None] | None = None  # tell(state): the proxy learns the held and lost counts (main() sets it)
        self._told: dict | None = None
        self._last_retry = 0.0
        self._last_heartbeat = 0.0
        self.guard = None  # budgets and alerts (recorder/planner.py), when the proxy runs us
        self.telemetry: CallExport | None = None  # OpenTelemetry export of stored calls (telemetry/otel.py), when configured
        self._bugs_seen: set[str] = set()  # kinds of our own errors, each logged with its traceback once

    # ------------------------------------------------------------ batches

    def record(self, calls: list) -> None:
        """Store, spool or hold `calls`; returns only when one of them is done."""
        if self.writer.failing and time.monotonic() - self._last_retry < RETRY_SECONDS:
            # Do not wait out a busy timeout for every batch while the database is
            # unusable: spool at once; housekeeping() retries once a second.
            self._spool(calls)
            return
        stored = self.replay() and self._store(calls, show=True)
        self._last_retry = time.monotonic()  # after the attempt, which may have waited out a busy timeout
        if not stored:
            self._spool(calls)

    def _store(self, calls: list, show: bool = False) -> bool:
        """True when every call was stored or quarantined; `show` prints them."""
        rows = [row for row in map(self._row, calls) if row is not None]
        try:
            rejected = self._write(rows)
        except DatabaseUnavailable:
            return False
        if rejected:
            by_id = {call.id: call for call in calls}
            for row, reason in rejected:
                self._quarantine([by_id[row.interaction.id]], f"the database refused it: {reason}")
        refused = {row.interaction.id for row, _ in rejected}
        if show:
            self._show([row.interaction for row in rows if row.interaction.id not in refused])
        self._plan("stored", [row for row in rows if row.interaction.id not in refused])
        if self.telemetry is not None:
            self.telemetry.stored(row for row in rows if row.interaction.id not in refused)
        return True

    def _write(self, rows: list[CallRow]) -> list[tuple[CallRow, str]]:
        """Store `rows` in one transaction or, when the disk is too full for it,
        in small ones: their usage first, what they said after, kept in memory
        until it fits. Raises DatabaseUnavailable when not even that goes."""
        try:
            return self.writer.store(rows)
        except DatabaseUnavailable:
            if len(rows) <= 1 or "full" not in (self.writer.failing or ""):
                raise
        rejected = []
        for start in range(0, len(rows), CATCH_UP_ROWS):
            rejected += self.writer.store([_usage_only(row) for row in rows[start : start + CATCH_UP_ROWS]])
            self.writer.make_room()
        refused = {row.interaction.id for row, _ in rejected}
        for row in rows:
            if row.interaction.id not in refused and _text_chars(row):
                self._keep_text(row, self._texts_waiting)
        self._store_texts()
        return rejected

    def _show(self, stored: list) -> None:
        if self._live_view is not None and stored:
            self._live_view.show("".join(call_line(asdict(i)) + "\n" for i in stored))

    def _row(self, call) -> CallRow | None:
        """The call's row, or None when reading it raised: a body that is not what
        it says is noted in the row (the parser's DecodingError), so whatever is
        raised here is a bug of ours. The call is quarantined whole, for the fix,
        and recording goes on."""
        try:
            return self._finalizer.finish(call)
        except Exception as exc:
            self._bug(exc, "meter: a bug in the meter stopped it reading a call (said once per kind); such calls are quarantined")
            self._quarantine([call], f"the meter failed to read it (a bug of ours): {type(exc).__name__}: {exc}"[:500])
            return None

    def _bug(self, exc: Exception, message: str) -> None:
        """Log `message` with the traceback the first time this kind of error
        (its type and the line that raised it) happens."""
        where = traceback.extract_tb(exc.__traceback__)[-1]
        kind = f"{type(exc).__name__} at {where.filename}:{where.lineno}"
        if kind not in self._bugs_seen:
            self._bugs_seen.add(kind)
            log.error(message, exc_info=exc)

    def _spool(self, calls: list) -> None:
        try:
            callfile.append(self.spool, calls)
        except OSError as exc:
            self._hold(calls, exc)

    def _hold(self, calls: list, exc: OSError) -> None:
        room = HELD_ROWS_MAX - len(self._held)
        if not self._held:
            log.error(
                "meter: cannot write the spool %s either (%s): keeping calls' usage and text in memory, bodies dropped",
                self.spool,
                exc,
            )
        for call in calls[:room]:
            row = self._row(call)
            if row is None:
                continue
            row.request_body = row.response_body = None
            note = "bodies dropped: neither database nor spool could be written"
            row.interaction.notes = "; ".join(filter(None, [row.interaction.notes, note]))
            self._keep_text(row, self._held)
        lost = len(calls) - max(room, 0)
        if lost > 0:
            if not self.dropped:  # said once; `meter status` keeps the count
                log.error("meter: calls are being LOST: database, spool and memory reserve are all full")
            self.dropped += lost

    def _keep_text(self, row: CallRow, where: list) -> None:
        """Put `row` in `where` with what it said, while the memory reserve for text lasts."""
        chars = _text_chars(row)
        if chars and self._text_chars + chars > HELD_TEXT_CHARS:
            if where is self._held:
                row.texts = None
                note = "text not kept: the recorder's memory reserve was full"
                row.interaction.notes = "; ".join(filter(None, [row.interaction.notes, note]))
                where.append(row)
            else:
                log.error(
                    "meter: the text of call %s is not kept: the database is full, and so is the memory reserve",
                    row.interaction.id,
                )
            return
        self._text_chars += chars
        where.append(row)

    def _quarantine(self, calls: list, reason: str) -> None:
        self.dropped += callfile.quarantine(self.quarantine, calls, reason)

    # ------------------------------------------------------------ what waits

    def replay(self) -> bool:
        """Store what was held or spooled; True when no call is left waiting
        (what stored calls said may still wait for room)."""
        if not self._store_held():
            return False
        try:
            replayed = self._replay_spool()
        except OSError as exc:
            log.error("meter: cannot replay the spool %s now: %s", self.spool, exc)
            replayed = False
        self._store_texts()
        return replayed

    def _store_held(self) -> bool:
        """The usage of held rows, CATCH_UP_ROWS a transaction: a nearly full disk
        takes what fits. What they said waits until that is done."""
        stored = 0
        while self._held:
            chunk = self._held[:CATCH_UP_ROWS]
            try:
                rejected = self.writer.store([_usage_only(row) for row in chunk])
            except DatabaseUnavailable:
                break
            del self._held[: len(chunk)]
            self.writer.make_room()
            refused = {row.interaction.id for row, _ in rejected}
            for row, reason in rejected:
                log.error("meter: call %s could not be stored and is lost: %s", row.interaction.id, reason)
                self.dropped += 1
            kept = [row for row in chunk if row.interaction.id not in refused]
            for row in chunk:
                if row.interaction.id in refused or not _text_chars(row):
                    self._text_chars -= _text_chars(row)
                else:
                    self._texts_waiting.append(row)
            stored += len(kept)
            self.tell_state()  # at once: should we die now, the proxy must not count these as lost
            self._plan("stored", kept)
            if self.telemetry is not None:
                self.telemetry.stored(kept)
        if stored:
            log.warning("meter: stored %d calls held in memory", stored)
        return not self._held

    def _store_texts(self) -> bool:
        """What stored calls said, CATCH_UP_ROWS a transaction, once there is room."""
        while self._texts_waiting:
            chunk = self._texts_waiting[:CATCH_UP_ROWS]
            try:
                rejected = self.writer.store(chunk, texts_only=True)
            except DatabaseUnavailable:
                return False
            del self._texts_waiting[: len(chunk)]
            self.writer.make_room()
            self._text_chars -= sum(_text_chars(row) for row in chunk)
            for row, reason in rejected:
                log.error("meter: the text of call %s could not be stored: %s", row.interaction.id, reason)
        return True

    def _replay_spool(self) -> bool:
        taken = callfile.take_for_replay(self.spool)
        if taken is None:
            return True
        batch, replayed = [], 0
        for item in callfile.read(taken):
            if isinstance(item, str):
                log.warning("meter: skipped an unreadable spool line (%d characters)", len(item))
                continue
            batch.append(item)
            if len(batch) >= REPLAY_BATCH:
                if not self._store(batch):
                    return False
                replayed += len(batch)
                batch = []
        if batch and not self._store(batch):
            return False
        os.unlink(taken)
        if replayed + len(batch):
            log.warning("meter: replayed %d spooled calls into %s", replayed + len(batch), self.writer.db_path)
        return True

    # ------------------------------------------------------------ housekeeping

    def housekeeping(self) -> None:
        """Whatever is due, or due within EARLY_SECONDS: a retry of what waits (the
        spool looked at once a RETRY_SECONDS, not at every wake), the heartbeat,
        the budgets, the pruning."""
        now = time.monotonic()
        soon = now + EARLY_SECONDS
        if soon - self._last_retry >= RETRY_SECONDS:
            self._last_retry = now
            if self.writer.failing or self._held or self._texts_waiting or self.spool.exists():
                self.replay()
        if self._proxy_id and soon - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self._last_heartbeat = now
            self.writer.heartbeat(self._proxy_id, RECORDING)
        self._plan("refresh")
        if self._retention_days and soon - self._last_prune >= PRUNE_SECONDS:
            self._last_prune = now
            cutoff = datetime.now(UTC) - timedelta(days=self._retention_days)
            pruned = self.writer.prune_texts(to_stored(cutoff))
            if pruned:
                log.warning("meter: deleted the stored text of %d calls older than %d days", pruned, self._retention_days)

    def seconds_to_next_housekeeping(self) -> float:
        """How long the loop may sleep when no batch comes: until the next thing
        housekeeping() does is due."""
        due = [self._last_retry + RETRY_SECONDS]
        if self._proxy_id:
            due.append(self._last_heartbeat + HEARTBEAT_SECONDS)
        if self._retention_days:
            due.append(self._last_prune + PRUNE_SECONDS)
        wake = min(due)
        if self.guard is not None and self.guard.refresh_due() - wake < EARLY_SECONDS:
            wake = self.guard.refresh_due()  # its own clock: the rest waits for it, or is done early with it
        return max(0.0, wake - time.monotonic()) + _LATE_SECONDS

    def _plan(self, step: str, *args) -> None:
        """Budgets and alerts (`self.guard.<step>(*args)`): never the end of recording.
        An error is logged with its traceback the first time its kind happens."""
        if self.guard is None:
            return
        try:
            getattr(self.guard, step)(*args)
        except Exception as exc:
            self._bug(exc, "meter: budget and alert planning failed (said once per kind); calls are still recorded")
            self.writer.rollback()  # a transaction it left open must not hold up the next batch

    def tell_state(self) -> None:
        """Tell the proxy the calls held in memory and lost, when they changed."""
        state = {"held": len(self._held), "lost": self.dropped}
        if self.tell is not None and state != self._told:
            self.tell(state)
            self._told = state

    def finish(self) -> None:
        """End of input: store what we can, then leave the proxies table (the
        proxy then sums up the run: Handover.account)."""
        self.replay()
        if self._held:
            log.error("meter: %d calls could not be stored or spooled before exit and are lost", len(self._held))
            self.dropped += len(self._held)
            self._held = []
        if self._texts_waiting:
            log.error("meter: what %d stored calls said could not be stored before exit", len(self._texts_waiting))
        self.tell_state()
        if self._live_view is not None:
            self._live_view.close()
        if self.telemetry is not None:
            self.telemetry.close()
        if self._proxy_id:
            self.writer.unregister(self._proxy_id)
        self.writer.close()


def _usage_only(row: CallRow) -> CallRow:
    return replace(row, texts=None, request_body=None, response_body=None)


def _text_chars(row: CallRow) -> int:
    """How much text a row carries beside its usage (what it said, bodies), in characters."""
    return sum(len(text) for text in (*(row.texts or ()), row.request_body, row.response_body) if text)


def _reply(data: bytes) -> None:
    try:
        while data:
            data = data[os.write(sys.stdout.fileno(), data) :]
    except OSError:
        pass  # the proxy is gone; nobody is waiting for the answer


def _acknowledge(seq: int) -> None:
    _reply(REPLY.pack(ACKNOWLEDGED, seq))


def _push_guard_state(state: dict) -> None:
    payload = json.dumps(state).encode()
    _reply(REPLY.pack(GUARD_STATE, len(payload)) + payload)


def _tell_recorder_state(state: dict) -> None:
    payload = json.dumps(state).encode()
    _reply(REPLY.pack(RECORDER_STATE, len(payload)) + payload)


def main() -> None:
    import argparse

    from taskmeter.logs import configure_logging
    from taskmeter.recorder.finalize import Finalizer

    parser = argparse.ArgumentParser(prog="python -m taskmeter.recorder")
    parser.add_argument("db")
    parser.add_argument("--store-bodies", choices=["none", "text", "full"], default="none")
    parser.add_argument("--retention-days", type=int, default=0, help="Delete stored text older than this (0: keep it).")
    parser.add_argument("--session-gap-minutes", type=float, default=DEFAULT_SESSION_GAP_SECONDS / 60)
    parser.add_argument("--proxy-id")
    parser.add_argument("--live-view-fd", type=int, help="Print a line per call stored to this file descriptor.")
    parser.add_argument("--guard", help="JSON: the [budgets] and [alerts] settings and idle_seconds (recorder/planner.py).")
    parser.add_argument("--otel-traces-endpoint", help="Export a span per stored call to this OTLP/HTTP URL.")
    parser.add_argument("--otel-metrics-endpoint", help="Export the gen_ai.client.* metrics to this OTLP/HTTP URL.")
    args = parser.parse_args()
    # The proxy handles Ctrl-C and stops us by closing our input. It started us with SIGINT blocked
    # (handover/pipe.py): one that came meanwhile is dropped by the ignoring, and our children get it unblocked.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    configure_logging()
    live_view = None
    if args.live_view_fd is not None:
        live_view = LiveView(open(args.live_view_fd, "w", encoding="utf-8", errors="replace"))
    finalizer = Finalizer(args.store_bodies, args.proxy_id)
    loop = RecorderLoop(Path(args.db), finalizer, args.proxy_id, live_view, args.retention_days, args.session_gap_minutes * 60)
    loop.tell = _tell_recorder_state
    if args.guard:
        try:
            loop.guard = _guard(loop, json.loads(args.guard), live_view)
        except Exception:
            log.exception("meter: budgets and alerts cannot be planned; calls are still recorded")
    if args.otel_traces_endpoint or args.otel_metrics_endpoint:
        from taskmeter.telemetry.otel import CallExport  # only then: no cost at all without an endpoint

        loop.telemetry = CallExport(Path(args.db), args.otel_traces_endpoint, args.otel_metrics_endpoint)
    frames = FrameReader(sys.stdin.fileno())
    loop.replay()
    first_since_start = True
    while not frames.closed:
        first = frames.next(timeout=loop.seconds_to_next_housekeeping())
        if first is not None:
            # Under load, batches queue up while one is stored: take them all in
            # one transaction, which costs far less CPU than one each. The first
            # batch after a start goes alone: should it crash us, the proxy blames
            # the first batch it has no answer for, which is then the right one.
            batches = [first] if first_since_start else [first, *frames.waiting(limit=FRAMES_PER_TRANSACTION - 1)]
            first_since_start = False
            loop.record([call for _, payload in batches for call in pickle.loads(payload)])
            loop.tell_state()  # before the acknowledgement: the proxy always knows what we hold
            _acknowledge(batches[-1][0])
        loop.housekeeping()
        loop.tell_state()
    loop.finish()


def _guard(loop: RecorderLoop, config: dict, live_view):
    from taskmeter.analytics.budgets import defaults_of
    from taskmeter.recorder.planner import Guard

    def announce(line: str) -> None:
        if live_view is not None:
            live_view.show(printable(line, one_line=True) + "\n")  # alerts quote session IDs from the wire
        else:
            log.warning("%s", line)

    alerts = config["alerts"]
    return Guard(
        loop.writer,
        _push_guard_state,
        announce,
        defaults_of(config["budgets"]),
        alerts["loop_calls"],
        alerts["loop_minutes"],
        alerts["on_loop"],
        alerts["burn_rate_k"],
        alerts["alert_command"],
        config["idle_seconds"],
    )
