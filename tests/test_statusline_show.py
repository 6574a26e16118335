"""Issue 24, reports people hand on: the status line can also show today's cost and the
agent session's cost, chosen and ordered by `[statusline] show`. Through a real `meter
proxy`, the official anthropic and openai SDKs and the loopback fake upstream; the status
line runs as Claude Code runs it, its status JSON on stdin."""

import json
import os
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import anthropic
import openai
import pytest

from taskmeter.money import usd
from taskmeter.store import connection
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction, insert_many
from taskmeter.timefmt import parse_moment, to_stored
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import VENV_BIN, meter, proxy_in_front_of

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}


@pytest.fixture
def proxy(tmp_path):
    with FakeUpstream() as upstream:
        upstream.routes["/v1/messages"] = Scenario(body=FIXTURE["anthropic/messages_nonstream_cache"].body)
        upstream.routes["/v1/chat/completions"] = Scenario(body=FIXTURE["openai/chat_nonstream_cached_tokens"].body)
        running = proxy_in_front_of(tmp_path, upstream.port)
        try:
            yield running, upstream
        finally:
            running.stop()


def _meter(proxy, *args: str, stdin: str = "", config: str | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "METER_CONFIG": str(proxy.config)}
    if config is not None:
        path = proxy.config.with_name("statusline.toml")
        path.write_text(proxy.config.read_text() + config)
        environ["METER_CONFIG"] = str(path)
    return meter(proxy, *args, env=environ, stdin=stdin)


def _line(proxy, session: str | None, config: str | None = None) -> list[str]:
    stdin = json.dumps({"session_id": session, "model": {"display_name": "Opus"}}) if session else ""
    done = _meter(proxy, "statusline", stdin=stdin, config=config)
    assert done.returncode == 0 and done.stderr == "" and done.stdout.count("\n") == 1, done
    return done.stdout.strip().split(" · ")


def _claude(proxy, session: str, n: int) -> None:
    client = anthropic.Anthropic(
        base_url=f"{proxy.origin}/anthropic",
        api_key="sk-ant-test",
        max_retries=0,
        default_headers={"user-agent": "claude-cli/2.1.197 (external, cli)", "x-claude-code-session-id": session},
    )
    for k in range(n):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": f"step {k}"}])


def test_today_and_the_session_cost_show_where_and_in_the_order_the_config_says(proxy):
    running, upstream = proxy
    assert _meter(running, "set-task", "P1-001", "--estimate", "1h").returncode == 0
    ours, other = str(uuid.uuid4()), str(uuid.uuid4())
    _claude(running, ours, 2)
    _claude(running, other, 1)
    chat = openai.OpenAI(base_url=f"{running.origin}/openai/v1", api_key="sk-test", max_retries=0)
    chat.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "no session"}])
    rows = running.rows(wait_for=4)
    assert len(rows) == len(upstream.received) == 4 and len({row["id"] for row in rows}) == 4  # each stored once
    # Yesterday's call counts for its session, not for today.
    yesterday = to_stored(parse_moment("today") - timedelta(minutes=30))
    db = connection.connect(running.db_path)
    try:
        with write_transaction(db):
            insert_many(
                db,
                [Interaction(id="0000000000y1", started_at=yesterday, client_session=ours, task_id="P1-001", cost_usd=1.5)],
            )
    finally:
        db.close()
    session_cost = sum(row["cost_usd"] for row in rows if row["client_session"] == ours) + 1.5
    today = sum(row["cost_usd"] for row in rows)
    assert all(row["cost_usd"] for row in rows) and session_cost != today

    shown = _line(running, ours, '\n[statusline]\nshow = ["session", "today", "task", "cost"]\n')
    assert shown[:2] == [f"session {usd(session_cost)}", f"today {usd(today)}"]
    assert shown[2].startswith("P1-001 ") and shown[2].endswith("/1h00m")
    assert shown[3] == usd(sum(row["cost_usd"] for row in rows if row["task_id"] == "P1-001") + 1.5)
    assert len(shown) == 4  # no tokens, flags or alerts: the config did not ask for them

    # A session the meter never saw is not metered, and has cost nothing.
    assert _line(running, "never-seen", '\n[statusline]\nshow = ["session", "today"]\n') == [
        "NOT METERED",
        f"session {usd(0)}",
        f"today {usd(today)}",
    ]
    # A shell prompt has no session: that item is left out.
    assert _line(running, None, '\n[statusline]\nshow = ["today", "session"]\n') == [f"today {usd(today)}"]


def test_the_default_line_is_unchanged_and_a_bad_item_is_one_line(proxy):
    running, upstream = proxy
    assert _meter(running, "set-task", "P1-002").returncode == 0
    session = str(uuid.uuid4())
    _claude(running, session, 1)
    rows = running.rows(wait_for=1)
    assert len(rows) == len(upstream.received) == 1
    shown = _line(running, session)
    assert shown[0].startswith("P1-002 ") and shown[2] == usd(rows[0]["cost_usd"])
    assert not any(part.startswith(("today", "session")) for part in shown)

    assert _line(running, session, '\n[statusline]\nshow = ["task", "todays"]\n') == [
        "meter: MeterError: statusline.show: no item 'todays' (`meter config check`)"
    ]
    for wrong, said in (('["today", "today"]', "listed twice"), ('["todays"]', "'todays' is not one of"), ('"today"', "list")):
        path = running.config.with_name("wrong.toml")
        path.write_text(running.config.read_text() + f"\n[statusline]\nshow = {wrong}\n")
        check = subprocess.run([str(VENV_BIN / "meter"), "config", "check", str(path)], capture_output=True, text=True)
        assert check.returncode == 1 and check.stderr.count("\n") == 1, check
        assert "statusline.show" in check.stderr and said in check.stderr, check.stderr


@pytest.fixture
def kathmandu(monkeypatch):
    """Local time UTC+05:45 here and in the commands started (TZ, read again at time.tzset())."""
    monkeypatch.setenv("TZ", "Asia/Kathmandu")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_today_begins_at_local_midnight(proxy, kathmandu):
    """A call a minute before local midnight is yesterday's, one at midnight is today's,
    in a zone whose midnight is not on a UTC hour."""
    running, _ = proxy
    midnight = parse_moment("today", datetime.now(UTC))
    assert midnight.astimezone(UTC).minute == 15
    db = connection.connect(running.db_path)
    try:
        with write_transaction(db):
            insert_many(
                db,
                [
                    Interaction(id="0000000000m1", started_at=to_stored(midnight - timedelta(minutes=1)), cost_usd=2.0),
                    Interaction(id="0000000000m2", started_at=to_stored(midnight), cost_usd=0.25),
                ],
            )
    finally:
        db.close()
    assert _line(running, None, '\n[statusline]\nshow = ["today"]\n') == [f"today {usd(0.25)}"]  # a proxy records: metered
