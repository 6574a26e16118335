"""`meter reconcile --import`: the turns the meter missed, stored as calls.

Each becomes an interactions row with usage_source 'agent-log', priced by the
recorder's pricing, attributed as pairing.py says, and stored by the store's
own path (store_calls), so every rollup counts it as the call it was, and the
context switches of its task are recomputed as after a retag. Its ID
is derived from the turn (pairing.import_id): a second import finds it and adds
nothing, and an ID already taken is never overwritten."""

import json
import sqlite3

from taskmeter.reconcile.pairing import AgentResult
from taskmeter.store.calls import CallRow, recompute_context_switches, store_calls
from taskmeter.store.connection import require_transaction
from taskmeter.store.interactions import Interaction
from taskmeter.tokens import AGENT_LOG


def import_missed(db: sqlite3.Connection, results: list[AgentResult]) -> int:
    """Store every missed turn in the caller's transaction; returns how many."""
    require_transaction(db, "import_missed")
    rows = []
    for result in results:
        module = result.agent
        for turn in result.turns:
            if turn.status != "missed":
                continue
            log, usage = turn.log, turn.log.usage
            rows.append(
                CallRow(
                    Interaction(
                        id=turn.import_id,
                        started_at=log.at,
                        ended_at=log.at,
                        task_id=turn.task_id,
                        attribution=turn.attribution,
                        provider=module.PROVIDER,
                        protocol=module.PROTOCOLS[0],
                        operation="generate",
                        model=log.model,
                        outcome="complete",
                        input_total=usage.input_total,
                        cache_read=usage.cache_read,
                        cache_write=usage.cache_write,
                        output_total=usage.output_total,
                        reasoning=usage.reasoning,
                        usage_source=AGENT_LOG,
                        raw_usage=json.dumps(usage.raw, separators=(",", ":")) if usage.raw is not None else None,
                        cost_usd=turn.cost_usd,
                        price_source=turn.price_source,
                        client=f"{module.TITLE} {log.version}" if log.version else module.TITLE,
                        client_session=log.session,
                        response_id=log.response_id,
                        notes=f"imported from {module.TITLE}'s log {log.file}:{log.line}",
                    )
                )
            )
    count = "SELECT count(*) FROM interactions WHERE usage_source = ?"
    before = db.execute(count, (AGENT_LOG,)).fetchone()[0]
    store_calls(db, rows)  # an ID a metered call already has is left alone (ON CONFLICT DO NOTHING)
    # A call stored into the past can change whether later calls switched context.
    for task_id in {row.interaction.task_id for row in rows if row.interaction.task_id is not None}:
        recompute_context_switches(db, task_id)
    return db.execute(count, (AGENT_LOG,)).fetchone()[0] - before
