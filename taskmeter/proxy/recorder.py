"""Recording runs in its own process, so parsing, token estimates, pricing and
SQLite never hold the proxy's interpreter lock: the event loop that moves the
user's bytes only queues finished calls.

Proxy side: Recorder.submit() queues a call; a sender thread pickles batches and
writes them, numbered and length-prefixed, to the recorder's stdin, keeping each
until the recorder acknowledges it on stdout. Recorder side
(`python -m taskmeter.proxy.recorder DB`): feeds the calls to a Writer (see
taskmeter/store/writer.py) and acknowledges a batch once it is stored or
spooled. If the recorder dies, a new one is started and every unacknowledged
batch is sent again (inserts ignore IDs already stored, so nothing is counted
twice). The recorder ignores Ctrl-C and stops at end of input, after storing
everything it received.
"""

import logging
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger("taskmeter.proxy")

_STOP = object()
_BATCH = 256
_HEADER = struct.Struct(">IQ")  # payload length, batch number
_ACK = struct.Struct(">Q")
# A recorder that dies at once is not restarted more often than this.
_RESPAWN_SECONDS = 1.0


class Recorder:
    def __init__(self, db_path: Path, store_bodies: bool, proxy_id: str | None = None) -> None:
        self._command = [sys.executable, "-m", "taskmeter.proxy.recorder", str(db_path)]
        if store_bodies:
            self._command.append("--store-bodies")
        if proxy_id:
            self._command += ["--proxy-id", proxy_id]
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="taskmeter-recorder", daemon=True)
        self._lock = threading.Lock()  # the child process and the unacknowledged batches
        self._unacknowledged: OrderedDict[int, bytes] = OrderedDict()
        self._next_seq = 1
        self._process: subprocess.Popen | None = None
        self._stopping = False
        self._spawned_at = 0.0

    def start(self) -> None:
        with self._lock:
            self._spawn()
        self._sender.start()

    def submit(self, call) -> None:
        """Called on the event loop: a queue put, nothing more."""
        self._queue.put(call)

    def stop(self, timeout: float = 60.0) -> None:
        """Hand over everything submitted, then wait for the recorder to store it."""
        self._queue.put(_STOP)
        self._sender.join(timeout)
        process = self._process
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("meter: the recorder did not finish in %.0f s; stopping it", timeout)
                process.kill()

    # ------------------------------------------------------------ proxy side

    def _spawn(self) -> None:
        """Start a recorder (its own session: Ctrl-C is the proxy's to handle) and
        send it whatever the previous one had not acknowledged. Holds _lock."""
        process = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        self._process = process
        self._spawned_at = time.monotonic()
        threading.Thread(target=self._read_acks, args=(process,), name="taskmeter-recorder-acks", daemon=True).start()
        for frame in self._unacknowledged.values():
            process.stdin.write(frame)
        process.stdin.flush()

    def _respawn(self, dead: subprocess.Popen) -> None:
        time.sleep(max(0.0, self._spawned_at + _RESPAWN_SECONDS - time.monotonic()))
        with self._lock:
            if self._process is not dead or self._stopping:
                return
            log.error("meter: the recorder process exited (code %s); starting a new one", dead.poll())
            self._spawn()

    def _read_acks(self, process: subprocess.Popen) -> None:
        while True:
            data = process.stdout.read(_ACK.size)
            if len(data) < _ACK.size:
                break
            (seq,) = _ACK.unpack(data)
            with self._lock:
                while self._unacknowledged and next(iter(self._unacknowledged)) <= seq:
                    self._unacknowledged.popitem(last=False)
        process.wait()
        self._respawn(process)

    def _send(self, payload: bytes) -> None:
        with self._lock:
            frame = _HEADER.pack(len(payload), self._next_seq) + payload
            self._unacknowledged[self._next_seq] = frame
            self._next_seq += 1
            process = self._process
        try:
            process.stdin.write(frame)
            process.stdin.flush()
        except (OSError, ValueError):
            self._respawn(process)  # the new recorder gets this frame with the others

    def _send_loop(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is _STOP:
                batch.pop()
                stopping = True
            if batch:
                self._send(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
        with self._lock:
            self._stopping = True
            try:
                self._process.stdin.close()
            except OSError:
                pass


# ---------------------------------------------------------------- recorder side


def _read_batches(stream):
    while True:
        header = stream.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        length, seq = _HEADER.unpack(header)
        payload = stream.read(length)
        if len(payload) < length:
            return  # the proxy died mid-write; it resends unacknowledged batches
        yield seq, pickle.loads(payload)


def main() -> None:
    import argparse

    from taskmeter.logs import configure_logging
    from taskmeter.proxy.finalize import Finalizer
    from taskmeter.store.writer import Checkpoint, Writer

    parser = argparse.ArgumentParser(prog="python -m taskmeter.proxy.recorder")
    parser.add_argument("db")
    parser.add_argument("--store-bodies", action="store_true")
    parser.add_argument("--proxy-id")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging()
    acks = sys.stdout.buffer

    def acknowledge(seq: int) -> None:
        try:
            acks.write(_ACK.pack(seq))
            acks.flush()
        except OSError:
            pass  # the proxy is gone; nobody is waiting for the answer

    writer = Writer(Path(args.db), Finalizer(args.store_bodies, args.proxy_id).finish, proxy_id=args.proxy_id,
                    on_checkpoint=acknowledge)
    writer.start()
    try:
        for seq, batch in _read_batches(sys.stdin.buffer):
            for call in batch:
                writer.submit(call)
            writer.submit(Checkpoint(seq))
    finally:
        writer.stop(timeout=600)


if __name__ == "__main__":
    main()
