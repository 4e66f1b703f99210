"""benchmarks/grpo.py, the script behind docs/training.md's GRPO table, runs: a smoke run on the real weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_grpo_benchmark_prints_the_score_after_sft_and_after_grpo(tmp_path):
    out = tmp_path / "table.md"
    command = [sys.executable, "benchmarks/grpo.py", "--quick", "--work", str(tmp_path), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert lines[-4].startswith("| SFT (16 questions, 1 epoch) |") and "(n=8)" in lines[-4]
    assert lines[-3].startswith("| + GRPO (1 steps × 2 prompts × 8 answers) |") and "(n=8)" in lines[-3]
    assert lines[-1].startswith("gain: ") and '"grpo_prompts": 8' in lines[1]
