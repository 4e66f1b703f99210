"""benchmarks/alignment.py, the script behind docs/alignment.md's table, runs: a smoke run on one task."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_alignment_benchmark_prints_the_probe_next_to_the_aligned_model(tmp_path):
    out = tmp_path / "table.md"
    command = [sys.executable, "benchmarks/alignment.py", "--quick", "--tasks", "patterns", "--work", str(tmp_path)]
    done = subprocess.run([*command, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = out.read_text().splitlines()
    assert "| task " in table[-3] and table[-1].startswith("| patterns | 10 ")
    assert "settings: " in out.read_text() and "'train_examples': 24" in out.read_text()
