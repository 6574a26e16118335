"""Calls to read (issue 24): a call is named by any unique part of its ID of 6 or
more characters, wherever a call ID is taken (show, flag, unflag, retag); a part
that several IDs hold lists them with their task, model and time, exits non-zero
and changes nothing. And migration m025, which tells a bound session from the
x-meter-task header: the calls stored before it that cannot be told apart say so."""

import pytest

from taskmeter import ids
from taskmeter.store import connection, migrations, tasks
from taskmeter.store.calls import CallRow, store_calls
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from tests.conftest import dump

# Made in the same centisecond, so they share their first 8 characters; two share "4k7m"
# in their random part too. Each ends with its check character.
BODIES = ["05n5c1d24k7m", "05n5c1d24k7n", "05n5c1d2zz9q"]
ONE, TWO, THREE = (body + ids.check_char(body) for body in BODIES)


def _store(db, interaction_id: str, task_id: str | None, model: str, at: str) -> None:
    with write_transaction(db):
        store_calls(
            db,
            [
                CallRow(
                    Interaction(
                        id=interaction_id,
                        task_id=task_id,
                        attribution="path" if task_id else None,
                        started_at=at,
                        ended_at=at,
                        model=model,
                        http_status=200,
                        input_total=10,
                        output_total=2,
                        usage_source="reported",
                    )
                )
            ],
        )


@pytest.fixture
def stored(db, meter):
    assert meter("set-task", "P1-001", "--create").code == 0
    _store(db, ONE, "P1-001", "gpt-4o", "2026-11-20T10:00:00.000000Z")
    _store(db, TWO, "P1-002", "claude-sonnet-4-6", "2026-11-20T10:00:01.000000Z")
    _store(db, THREE, None, "gemini-2.5-flash", "2026-11-20T10:00:02.000000Z")
    return db


def test_any_unique_part_of_six_or_more_characters_names_the_call(stored, meter):
    for part in (THREE[-6:], THREE[4:10], THREE[:12], THREE.upper()):
        shown = meter("show", part, "--json")
        assert shown.code == 0, (part, shown.err)
        assert '"interaction_id": "' + THREE + '"' in shown.out
    assert meter("flag", ONE[-6:], "--note", "invented API").code == 0
    assert stored.execute("SELECT interaction_id FROM flags").fetchall()[0][0] == ONE
    assert meter("unflag", ONE[-6:]).code == 0
    assert stored.execute("SELECT count(*) FROM flags").fetchone()[0] == 0
    assert meter("retag", TWO[-6:], THREE[-6:], "--to", "P1-001").code == 0
    assert [row[0] for row in stored.execute("SELECT task_id FROM interactions ORDER BY id")] == ["P1-001"] * 3
    assert meter("retag", "--between", ONE[-6:], TWO[-6:], "--unassign").code == 0
    assert [row[0] for row in stored.execute("SELECT task_id FROM interactions ORDER BY id")] == [None, None, "P1-001"]


@pytest.mark.parametrize(
    "command",
    [["show", "{part}"], ["flag", "{part}"], ["unflag", "{part}"], ["retag", "{part}", "--to", "P1-001"]],
)
def test_an_ambiguous_part_lists_the_candidates_and_changes_nothing(stored, meter, db_path, command):
    assert meter("flag", ONE).code == 0  # unflag has a flag to remove, were the part not ambiguous
    before = dump(db_path)
    done = meter(*(argument.format(part="c1d24k7") for argument in command))
    assert done.code == 1 and done.out == ""
    lines = done.err.splitlines()
    assert lines[0].startswith("meter: error: 'c1d24k7' is ambiguous: part of 2 interaction IDs; type more of it")
    assert lines[1:] == [
        f"  {ONE}  P1-001  gpt-4o  2026-11-20T10:00:00.000000Z",
        f"  {TWO}  P1-002  claude-sonnet-4-6  2026-11-20T10:00:01.000000Z",
    ]
    assert dump(db_path) == before


def test_a_part_shorter_than_six_characters_or_unknown_is_one_line(stored, meter):
    short = meter("show", "4k7m")
    assert short.code == 1 and short.err.count("\n") == 1 and "at least 6 characters" in short.err
    unknown = meter("show", "qqqqqqq")
    assert unknown.code == 1 and unknown.err.count("\n") == 1 and "unknown interaction 'qqqqqqq'" in unknown.err
    typo = meter("show", ONE[:-1] + ("0" if ONE[-1] != "0" else "1"))
    assert typo.code == 1 and "does not check" in typo.err


