"""Rules in SQL that the store, the reports and the status line share. No imports:
a read command pays nothing for them (store/interactions.py costs its dataclasses)."""

# A failed call: a generation call that got no model answer and stated no usage:
# no response came (outcome 'failed', the meter's own refusals included), or the
# answer was an HTTP error, 4xx or 5xx. Not an AI interaction (docs/metrics.md).
# The one rule; the rollups' triggers keep a frozen copy (migration m017).
# `{r}` is the interactions table's name or alias in the query.
FAILED_CALL_SQL = (
    "({r}.operation = 'generate' AND {r}.input_total IS NULL AND ({r}.outcome = 'failed' OR {r}.http_status >= 400))"
)
