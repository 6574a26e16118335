"""Where the spool and quarantine files of a database are, and how many calls each
holds: what `meter status` needs of handover/callfile.py, without its imports."""

from pathlib import Path


def spool_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".spool.jsonl")


def quarantine_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".quarantine.jsonl")


def count_lines(path: Path) -> int:
    """The calls in a spool or quarantine file: one JSON line each."""
    try:
        with open(path, "rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return 0
