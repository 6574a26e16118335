"""The SQLite store: schema, migrations and the operations on it."""