def test_many_candidates_are_listed_ten_and_counted(db, meter):
    for n in range(12):
        body = f"05n5c1d2{ids.ALPHABET[n]}aaa"
        _store(db, body + ids.check_char(body), None, "gpt-4o", f"2026-11-20T10:00:{n:02d}.000000Z")
    done = meter("show", "05n5c1d2")
    assert done.code == 1
    lines = done.err.splitlines()
    assert "is ambiguous: part of 12 interaction IDs" in lines[0]
    assert len(lines) == 12 and lines[-1] == "  and 2 more"


def test_m025_says_which_calls_it_cannot_tell_apart(tmp_path, monkeypatch):
    """Before m025, a call of a bound Claude Code session was stored as `header`, like
    one naming its task in x-meter-task: those of a bound session become
    `header-or-session`; the rest stay `header`, and new calls of a bound session
    are `session`."""
    before = [fn for fn in migrations.MIGRATIONS if fn.__name__ != "m025_attribution_session"]
    monkeypatch.setattr(migrations, "MIGRATIONS", before)
    path = tmp_path / "old.db"
    db = connection.connect(path)
    tasks.set_task(db, "P2-001", create=True)
    tasks.bind_session(db, "cc-bound", "P2-001", "2026-11-20T09:00:00.000000Z")
    with write_transaction(db):
        for number, session in ((1, "cc-bound"), (2, "cc-other")):
            db.execute(
                "INSERT INTO interactions (id, started_at, task_id, attribution, client_session) VALUES (?, ?, 'P2-001', 'header', ?)",
                (f"00000000000{number}", f"2026-11-20T10:00:0{number}.000000Z", session),
            )
    db.close()
    monkeypatch.undo()
    db = connection.connect(path)
    try:
        stored = dict(db.execute("SELECT client_session, attribution FROM interactions").fetchall())
        assert stored == {"cc-bound": "header-or-session", "cc-other": "header"}
        row = Interaction(id="000000000003", started_at="2026-11-20T11:00:00.000000Z", client_session="cc-bound")
        with write_transaction(db):
            store_calls(db, [CallRow(row)])
        assert db.execute("SELECT attribution FROM interactions WHERE id = '000000000003'").fetchone()[0] == "session"
    finally:
        db.close()


@pytest.mark.e2e
def test_calls_of_the_same_minute_through_a_real_proxy(tmp_path):
    """Calls made a moment apart share their first characters; their random end names each."""
    import json
    import subprocess

    import openai

    from tests.fake_upstream import FakeUpstream, Scenario
    from tests.fixtures import ALL
    from tests.proxy_harness import VENV_BIN, proxy_in_front_of

    chat = {f.name: f for f in ALL}["openai/chat_nonstream_cached_tokens"]
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=chat.body)
        running = proxy_in_front_of(tmp_path, upstream.port)
        try:
            client = openai.OpenAI(base_url=f"{running.origin}/openai/v1", api_key="sk-test", max_retries=0)
            for n in range(3):
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{n}"}])
            rows = running.rows(wait_for=3)
            assert len(rows) == len(upstream.received) == 3  # every call stored once

            def meter(*args: str) -> subprocess.CompletedProcess:
                command = [str(VENV_BIN / "meter"), *args, "--db", str(running.db_path)]
                return subprocess.run(command, capture_output=True, text=True, timeout=60)

            for row in rows:
                shown = meter("show", row["id"][-6:], "--json")
                assert shown.returncode == 0 and json.loads(shown.stdout)["interaction_id"] == row["id"]
            # The 6th character changes every 10.24 s: the middle call shares it with one neighbour at least.
            shared = rows[1]["id"][:6]
            holding = [row["id"] for row in rows if shared in row["id"]]
            assert len(holding) >= 2
            refused = meter("flag", shared)
            assert refused.returncode == 1 and f"is ambiguous: part of {len(holding)} interaction IDs" in refused.stderr
            assert [line.split()[0] for line in refused.stderr.splitlines()[1:]] == holding
            assert all(" gpt-4o-mini" in line for line in refused.stderr.splitlines()[1:])
            db = connection.connect(running.db_path)  # the running proxy writes its health: only the flags are compared
            try:
                assert db.execute("SELECT count(*) FROM flags").fetchone()[0] == 0
            finally:
                db.close()
        finally:
            running.stop()
