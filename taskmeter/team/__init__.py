"""The team store: every developer's meter syncs its rows to one PostgreSQL (docs/team.md)."""
