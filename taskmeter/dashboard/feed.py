"""The live feed: server-sent events, one per call as it is stored.

It polls through aiosqlite, each poll a single SELECT in autocommit mode, so a
read transaction lasts one query and never holds back the WAL checkpoints of
the recorder. A browser that reconnects sends Last-Event-ID and misses nothing.
"""

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiosqlite
from starlette.requests import Request
from starlette.responses import StreamingResponse

from taskmeter.dashboard.pages import feed_call
from taskmeter.errors import MeterError
from taskmeter.printable import clip
from taskmeter.store.interactions import stored_after_query

POLL_SECONDS = 0.25
KEEPALIVE_SECONDS = 15  # a comment now and then, so proxies and browsers keep the stream
BATCH = 200  # calls read in one poll at most
ROWID_MAX = 2**63 - 1  # SQLite's largest row number


# A call as a row of the feed's table, rendered by the page's own template.
RenderRow = Callable[[dict], str]


def _event(call: dict, render_row: RenderRow) -> str:
    data = json.dumps({"call": call, "html": render_row(call)})
    return f"id: {call['rowid']}\nevent: call\ndata: {data}\n\n"


async def calls_after(db_path: Path, rowid: int, render_row: RenderRow, stopping: threading.Event) -> AsyncIterator[str]:
    """Events for every call stored after `rowid`, as they come, and keep-alive comments,
    until `stopping` is set: the stream then ends by itself, so Ctrl-C finds no feed to cancel."""
    read_only = Path(db_path).resolve().as_uri() + "?mode=ro"  # a path with spaces or '?' stays one path
    async with aiosqlite.connect(read_only, uri=True, isolation_level=None) as db:
        db.row_factory = aiosqlite.Row
        quiet = 0.0
        while not stopping.is_set():
            async with db.execute(*stored_after_query(rowid, limit=BATCH)) as cursor:
                rows = list(await cursor.fetchall())  # a list: aiosqlite types it as any iterable
            for row in rows:
                call = feed_call(dict(row))
                rowid = call["rowid"]
                yield _event(call, render_row)
            quiet = 0.0 if rows else quiet + POLL_SECONDS
            if quiet >= KEEPALIVE_SECONDS:
                quiet = 0.0
                yield ": still here\n\n"
            if len(rows) < BATCH:
                await asyncio.sleep(POLL_SECONDS)


def row_number(text: str, what: str, smallest: int = 1) -> int:
    """A row number from a URL (the feed's start, an alert's ID), or a one-line 400:
    no huge, negative, non-ASCII or 5,000-digit value reaches int() or SQLite."""
    if text.isascii() and text.isdigit() and len(text) <= len(str(ROWID_MAX)) and smallest <= int(text) <= ROWID_MAX:
        return int(text)
    raise MeterError(f"{what} must be a whole number from {smallest} to {ROWID_MAX}, not {clip(text, 24)!r}")


def endpoint(db_path: Path, render_row: RenderRow, stopping: threading.Event):
    async def feed(request: Request) -> StreamingResponse:
        start = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        rowid = row_number(start, "the call to start after (after= or Last-Event-ID)", smallest=0)
        return StreamingResponse(
            calls_after(db_path, rowid, render_row, stopping),
            media_type="text/event-stream",
            headers={"cache-control": "no-store"},
        )

    return feed
