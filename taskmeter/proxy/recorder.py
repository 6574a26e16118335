"""Recording runs in its own process, so parsing, token estimates, pricing and
SQLite never hold the proxy's interpreter lock: the event loop that moves the
user's bytes only queues finished calls.

Proxy side: Recorder.submit() queues a call; a sender thread pickles batches and
writes them, length-prefixed, to the recorder's stdin. Recorder side
(`python -m taskmeter.proxy.recorder DB`): reads batches into a Writer (see
taskmeter/store/writer.py), which finalizes and stores them. It ignores Ctrl-C
and stops at end of input (the proxy stopped, or died), after storing
everything it received. If it dies, the sender starts a new one.
"""

import logging
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger("taskmeter.proxy")

_STOP = object()
_BATCH = 256
_LENGTH = struct.Struct(">I")


class Recorder:
    def __init__(self, db_path: Path, store_bodies: bool, proxy_id: str | None = None) -> None:
        self._command = [sys.executable, "-m", "taskmeter.proxy.recorder", str(db_path)]
        if store_bodies:
            self._command.append("--store-bodies")
        if proxy_id:
            self._command += ["--proxy-id", proxy_id]
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="taskmeter-recorder", daemon=True)
        self._process: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        self._spawn()
        self._sender.start()

    def submit(self, call) -> None:
        """Called on the event loop: a queue put, nothing more."""
        self._queue.put(call)

    def stop(self, timeout: float = 60.0) -> None:
        """Hand over everything submitted, then wait for the recorder to store it."""
        self._queue.put(_STOP)
        self._sender.join(timeout)
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("meter: the recorder did not finish in %.0f s; stopping it", timeout)
                self._process.kill()

    def _spawn(self) -> None:
        # Its own process group: a Ctrl-C in the terminal is the proxy's to handle.
        self._process = subprocess.Popen(self._command, stdin=subprocess.PIPE, start_new_session=True)

    def _send(self, payload: bytes) -> None:
        frame = _LENGTH.pack(len(payload)) + payload
        while True:
            try:
                self._process.stdin.write(frame)
                self._process.stdin.flush()
                return
            except (OSError, ValueError):
                # The recorder is gone: what it had stored is stored; start another.
                self.restarts += 1
                log.error("meter: the recorder process exited (code %s); starting a new one", self._process.poll())
                self._spawn()

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
        try:
            self._process.stdin.close()
        except OSError:
            pass


def _read_batches(stream):
    while True:
        header = stream.read(_LENGTH.size)
        if len(header) < _LENGTH.size:
            return
        payload = stream.read(_LENGTH.unpack(header)[0])
        try:
            yield pickle.loads(payload)
        except Exception:  # a torn last frame from a proxy killed mid-write
            log.error("meter: an unreadable batch from the proxy was skipped")
            return


def main() -> None:
    import argparse

    from taskmeter.proxy.finalize import Finalizer
    from taskmeter.logs import configure_logging
    from taskmeter.store.writer import Writer

    parser = argparse.ArgumentParser(prog="python -m taskmeter.proxy.recorder")
    parser.add_argument("db")
    parser.add_argument("--store-bodies", action="store_true")
    parser.add_argument("--proxy-id")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging()
    writer = Writer(Path(args.db), Finalizer(store_bodies=args.store_bodies).finish, proxy_id=args.proxy_id)
    writer.start()
    try:
        for batch in _read_batches(sys.stdin.buffer):
            for call in batch:
                writer.submit(call)
    finally:
        writer.stop(timeout=600)


if __name__ == "__main__":
    main()
