"""The team store's released migrations are locked by the hash of the SQL they run:
`meter team setup` never runs one again on a store that has it, so an edit would
reach no team. Append a new one (taskmeter/team/schema.py) instead."""

import hashlib

from taskmeter.team import schema

# Each team migration that teams may have applied.
RELEASED = {
    "t001_rows": "1d4be5d3a449207fecbc3b9ab910b088fd97b28e691ab90f687d34bd5c6bd2ff",
    "t002_views": "b853a779d1a0b01432526b4a79ac0ad2ca55d854ed8f8dcc7e9a4846d88f3264",
    "t003_rollups": "04ce51f6c54d0a1f8fb9fb84615bd5d5251fc2c5f7d983bf87d2064b0de7c4e0",
    "t004_usage_quarters": "f50c3b2451c435b9b9579652b8c2b8a0f13005b509c3f800df999f3a72094f05",
}


def test_released_team_migrations_are_unchanged_and_come_first_in_order():
    assert schema.KNOWN[: len(RELEASED)] == list(RELEASED)
    for name, sql in schema.MIGRATIONS[: len(RELEASED)]:
        assert hashlib.sha256(sql.encode()).hexdigest() == RELEASED[name], f"{name} was edited: append a new migration"


def test_team_migrations_have_unique_ordered_names():
    assert len(set(schema.KNOWN)) == len(schema.KNOWN)
    assert schema.KNOWN == sorted(schema.KNOWN)
