"""The team store's bench runs end to end on a real PostgreSQL (a few hundred calls)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parent.parent


def test_the_team_bench_measures_backlog_latency_and_a_report_over_a_built_store(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.team", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "team-benchmarks.json").read_text())
    assert results["backlog_calls"] > 300 and results["backlog_calls_per_second"] > 0
    assert results["steady_calls_synced"] == results["steady_calls"] > 0, "every call reached the team store"
    assert 0 <= results["latency_p50_seconds"] <= results["latency_p99_seconds"]
    scale = results["report_at_scale"]
    assert scale["calls"] == 20_000 and scale["developers"] == 50, "the store built on the server"
    assert scale["phase_calls"] > 0 and scale["phase_developers"] > 1, "the report read P5's calls through the rollups"
    assert scale["report_server_seconds"] > 0 and scale["report_statements"] > 0
