"""The team syncer's state file (`<db>.team.json`, what `meter team status` shows) is written
when it changes: when rows go to the team store or its error changes, not at every pass of
an idle syncer (every POLL_SECONDS, for as long as the proxy runs). In process, the team
store's side replaced by a connection that takes every batch."""

import contextlib

import pytest

from taskmeter.store import connection, outbox
from taskmeter.team import sync
from taskmeter.team.address import TeamStoreError

AT = "2026-01-01T00:00:00.000000Z"


class _Stop(BaseException):
    """Ends sync.run's loop after the passes a test plays."""


class _Store:
    """A team store that takes each batch, or fails while `down`."""

    down = False

    def transaction(self):
        if self.down:
            raise TeamStoreError("cannot reach the team store")
        return contextlib.nullcontext()


def _call(db, call_id: str) -> None:
    with connection.write_transaction(db):
        db.execute("INSERT OR IGNORE INTO phases (id, created_at) VALUES ('P1', ?)", (AT,))
        db.execute("INSERT OR IGNORE INTO tasks (id, phase_id, created_at, title) VALUES ('P1-001', 'P1', ?, 'a')", (AT,))
        db.execute("INSERT INTO interactions (id, task_id, started_at, model) VALUES (?, 'P1-001', ?, 'm')", (call_id, AT))


def test_an_idle_syncer_writes_its_state_only_when_rows_go_or_its_error_changes(tmp_path, monkeypatch):
    path = tmp_path / "meter.db"
    db = connection.connect(path)
    outbox.join(db, AT)
    store = _Store()
    monkeypatch.setattr(sync.Syncer, "_connection", lambda self: store)
    monkeypatch.setattr(sync.Syncer, "_send", lambda self, conn, batch: len(batch))
    writes: list[sync.SyncState] = []
    write = sync.SyncState.write
    monkeypatch.setattr(
        sync.SyncState, "write", lambda state, db_path: (writes.append(sync.replace(state)), write(state, db_path))
    )
    # What happens before each pass after the first: a call; two idle passes; the store down as
    # another call comes (its pass and the retry's fail alike); back up; two idle passes.
    down = lambda: (setattr(store, "down", True), _call(db, "0000000000002"))  # noqa: E731
    plays = iter([lambda: _call(db, "0000000000001"), None, None, down, None, lambda: setattr(store, "down", False), None, None])

    def next_pass(seconds: float) -> None:
        play = next(plays, _Stop)
        if play is _Stop:
            raise _Stop
        if play is not None:
            play()

    monkeypatch.setattr(sync.time, "sleep", next_pass)
    with pytest.raises(_Stop):
        sync.run(path, "postgresql://alice@127.0.0.1:1/team", share_text=False)
    # Of 9 passes, 4 changed the state: the first, each that sent rows, and the error's start.
    assert [state.error is not None for state in writes] == [False, False, True, False]
    first, sent, failed, back = (state.sent_rows for state in writes)
    assert first == 0 < sent == failed < back
    assert writes[0].last_sync_at is None and writes[1].last_sync_at <= writes[3].last_sync_at
    assert sync.SyncState.read(path) == writes[-1]
    db.close()
