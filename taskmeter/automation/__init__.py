"""The self-filling record: git hooks, the pytest plugin, Claude Code hooks (docs/automation.md)."""
