"""Smoke test of ``benchmarks/cpu_contention.py``: one policy, two short runs (quiet, then with a
busy process), and the JSON has the numbers the table is built from (timings are not checked).
Slow: two training subprocesses and a busy process on the CI's 2 cores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_contention.py"


@pytest.mark.slow
def test_one_policy_reports_quiet_and_busy_rates(tmp_path: Path) -> None:
    out = tmp_path / "contention.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--policies", "adaptive", "--epochs", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "slowdown" in done.stdout and "the target of <= 2.5x" in done.stdout
    result = json.loads(out.read_text())["results"]["adaptive"]
    assert result["quiet_steps_per_s"] > 0 and result["busy_steps_per_s"] > 0
    assert result["slowdown"] == pytest.approx(result["quiet_steps_per_s"] / result["busy_steps_per_s"])
    assert len(result["busy_threads_per_epoch"]) == 2
