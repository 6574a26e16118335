"""The benchmark harness runs end to end (a few requests per arm), so it cannot
rot unnoticed. It asserts that every measure produced a number, not a timing."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_run_produces_every_measure(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "benchmarks.json").read_text())
    assert len(report["targets"]) == 56  # 37, and a row per read command (bench.measures.READ_COMMANDS)
    for target in report["targets"]:
        value = target["value"]
        assert isinstance(value, bool) or (isinstance(value, (int, float)) and math.isfinite(value)), target
    results = report["results"]
    assert results["meter_rows"]["stored"] == results["meter_rows"]["requests"] > 0
    assert results["sse"]["P"]["identical_bytes"] and results["sse"]["M"]["identical_bytes"]
    assert results["concurrent_streams"]["P"]["lost_events"] == 0
    assert results["websocket"]["stored"]["lost"] == 0 and results["websocket"]["stored"]["exact_usage"]
    assert all(arm["lost_frames"] == 0 for arm in results["websocket"]["concurrent"].values())
    assert results["dashboard_load"]["feed_missing"] == 0 and results["dashboard_load"]["feed_delay_ms"]["n"] > 0
    assert results["budgets_load"]["headers_seen"] > 0
    # Issue 23's proxy costs: CPU per call in each scenario, M and P measured in the same window.
    assert set(results["cpu_per_request"]) == {"c=1, zero delay", "c=1, 200 ms upstream", "c=32, zero delay"}
    assert all(s[arm]["cpu_ms_per_request"] >= 0 for s in results["cpu_per_request"].values() for arm in "MP")
    assert set(results["soak_rss_mb"]["P_processes"]) == {"proxy", "recorder"}
    assert all(arm["beside"]["n"] > 0 for kind in results["large_bodies"].values() for arm in kind.values())
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| measure | target | measured | pass | detail |" in markdown
