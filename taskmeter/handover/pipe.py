"""The hand-over from the proxy to its recorder process (taskmeter/recorder/loop.py).

The event loop only queues finished calls (submit). A sender thread pickles them
in numbered batches and keeps each until the recorder acknowledges it on stdout
as stored, spooled or held; a pipe thread writes them, length-prefixed, to the
recorder's stdin, so a recorder that stops reading never holds up the sender.
A large body is never copied on the way (see `_Frame`): a copy of many megabytes
is one long step that holds the interpreter lock, and so the event loop.
If the recorder dies, a new one is started and gets every unacknowledged batch
again (inserts ignore IDs already stored).

Nothing is lost silently, and memory stays bounded:
- the calls waiting for the sender are limited by the bytes of their bodies
  (`max_pending_mb`): past that, while the sender is behind, a call goes to a
  spill thread that appends it to the spool (the event loop never waits; if the
  spool cannot be written, the call waits for the sender after all);
- unacknowledged batches are limited by bytes (`max_pending_mb`); past the
  limit, or while no recorder runs, batches go straight to the spool, which the
  next recorder replays;
- if the spool cannot be written either, calls go on without their bodies
  (metadata only, noted on the row); past a second bound they are dropped and
  counted, and `meter status` shows the count;
- a batch that was being recorded when two recorders in a row died is moved to
  the quarantine instead of being sent a third time;
- a recorder that cannot run at all is reported once, loudly, and `meter status`
  shows the proxy as not recording; it is retried in the background;
- the recorder tells the proxy, before it acknowledges a batch, how many calls
  it holds in memory and how many it lost; the proxy adds its own losses and
  keeps the total where `meter status` reads it even on a full disk (the health
  file, store/proxies.py). A recorder that dies holding calls lost them.

Nothing here may stop the hand-over: an unexpected error in the sender (or in
reading the recorder's replies) is logged with its traceback, once per kind,
and the calls it was on go to the spool, or are counted as lost.
"""

import contextlib
import json
import logging
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import IO

from taskmeter.handover import callfile
from taskmeter.store import proxies

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IQ")  # payload length, batch number
# What the recorder says back: a kind and a number. ACKNOWLEDGED: the number is
# the last batch stored; GUARD_STATE: the number is the length of the JSON that
# follows (recorder/planner.py), which the proxy's Guard decides calls by;
# RECORDER_STATE: the length of the JSON that follows, {"held": calls kept in
# its memory, "lost": calls it lost so far}.
REPLY = struct.Struct(">BQ")
ACKNOWLEDGED, GUARD_STATE, RECORDER_STATE = 1, 2, 3
_STOP = object()
BATCH = 256
# Calls that come one by one are handed over together: after the first, the
# sender waits while calls keep ending, until none ended for QUIET_SECONDS or
# GATHER_SECONDS after the first, and they go in one batch. The recorder stores
# them in one transaction and acknowledges them once, and the threads of both
# processes wake once per batch instead of once per call: each batch costs the two
# processes about 1 ms of CPU whatever its size, so at five calls a second (one
# client, a 200 ms upstream) batches of two left the meter at 1.4 times bare
# mitmproxy's CPU per call, and batches of five at 1.25. A call alone is stored
# QUIET_SECONDS later for it (the live view shows it within a second), one in a
# steady stream up to GATHER_SECONDS later; while `urgent()` (the proxy counts
# calls in flight against a budget in block mode), each call goes over at once.
# The wait also ends when a batch's worth waits (GATHERED_SHARE) and when the
# proxy stops.
GATHER_SECONDS = 1.0
# Calls 200 ms apart come up to 0.3 s apart on a busy machine: they still gather.
QUIET_SECONDS = 0.4
# A gather also ends once the calls waiting hold this share of max_pending_mb:
# a fast stream of large calls must not fill the queue, and spill to the spool,
# while the sender waits for more.
GATHERED_SHARE = 0.25
# A recorder that dies sooner than this after its start, having stored nothing,
# failed to start; after this many such deaths in a row, the proxy is not recording.
_STARTUP_SECONDS = 5.0
_FAILED_STARTS = 3
_RESPAWN_SECONDS = 1.0
_RETRY_NOT_RUNNING_SECONDS = 30.0
# Metadata-only calls (when not even the spool can be written) may use this much
# more than the byte limit before they are dropped.
_METADATA_ALLOWANCE = 1.25
_REPORT_SECONDS = 1.0
# A batch in flight when this many recorders in a row died is quarantined.
_CRASHES_TO_QUARANTINE = 2
# A frame's length is 32 bits, and a batch may use up to _METADATA_ALLOWANCE times
# max_pending_mb: the setting may not go past this (config/settings.py).
MAX_PENDING_MB = int((2**32 - 1 - HEADER.size) / _METADATA_ALLOWANCE) >> 20


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    """A recorder's stdin or stdout, which _spawn opens as pipes."""
    assert stream is not None
    return stream


