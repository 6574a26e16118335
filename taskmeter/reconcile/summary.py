"""What `meter reconcile` reports, as `--json` gives it (docs/reconcile.md):
per agent and per task, the turns the meter saw, missed and imported, and the
calls the log does not have, each with tokens and cost."""

from taskmeter.reconcile.pairing import AgentResult, Turn
from taskmeter.tokens import TOKEN_COLUMNS, tokens_object

KINDS = ("seen", "missed", "imported", "meter_only")


class _Tally:
    def __init__(self) -> None:
        self.count = 0
        self.sums: dict[str, int | None] = dict.fromkeys(TOKEN_COLUMNS)
        self.cost_usd = 0.0
        self.unpriced = 0

    def add(self, counts: dict, cost: float | None) -> None:
        self.count += 1
        for column in TOKEN_COLUMNS:
            if counts[column] is not None:
                self.sums[column] = (self.sums[column] or 0) + counts[column]
        if cost is None:
            self.unpriced += 1
        else:
            self.cost_usd += cost

    def record(self) -> dict:
        return {"count": self.count, "tokens": tokens_object(self.sums), "cost_usd": self.cost_usd, "unpriced": self.unpriced}


def _counts(turn: Turn) -> dict:
    usage = turn.log.usage
    return {column: getattr(usage, column) for column in TOKEN_COLUMNS}


def missed_record(turn: Turn) -> dict:
    log = turn.log
    return {
        "at": log.at,
        "session": log.session,
        "model": log.model,
        "tokens": tokens_object(_counts(turn)),
        "cost_usd": turn.cost_usd,
        "task_id": turn.task_id,
        "attribution": turn.attribution,
        "response_id": log.response_id,
        "interaction_id": turn.import_id,  # the ID --import gives it
        "file": log.file,
        "line": log.line,
    }


def summary(results: list[AgentResult]) -> list[dict]:
    agents = []
    for result in results:
        totals = {kind: _Tally() for kind in KINDS}
        per_task: dict[str | None, dict[str, _Tally]] = {}
        for turn in result.turns:
            for tally in (totals, per_task.setdefault(turn.task_id, {kind: _Tally() for kind in KINDS})):
                tally[turn.status].add(_counts(turn), turn.cost_usd)
        for call in result.meter_only:
            for tally in (totals, per_task.setdefault(call["task_id"], {kind: _Tally() for kind in KINDS})):
                tally["meter_only"].add(call, call["cost_usd"])
        agents.append(
            {
                "agent": result.agent.NAME,
                "title": result.agent.TITLE,
                "log_files": result.log_files,
                "turns": len(result.turns),
                **{kind: totals[kind].record() for kind in KINDS},
                "tasks": [
                    {"task_id": task_id, **{kind: tallies[kind].record() for kind in KINDS}}
                    for task_id, tallies in sorted(per_task.items(), key=lambda item: item[0] or "")
                ],
                "missed_turns": [missed_record(turn) for turn in result.turns if turn.status == "missed"],
                "meter_only_calls": [call["id"] for call in result.meter_only],
            }
        )
    return agents
