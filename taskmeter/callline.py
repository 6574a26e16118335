"""One line per finished call, as the proxy's terminal and `meter log --follow`
show it. Standard library only: the recorder process prints these."""

from taskmeter.money import usd
from taskmeter.printable import printable
from taskmeter.timefmt import from_stored
from taskmeter.tokens import REPORTED, total_tokens


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def call_line(row: dict) -> str:
    """`09:15:02  P1-010  gpt-4o-mini  in 1,149 (cached 1,024)  out 353 (reasoning 0)  $0.0004  200  05J8...`,
    one line whatever the model's name or error says, with no control character."""
    started = from_stored(row["started_at"]).astimezone().strftime("%H:%M:%S") if row["started_at"] else "--:--:--"
    tokens = ""
    if total_tokens(row) is not None:
        tokens = f"in {_count(row['input_total'])}"
        if row["cache_read"] or row["cache_write"]:
            tokens += f" (cached {_count(row['cache_read'])}, written {_count(row['cache_write'])})"
        tokens += f"  out {_count(row['output_total'])}"
        if row["reasoning"]:
            tokens += f" (reasoning {_count(row['reasoning'])})"
        if row["usage_source"] and row["usage_source"] != REPORTED:
            tokens += f" [{row['usage_source']}]"
    cost = usd(row["cost_usd"]) if row["cost_usd"] is not None else "$?"
    status = str(row["http_status"]) if row["http_status"] is not None else "---"
    if row["outcome"] and row["outcome"] != "complete":
        status += f" {row['outcome']}"
    parts = [started, row["task_id"] or "unassigned", row["model"] or "?", tokens or "no usage", cost, status, row["id"]]
    if row["outcome"] == "failed" and row["error"]:
        parts.append(f"({row['error'][:120]})")
    return printable("  ".join(parts), one_line=True)
