"""Labelled tasks for the alignment study (``benchmarks/alignment.py``): data files and the model spec of each.

Each task writes captions for PT, questions for SFT and held-out questions (messages JSONL with a ``category``), all
generated here with exact labels, and names the model that aligns it: SmolLM2-135M-Instruct (frozen) and the task's
frozen encoder. None is the demo's colour/shape pair:

- ``patterns``: ten texture classes (stripes, checks, rings …) in random colours and scales, on images; EfficientNet-Lite0.
- ``count``: how many shapes (one to four) a ``synthetic-shapes`` scene holds; EfficientNet-Lite0.
- ``pointcloud``: which of five solids a coloured point cloud samples (the mmllm-pointcloud plugin); Point-BERT.
- ``imu``: which of four activities a wrist recording holds (the mmllm-imu plugin); imu-patch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmllm_sdk.data.formats import caption_example
from mmllm_sdk.default_plugins.demo import demo_model_spec, locate_weights

PATTERNS = ("stripes", "columns", "diagonals", "checks", "dots", "rings", "waves", "zigzags", "grid", "speckles")
IMAGE_SIZE = 224


@dataclass(frozen=True)
class TaskData:
    name: str
    spec: dict[str, Any]  # the model spec (frozen LLM and encoder, the default projector)
    captions: Path  # PT: the input, then its caption
    train: Path  # SFT: a question, then its one-word label answer
    heldout: Path  # scored questions, each with its category
    classes: int


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _task(
    name: str, spec: dict[str, Any], folder: Path, rows: dict[str, list[dict[str, Any]]], classes: int
) -> TaskData:
    """The task, its captions, train and held-out rows written to JSONL files in ``folder``."""
    files = {split: _write_jsonl(folder / f"{split}.jsonl", rows[split]) for split in ("captions", "train", "heldout")}
    return TaskData(name, spec, files["captions"], files["train"], files["heldout"], classes)


def _question(modality: str, source: str, question: str, answer: str | None = None) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": modality, "path": source}, {"type": "text", "text": question}]}
    ]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return {"messages": messages}


# patterns: ten texture classes ---------------------------------------------------------------------------------


def pattern_image(kind: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A (size, size, 3) uint8 texture of class ``kind``: two random colours, a random period, phase and angle jitter."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(14, 40)
    phase = rng.uniform(0, period)
    if kind == "stripes":
        mask = np.sin(2 * np.pi * (y + phase) / period) > 0
    elif kind == "columns":
        mask = np.sin(2 * np.pi * (x + phase) / period) > 0
    elif kind == "diagonals":
        sign = rng.choice([-1.0, 1.0])
        mask = np.sin(2 * np.pi * (x + sign * y + phase) / (period * 1.4)) > 0
    elif kind == "checks":
        mask = (np.floor((x + phase) / period) + np.floor((y + phase) / period)) % 2 == 0
    elif kind == "dots":
        cx, cy = (x + phase) % period - period / 2, (y + phase) % period - period / 2
        mask = cx**2 + cy**2 < (period * 0.28) ** 2
    elif kind == "rings":
        cx, cy = rng.uniform(0.2, 0.8, size=2) * size
        mask = np.sin(2 * np.pi * np.hypot(x - cx, y - cy) / period) > 0
    elif kind == "waves":
        mask = np.sin(2 * np.pi * (y + 0.3 * period * np.sin(2 * np.pi * x / (2.5 * period)) + phase) / period) > 0
    elif kind == "zigzags":
        tri = np.abs(((x / period) % 1.0) - 0.5) * period
        mask = np.sin(2 * np.pi * (y + tri + phase) / period) > 0
    elif kind == "grid":
        width = max(2.0, period * 0.15)
        mask = ((x + phase) % period < width) | ((y + phase) % period < width)
    elif kind == "speckles":
        cell = max(3, int(period / 5))
        blocks = rng.random((size // cell + 1, size // cell + 1)) < 0.5
        mask = np.kron(blocks, np.ones((cell, cell), dtype=bool))[:size, :size]
    else:
        raise ValueError(kind)
    ground, ink = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
    while np.abs(ground.astype(int) - ink.astype(int)).sum() < 150:  # two colours that differ
        ink = rng.integers(0, 256, size=3)
    image = np.where(mask[..., None], ink, ground).astype(np.float32)
    image += rng.normal(0, 6, image.shape)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8)


def patterns(folder: Path, n_train: int, n_heldout: int, n_captions: int, image_spec: dict[str, Any]) -> TaskData:
    question = "What pattern is this?"

    def draw(split: str, count: int, seed: int) -> list[tuple[str, str]]:
        rng, rows = np.random.default_rng(seed), []
        for index in range(count):
            kind = PATTERNS[index % len(PATTERNS)]
            path = folder / split / f"{split}-{index:05d}.png"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pattern_image(kind, rng)).save(path)
            else:
                pattern_image(kind, rng)  # the same draws, so the next image is the same
            rows.append((str(path), kind))
        return rows

    caps = [caption_example("image", p, f"A picture of {k}.", p) for p, k in draw("captions", n_captions, 1)]
    train = [
        {**_question("image", p, question, k.capitalize() + "."), "category": "pattern"}
        for p, k in draw("train", n_train, 2)
    ]
    heldout = [
        {**_question("image", p, question, k.capitalize() + "."), "category": "pattern"}
        for p, k in draw("heldout", n_heldout, 3)
    ]
    return _task("patterns", image_spec, folder, {"captions": caps, "train": train, "heldout": heldout}, len(PATTERNS))


# count: synthetic-shapes scenes of one to four shapes -----------------------------------------------------------


def count(folder: Path, n_train: int, n_heldout: int, n_captions: int, image_spec: dict[str, Any]) -> TaskData:
    from mmllm_sdk.default_plugins.datasets.synthetic import generate_examples

    def params(task: str, num: int, split: str, seed: int) -> dict[str, Any]:
        extra = {"question_types": ["count"]} if task == "qa" else {}
        return {
            "task": task,
            "num_examples": num,
            "seed": seed,
            "split": split,
            "max_shapes": 4,
            "out_dir": str(folder / split),
            **extra,
        }

    caps = (
        [item.example for item in generate_examples(params("captions", n_captions, "train", 1))] if n_captions else []
    )
    train = [{**i.example, "category": "count"} for i in generate_examples(params("qa", n_train, "train", 2))]
    heldout = [{**i.example, "category": "count"} for i in generate_examples(params("qa", n_heldout, "heldout", 3))]
    return _task("count", image_spec, folder, {"captions": caps, "train": train, "heldout": heldout}, 4)


# the plugins' modalities: their synthetic sets, captions turned into labelled questions --------------------------


def _plugin_task(
    name: str,
    modality: str,
    dataset: Callable[[dict[str, Any]], Any],
    params: dict[str, Any],
    encoder: dict[str, Any],
    question: str,
    label: Callable[[str], str],
    folder: Path,
    sizes: tuple[int, int, int],
    llm: dict[str, Any],
) -> TaskData:
    def records(split: str, num: int, seed: int) -> list[tuple[str, str]]:
        report = dataset({**params, "num_examples": num, "seed": seed, "out_dir": str(folder / split)})
        rows = []
        for example in report.examples:
            source = example["messages"][0]["content"][0]["path"]
            caption = example["messages"][1]["content"][0]["text"]
            rows.append((source, caption))
        return rows

    n_train, n_heldout, n_captions = sizes
    caps = [caption_example(modality, s, c, s) for s, c in records("captions", n_captions, 11)] if n_captions else []
    train = [{**_question(modality, s, question, label(c)), "category": name} for s, c in records("train", n_train, 12)]
    heldout = [
        {**_question(modality, s, question, label(c)), "category": name} for s, c in records("heldout", n_heldout, 13)
    ]
    spec = {"llm": llm, "inputs": {modality: {"encoder": encoder, "projector": {"name": "pool"}}}}
    classes = len({item["messages"][1]["content"][0]["text"] for item in heldout})
    return _task(name, spec, folder, {"captions": caps, "train": train, "heldout": heldout}, classes)


def pointcloud(folder: Path, n_train: int, n_heldout: int, n_captions: int, image_spec: dict[str, Any]) -> TaskData:
    from mmllm_pointcloud.dataset import build_pointcloud_dataset

    def shape(caption: str) -> str:  # "A red cube." -> "Cube."
        return caption.rstrip(".").split()[-1].capitalize() + "."

    encoder = {"name": "point-bert", "params": {"use_rgb": False}}
    return _plugin_task(
        "pointcloud", "pointcloud", build_pointcloud_dataset, {"num_points": 1024}, encoder,
        "What solid is this?", shape, folder, (n_train, n_heldout, n_captions), image_spec["llm"],
    )  # fmt: skip


def imu(folder: Path, n_train: int, n_heldout: int, n_captions: int, image_spec: dict[str, Any]) -> TaskData:
    from mmllm_imu.dataset import build_imu_dataset

    def activity(caption: str) -> str:  # "The wearer is walking." -> "Walking."
        return re.sub(r"^The wearer is ", "", caption).capitalize()

    encoder = {"name": "imu-patch", "params": {"sample_rate": 100}}
    return _plugin_task(
        "imu", "imu", build_imu_dataset, {"sample_rate": 100}, encoder,
        "What is the wearer doing?", activity, folder, (n_train, n_heldout, n_captions), image_spec["llm"],
    )  # fmt: skip


TASKS: dict[str, Callable[..., TaskData]] = {"patterns": patterns, "count": count, "pointcloud": pointcloud, "imu": imu}


def make_task(name: str, folder: Path, n_train: int, n_heldout: int, n_captions: int) -> TaskData:
    """Write task ``name``'s data under ``folder`` (files already there are reused) and return it."""
    image_spec = demo_model_spec(*locate_weights())
    return TASKS[name](folder / name, n_train, n_heldout, n_captions, image_spec)
