"""Reconciliation with the agents' own logs (`meter reconcile`, docs/reconcile.md).

Claude Code, Codex and Gemini CLI each log every model call they make, with its
usage. Each module here reads one agent's log into LogTurns; pairing.py pairs
them with the meter's calls and tells which turns the meter never saw, and
importing.py stores those as calls whose usage_source is 'agent-log'."""
