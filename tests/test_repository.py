"""The repository stands alone: a clone with nothing beside it has all it needs."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The folder of reference material that sat beside the repository while it was
# built; spelled in two parts so this file does not name it.
OUTSIDE_REFERENCE = b"../" + b"shared"


def test_no_tracked_file_refers_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    offenders = []
    for name in filter(None, tracked):
        path = ROOT / name.decode()
        if path.is_file() and OUTSIDE_REFERENCE in path.read_bytes():
            offenders.append(name.decode())
    assert offenders == []


def test_every_recorded_response_the_tests_replay_is_in_the_repository():
    from tests.fixtures import ALL, FIXTURES

    assert FIXTURES.is_relative_to(ROOT)
    assert len(ALL) == 47  # 46 recorded, and one Gemini recording wrapped in Code Assist's envelope
    assert len({fixture.meta["provider"] for fixture in ALL}) == 10
