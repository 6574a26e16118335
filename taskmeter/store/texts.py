"""What calls said (call_texts) and their whole bodies (bodies): read for
`meter show`, deleted by retention and `meter purge`. Usage never goes with them."""

import json
import sqlite3

from taskmeter.store.connection import write_transaction


def of_call(db: sqlite3.Connection, interaction_id: str) -> dict | None:
    """{"prompt", "steps", "response"} of a call, or None when nothing was kept."""
    row = db.execute("SELECT prompt, steps, response FROM call_texts WHERE interaction_id = ?", (interaction_id,)).fetchone()
    if row is None:
        return None
    return {"prompt": row["prompt"], "steps": json.loads(row["steps"]) if row["steps"] else [], "response": row["response"]}


def of_calls(db: sqlite3.Connection, interaction_ids: list[str]) -> dict[str, dict]:
    """What each of the calls said, by ID (as of_call; a call with nothing kept is absent)."""
    said = {}
    for start in range(0, len(interaction_ids), _IDS_PER_QUERY):
        chunk = interaction_ids[start : start + _IDS_PER_QUERY]
        rows = db.execute(
            "SELECT interaction_id, prompt, steps, response FROM call_texts"
            f" WHERE interaction_id IN ({', '.join('?' for _ in chunk)})",
            chunk,
        )
        for row in rows:
            steps = json.loads(row["steps"]) if row["steps"] else []
            said[row["interaction_id"]] = {"prompt": row["prompt"], "steps": steps, "response": row["response"]}
    return said


# Well under SQLite's limit on a statement's parameters.
_IDS_PER_QUERY = 500


def purge(db: sqlite3.Connection, before: str | None = None) -> int:
    """Delete the stored text and bodies of calls started before `before` (every
    call when None); returns how many calls lost text."""
    where, params = "", []
    if before is not None:
        where, params = "WHERE interaction_id IN (SELECT id FROM interactions WHERE started_at < ?)", [before]
    with write_transaction(db):
        texts = db.execute(f"DELETE FROM call_texts {where}", params).rowcount
        bodies = db.execute(f"DELETE FROM bodies {where}", params).rowcount
    return max(texts, bodies)