class _Frame:
    """One batch as the recorder reads it: HEADER (its payload's length and the
    batch number), then the pickle of its calls. The pickle is kept in the pieces
    `pickle.dump` writes: a body of 64 KB or more is written as the call's own
    bytes object, so a piece shares it instead of copying it, and the pipe thread
    writes each piece as it is (the write releases the interpreter lock). The
    calls are kept too, for the spool and the quarantine."""

    __slots__ = ("calls", "pieces", "payload_size")

    def __init__(self, calls: list) -> None:
        self.calls = calls
        self.pieces: list = []
        pickle.dump(calls, SimpleNamespace(write=self.pieces.append), protocol=pickle.HIGHEST_PROTOCOL)
        self.payload_size = sum(len(piece) for piece in self.pieces)

    @property
    def size(self) -> int:
        return HEADER.size + self.payload_size


@dataclass(frozen=True)
class RunAccount:
    """Every call a proxy run saw, and where it went (Handover.account)."""

    seen: int
    stored: proxies.RunTotals | None  # None: the database could not be read
    spooled: int  # waiting in the spool for the next recorder
    quarantined: int
    lost: int


def _body_bytes(call) -> int:
    """What a call holds in memory, as far as it can be large: its bodies."""
    return len(call.request_body or b"") + len(call.response_body) + len(call.response_tail)


