"""Token counts as every part names and adds them: the stored columns, the tokens
object of the reports and `--json`, and their total. No imports: the status line,
the recorder and the budgets use it."""

TYPE_CHECKING = False
if TYPE_CHECKING:  # for the type checker alone: this module imports nothing when it runs
    from taskmeter.analytics.records import Tokens

# Inclusive counts (OpenTelemetry GenAI): input_total includes cache_read and
# cache_write, output_total includes reasoning. A count not stated is None (NULL).
TOKEN_COLUMNS = ("input_total", "cache_read", "cache_write", "output_total", "reasoning")
# What a call may state of its usage: the counts and the cost. Reports sum each with a count of
# the calls that stated it, so that a sum no call stated is missing, not 0.
STATED_COLUMNS = (*TOKEN_COLUMNS, "cost_usd")

# Who stated a call's counts (interactions.usage_source).
REPORTED = "reported"  # the provider
ESTIMATED = "estimated"  # counted with tiktoken: the provider stated none
PARTIAL = "partial"  # the stream was cut: what it stated, or the delivered text counted
AGENT_LOG = "agent-log"  # the agent's own log (`meter reconcile --import`): the meter never saw the call
# The task_usage column summing each source's tokens.
SOURCE_COLUMNS = {
    REPORTED: "reported_tokens",
    ESTIMATED: "estimated_tokens",
    PARTIAL: "partial_tokens",
    AGENT_LOG: "agent_log_tokens",
}

# total_tokens in SQL, where a count not stated adds nothing; `{r}` is the table's
# name or alias with its dot (`i.`, `u.`), or nothing.
TOKENS_SQL = "(coalesce({r}input_total, 0) + coalesce({r}output_total, 0))"


def total_tokens(row) -> int | None:
    """A call's or a sum's tokens: input plus output, None when neither was stated."""
    if row["input_total"] is None and row["output_total"] is None:
        return None
    return (row["input_total"] or 0) + (row["output_total"] or 0)


def tokens_object(row) -> "Tokens":
    """The tokens object of a call or a sum, as every report and `--json` gives it."""
    return {
        "input_total": row["input_total"],
        "cache_read": row["cache_read"],
        "cache_write": row["cache_write"],
        "output_total": row["output_total"],
        "reasoning": row["reasoning"],
        "total": total_tokens(row),
    }
