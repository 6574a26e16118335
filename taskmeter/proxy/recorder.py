"""Recording runs in its own process, so parsing, token estimates, pricing and
SQLite never hold the proxy's interpreter lock: the event loop that moves the
user's bytes only pickles finished calls and hands them over a pipe.

Main process: Recorder.submit() queues a call; a sender thread pickles batches
and writes them to the pipe. Child process: reads batches into a Writer (see
taskmeter/store/writer.py), which finalizes and stores them. The child ignores
Ctrl-C and stops when told to or when the pipe closes (the proxy died), after
storing everything it received. If the child dies, the sender starts a new one.
"""

import logging
import multiprocessing
import pickle
import queue
import signal
import threading
from multiprocessing.connection import Connection
from pathlib import Path

log = logging.getLogger("taskmeter.proxy")

_STOP = object()
_BATCH = 256


def _child_main(connection: Connection, db_path: str, store_bodies: bool, proxy_id: str | None) -> None:
    # Ctrl-C reaches the whole process group; the proxy decides when recording ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from taskmeter.proxy.finalize import Finalizer
    from taskmeter.proxy.runner import configure_logging
    from taskmeter.store.writer import Writer

    configure_logging()
    writer = Writer(Path(db_path), Finalizer(store_bodies=store_bodies).finish, proxy_id=proxy_id)
    writer.start()
    try:
        while True:
            try:
                batch = pickle.loads(connection.recv_bytes())
            except (EOFError, OSError):
                break  # the proxy is gone: store what arrived, then leave
            if batch is None:
                break
            for call in batch:
                writer.submit(call)
    finally:
        writer.stop(timeout=600)


class Recorder:
    def __init__(self, db_path: Path, store_bodies: bool, proxy_id: str | None = None) -> None:
        self._args = (str(db_path), store_bodies, proxy_id)
        self._context = multiprocessing.get_context("spawn")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="taskmeter-recorder", daemon=True)
        self._process = None
        self._connection: Connection | None = None
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
        """Hand over everything submitted, then wait for the child to store it."""
        self._queue.put(_STOP)
        self._sender.join(timeout)
        if self._process is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                log.error("meter: the recorder did not finish in %.0f s; stopping it", timeout)
                self._process.terminate()

    def _spawn(self) -> None:
        receiver, sender = self._context.Pipe(duplex=False)
        self._process = self._context.Process(target=_child_main, args=(receiver, *self._args), name="taskmeter-recorder")
        self._process.start()
        receiver.close()
        self._connection = sender

    def _send(self, payload: bytes) -> None:
        while True:
            try:
                self._connection.send_bytes(payload)
                return
            except OSError:
                # The child is gone: what it had stored is stored; start another.
                self.restarts += 1
                log.error("meter: the recorder process exited (code %s); starting a new one", self._process.exitcode)
                self._process.join(5)
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
        self._send(pickle.dumps(None))
        self._connection.close()