class Handover:
    def __init__(
        self,
        db_path: Path,
        recorder_args: list[str],
        proxy_id: str,
        max_pending_bytes: int,
        live_view_fd: int | None = None,
        on_guard_state=None,
        urgent: Callable[[], bool] = lambda: False,
    ) -> None:
        self._command = [sys.executable, "-m", "taskmeter.recorder", str(db_path), "--proxy-id", proxy_id, *recorder_args]
        # The recorder prints the live view itself, so the event loop never formats a line.
        self._pass_fds = () if live_view_fd is None else (live_view_fd,)
        if live_view_fd is not None:
            self._command += ["--live-view-fd", str(live_view_fd)]
        self._db_path = db_path
        self._proxy_id = proxy_id
        self._on_guard_state = on_guard_state  # called on the replies thread, never the event loop
        self._urgent = urgent  # read by the sender and submit(): True while each call must go over at once
        self._spool = callfile.spool_path(db_path)
        self._quarantine = callfile.quarantine_path(db_path)
        self._limit = max_pending_bytes
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queued_bytes = 0  # of the bodies of the calls in _queue
        self._queued_lock = threading.Lock()  # held for an addition only: the event loop never waits on it
        # Set when waiting for more calls has no point (_gather_ends) or the proxy stops: the gather ends.
        self._gathered = threading.Event()
        self._closing = False  # stop() was called: no more gathering
        self._spill: queue.SimpleQueue = queue.SimpleQueue()  # calls past the queue's bound, for the spool
        self._sender = threading.Thread(target=self._send_loop, name="taskmeter-handover", daemon=True)
        self._spiller = threading.Thread(target=self._spill_loop, name="taskmeter-spill", daemon=True)
        self._pipe = threading.Thread(target=self._pipe_loop, name="taskmeter-recorder-pipe", daemon=True)
        self._lock = threading.Lock()  # everything below
        self._wake_pipe = threading.Condition(self._lock)
        self._unacknowledged: OrderedDict[int, _Frame] = OrderedDict()
        self._written_seq = 0  # the last batch written to the current recorder
        self._pending_bytes = 0
        self._next_seq = 1
        self._process: subprocess.Popen[bytes] | None = None
        self._acks: threading.Thread | None = None  # reads the current recorder's acknowledgements
        self._spawned_at = 0.0
        self._acknowledged_since_spawn = False
        self._failed_starts = 0
        self._crashes: dict[int, int] = {}  # batch number -> recorders that died on it
        self._stopping = False
        self._spool_failing = False  # touched by the sender thread only
        self.not_recording: str | None = None  # why, while no recorder runs
        self.seen = 0  # calls submitted in this run
        self.dropped = 0  # calls the proxy lost
        self._recorder_lost = 0  # calls its recorders lost, those dead holding calls included
        self._recorder_said = {"held": 0, "lost": 0}  # by the current recorder
        self._dropped_reported = 0
        self._last_report = 0.0
        self._failures_said: set[str] = set()  # kinds of unexpected error already logged
        self._health = proxies.HealthFile(db_path)
        self._health_lock = threading.Lock()

    @property
    def lost(self) -> int:
        """Every call lost in this run, by the proxy or its recorders."""
        return self.dropped + self._recorder_lost

    @property
    def held(self) -> int:
        return self._recorder_said["held"]

    def start(self) -> None:
        try:
            self._health.create(self._proxy_id)
        except OSError as exc:
            log.error("meter: cannot write %s (%s): `meter status` cannot count held calls", self._health.path, exc)
        with self._lock:
            self._spawn()
        self._sender.start()
        self._spiller.start()
        self._pipe.start()

    @property
    def batches(self) -> int:
        """The batches handed over so far."""
        return self._next_seq - 1

    @property
    def queued_bytes(self) -> int:
        """The bytes of the bodies of the calls waiting for the sender."""
        return self._queued_bytes

    def submit(self, call) -> None:
        """Called on the event loop: a queue put, nothing more. A call that would
        take the calls waiting for the sender past the bound goes to the spill
        thread instead (one alone, however large, always waits for the sender)."""
        self.seen += 1
        size = _body_bytes(call)
        with self._queued_lock:
            waits = not self._queued_bytes or self._queued_bytes + size <= self._limit
            if waits:
                self._queued_bytes += size
        (self._queue if waits else self._spill).put(call)
        if waits and not self._gathered.is_set() and self._gather_ends():
            self._gathered.set()

    def _gather_ends(self) -> bool:
        """The sender need not wait for more calls: a batch's worth waits, or each
        call must go over at once."""
        return self._queue.qsize() >= BATCH - 1 or self._queued_bytes >= self._limit * GATHERED_SHARE or self._urgent()

    def _wait_for_sender(self, calls: list) -> None:
        size = sum(map(_body_bytes, calls))
        with self._queued_lock:
            self._queued_bytes += size
        for call in calls:
            self._queue.put(call)

    def stop(self, timeout: float = 60.0) -> None:
        """Hand over everything submitted, then wait for the recorder to store it."""
        self._spill.put(_STOP)
        self._spiller.join(timeout)  # what it could not spool waits for the sender, before _STOP
        self._closing = True
        self._queue.put(_STOP)
        self._gathered.set()
        self._sender.join(timeout)
        self._pipe.join(timeout)
        process, acks = self._process, self._acks
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("meter: the recorder did not finish in %.0f s; stopping it", timeout)
                process.kill()
            if acks is not None:  # it always has its reader
                acks.join(timeout)  # its last acknowledgements
        with self._lock:
            if self._unacknowledged:
                # No recorder took them: keep them for the next one.
                frames = list(self._unacknowledged.values())
                if not self._spool_frames(frames):
                    self.dropped += sum(len(frame.calls) for frame in frames)
                self._unacknowledged.clear()
        if self.lost:
            log.error(
                "meter: %d calls were lost in this run: neither the database, the spool nor memory could take them", self.lost
            )
        self._health.remove()

    def account(self) -> "RunAccount":
        """Where each call of this run went, once stop() returned: the database
        (its totals; None if it cannot be read), the spool, the quarantine, or lost.
        The run's calls are those whose ID comes after the proxy's (IDs sort by time)."""
        import sqlite3

        from taskmeter.errors import MeterError
        from taskmeter.store import connection

        kept = {
            path: {call_id for call_id in callfile.call_ids(path) if call_id > self._proxy_id}
            for path in (self._spool, callfile.replaying_path(self._spool), self._quarantine)
            if path.exists()
        }
        stored: proxies.RunTotals | None = None
        try:
            with contextlib.closing(connection.connect(self._db_path, create=False)) as db:
                stored = proxies.recorded_by(db, self._proxy_id)
                for ids in kept.values():  # a replay cut short may leave a stored call in the spool
                    ids.difference_update(proxies.stored_ids(db, ids))
        except (sqlite3.Error, OSError, MeterError):
            pass
        spooled = len(kept.get(self._spool, set()) | kept.get(callfile.replaying_path(self._spool), set()))
        return RunAccount(self.seen, stored, spooled, len(kept.get(self._quarantine, ())), self.lost)

    # ------------------------------------------------------------ sending

    def _send_loop(self) -> None:
        stopping = False
        while not stopping:
            try:
                batch = [self._queue.get(timeout=_REPORT_SECONDS)]
            except queue.Empty:
                self._report_losses()  # the last ones, once calls stop coming
                continue
            self._gathered.clear()
            if batch[0] is not _STOP and not self._closing and not self._gather_ends():
                self._gather()
            while len(batch) < BATCH and batch[-1] is not _STOP:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is _STOP:
                batch.pop()
                stopping = True
            taken = sum(map(_body_bytes, batch))
            with self._queued_lock:
                self._queued_bytes -= taken
            if batch:
                self._hand_over_guarded(batch)
        with self._lock:
            self._stopping = True
            self._wake_pipe.notify()

    def _gather(self) -> None:
        """Wait while calls keep ending: until none ended for QUIET_SECONDS, or
        GATHER_SECONDS passed. Asleep, not woken by each call that comes meanwhile:
        only by a batch's worth, an urgent call, or stop()."""
        ends = time.monotonic() + GATHER_SECONDS
        waiting = self._queue.qsize()
        while not self._gathered.wait(max(0.0, min(QUIET_SECONDS, ends - time.monotonic()))):
            now_waiting = self._queue.qsize()
            if now_waiting == waiting or time.monotonic() >= ends:
                return
            waiting = now_waiting

    def _spill_loop(self) -> None:
        """Calls past the queue's bound, appended to the spool, which the recorder
        replays. Those the spool cannot take wait for the sender after all: kept
        in memory, not lost."""
        said = False
        while True:
            calls = [self._spill.get()]
            while calls[-1] is not _STOP:
                try:
                    calls.append(self._spill.get_nowait())
                except queue.Empty:
                    break
            stopping = calls[-1] is _STOP
            if stopping:
                calls.pop()
            if calls and not said:
                said = True  # once a run: `meter status` counts the spool's calls
                log.warning(
                    "meter: the hand-over is behind (%.0f MB of calls wait for it): calls go to the spool %s meanwhile",
                    self._queued_bytes / 2**20,
                    self._spool,
                )
            try:
                if calls:
                    callfile.append(self._spool, calls)
            except Exception:
                self._said_once("spooling calls past the hand-over queue's bound")
                self._wait_for_sender(calls)
            if stopping:
                return

    def _hand_over_guarded(self, calls: list) -> None:
        """Hand over `calls`; whatever goes wrong, the sender goes on. After an
        unexpected error, each call is handed over alone, so one call that breaks
        it costs no other; one that still fails is spooled, or counted as lost."""
        try:
            self._hand_over(calls)
            return
        except Exception:
            self._said_once("handing calls over to the recorder")
        for call in calls:
            try:
                self._hand_over([call])
            except Exception:
                self._said_once("handing one call over to the recorder")
                try:
                    callfile.append(self._spool, [call])
                except Exception:
                    self._said_once("spooling a call that could not be handed over")
                    with self._lock:
                        self.dropped += 1
                    self._report_losses()

    def _said_once(self, doing: str) -> None:
        """Log the exception being handled, with its traceback, the first time its kind happens."""
        kind = f"{doing}: {traceback.format_exc().strip().splitlines()[-1]}"
        if kind not in self._failures_said:
            self._failures_said.add(kind)
            log.exception("meter: unexpected error %s (said once; the hand-over goes on)", doing)

    def _pipe_loop(self) -> None:
        """Write every batch not yet written to the current recorder; once stopping
        and all is written, close its input, which tells it to finish."""
        while True:
            with self._lock:
                while not (self._process is not None and self._unwritten()) and not self._stopping:
                    self._wake_pipe.wait()
                process, frames = self._process, self._unwritten()
                if self._stopping and (process is None or not frames):
                    # Written, or no recorder to write to: stop() spools what is left.
                    if process is not None:
                        try:
                            _pipe(process.stdin).close()
                        except OSError:
                            pass
                    return
            assert process is not None  # the wait ends with a recorder to write to, or returns
            stdin = _pipe(process.stdin)
            for seq, frame in frames:
                try:
                    stdin.write(HEADER.pack(frame.payload_size, seq))
                    for piece in frame.pieces:
                        stdin.write(piece)
                    stdin.flush()
                except (OSError, ValueError):
                    break  # it died: the acknowledgement reader starts a new one
                with self._lock:
                    if self._process is process:
                        self._written_seq = seq

    def _unwritten(self) -> list[tuple[int, _Frame]]:
        """Holds _lock."""
        return [(seq, frame) for seq, frame in self._unacknowledged.items() if seq > self._written_seq]

    def _hand_over(self, calls: list) -> None:
        frame = _Frame(calls)
        with self._lock:
            if self.not_recording is None and self._pending_bytes + frame.size <= self._limit:
                self._send(frame)
                return
        # The recorder is behind or not running: the spool keeps the calls.
        try:
            callfile.append(self._spool, calls)
            if self._spool_failing:
                log.warning("meter: the spool %s can be written again", self._spool)
                self._spool_failing = False
            return
        except OSError as exc:
            if not self._spool_failing:  # said once, not for every batch
                log.error("meter: cannot write the spool %s (%s): calls go on without their bodies", self._spool, exc)
                self._spool_failing = True
        for call in calls:
            call.request_body, call.response_body, call.response_tail = None, bytearray(), bytearray()
            call.notes = "; ".join(
                filter(None, [call.notes, "bodies dropped: the recorder was behind and the spool could not be written"])
            )
        frame = _Frame(calls)
        with self._lock:
            if self._pending_bytes + frame.size <= self._limit * _METADATA_ALLOWANCE:
                self._send(frame)
                return
            first_loss = not self.dropped
            self.dropped += len(calls)
        self._write_health()
        if first_loss:
            log.error(
                "meter: calls are being LOST: the recorder is behind and the spool cannot be written; `meter status` counts them"
            )
        self._report_losses()

    def _send(self, frame: _Frame) -> None:
        """Holds _lock."""
        self._unacknowledged[self._next_seq] = frame
        self._pending_bytes += frame.size
        self._next_seq += 1
        self._wake_pipe.notify()

    # ------------------------------------------------------------ the recorder process

    def _spawn(self) -> None:
        """Start a recorder (its own session: Ctrl-C is the proxy's to handle) and
        send it whatever is unacknowledged. Holds _lock."""
        self._spawned_at = time.monotonic()
        self._acknowledged_since_spawn = False
        # A Ctrl-C to the terminal's process group in the instant the child has not yet left it (subprocess
        # resets its signal handlers first) would kill it: blocked here, and in the recorder until it ignores it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process = subprocess.Popen(
                self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True, pass_fds=self._pass_fds
            )
        except OSError as exc:
            self._process = None
            threading.Thread(target=self._recorder_exited, args=(None, str(exc)), daemon=True).start()
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._process = process
        self._written_seq = 0  # it gets every unacknowledged batch
        self._wake_pipe.notify()
        self._acks = threading.Thread(target=self._read_acks, args=(process,), name="taskmeter-recorder-acks", daemon=True)
        self._acks.start()

    def _read_acks(self, process: subprocess.Popen[bytes]) -> None:
        stdout = _pipe(process.stdout)
        while True:
            data = stdout.read(REPLY.size)
            if len(data) < REPLY.size:
                break
            kind, seq = REPLY.unpack(data)
            if kind in (GUARD_STATE, RECORDER_STATE):
                state = stdout.read(seq)
                if len(state) < seq:
                    break
                try:
                    if kind == RECORDER_STATE:
                        self._recorder_state(json.loads(state))
                    elif self._on_guard_state is not None:
                        self._on_guard_state(json.loads(state))
                except Exception:
                    self._said_once("reading what the recorder said")
                continue
            with self._lock:
                self._acknowledged_since_spawn = True
                self._crashes.clear()
                while self._unacknowledged and next(iter(self._unacknowledged)) <= seq:
                    self._pending_bytes -= self._unacknowledged.popitem(last=False)[1].size
                recovered = self.not_recording is not None
                self.not_recording = None
                self._failed_starts = 0
            if recovered:
                log.warning("meter: the recorder runs again: recording")
            self._report_losses()
        self._recorder_gone()
        self._recorder_exited(process, f"exit code {process.wait()}")

    def _recorder_state(self, said: dict) -> None:
        """The current recorder's count of calls held in its memory and lost."""
        with self._lock:
            self._recorder_lost += said["lost"] - self._recorder_said["lost"]
            self._recorder_said = {"held": said["held"], "lost": said["lost"]}
        self._write_health()

    def _recorder_gone(self) -> None:
        """A recorder that ends holding calls in its memory lost them."""
        with self._lock:
            held = self._recorder_said["held"]
            self._recorder_lost += held
            self._recorder_said = {"held": 0, "lost": 0}
        if held:
            log.error("meter: the recorder ended holding %d calls it could not store: they are lost", held)
        self._write_health()

    def _write_health(self) -> None:
        with self._health_lock:  # counts read and written together: a slower thread never writes older ones last
            try:
                self._health.write(self.held, self.lost)
            except OSError:
                self._said_once(f"writing {self._health.path}")

    def _recorder_exited(self, process: subprocess.Popen | None, how: str) -> None:
        with self._lock:
            if self._process is not process or self._stopping:
                return
            failed_start = not self._acknowledged_since_spawn and time.monotonic() - self._spawned_at < _STARTUP_SECONDS
            self._failed_starts = self._failed_starts + 1 if failed_start else 0
            self._quarantine_crashed_batch()
            if self._failed_starts >= _FAILED_STARTS and self.not_recording is None:
                self.not_recording = f"the recorder process cannot run ({how})"
                log.error(
                    "meter: NOT RECORDING: %s, %d times in a row. Calls are kept in %s until it runs; retrying every %.0f s.",
                    self.not_recording,
                    self._failed_starts,
                    self._spool,
                    _RETRY_NOT_RUNNING_SECONDS,
                )
            elif self.not_recording is None:
                log.error("meter: the recorder process exited (%s); starting a new one", how)
            delay = _RETRY_NOT_RUNNING_SECONDS if self.not_recording else _RESPAWN_SECONDS
            self._process = None  # frames sent meanwhile wait for the next recorder
        if self.not_recording:
            self._report_state()
            self._move_unacknowledged_to_spool()
        time.sleep(max(0.0, self._spawned_at + delay - time.monotonic()))
        with self._lock:
            if self._process is None and not self._stopping:
                self._spawn()

    def _quarantine_crashed_batch(self) -> None:
        """The first unacknowledged batch is the one the dead recorder was on. Holds _lock."""
        if not self._unacknowledged:
            return
        seq = next(iter(self._unacknowledged))
        self._crashes = {seq: self._crashes.get(seq, 0) + 1}
        if self._crashes[seq] < _CRASHES_TO_QUARANTINE:
            return
        frame = self._unacknowledged.pop(seq)
        self._pending_bytes -= frame.size
        reason = f"{_CRASHES_TO_QUARANTINE} recorders in a row died while recording this batch"
        self.dropped += callfile.quarantine(self._quarantine, frame.calls, reason)

    def _move_unacknowledged_to_spool(self) -> None:
        with self._lock:
            frames = list(self._unacknowledged.values())
            if self._spool_frames(frames):
                self._unacknowledged.clear()
                self._pending_bytes = 0

    def _spool_frames(self, frames: list[_Frame]) -> bool:
        try:
            for frame in frames:
                callfile.append(self._spool, frame.calls)
        except OSError as exc:
            log.error("meter: cannot write the spool %s (%s): %d batches wait in memory", self._spool, exc, len(frames))
            return False
        return True

    def _report_losses(self) -> None:
        """Losses not yet in the proxies table, at most once a second."""
        if self.lost != self._dropped_reported and time.monotonic() - self._last_report >= _REPORT_SECONDS:
            self._report_state()

    def _report_state(self) -> None:
        """Tell `meter status` why nothing is recorded, and how many calls were
        lost: in the health file always, in the proxies table when it can be
        written. Off the event loop, and rare."""
        from taskmeter.store import connection

        lost = self.lost
        self._last_report = time.monotonic()
        self._write_health()
        try:
            db = connection.connect(self._db_path, busy_timeout=1.0)
            try:
                proxies.heartbeat(db, self._proxy_id, self.not_recording or proxies.RECORDING, lost)
            finally:
                db.close()
            self._dropped_reported = lost
        except Exception as exc:
            log.error("meter: cannot record the proxy's state in %s: %s", self._db_path, exc)
