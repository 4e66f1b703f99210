"""``{{ cookiecutter.dataset_name }}``: generated signals with captions, to check that PT aligns the encoder.

Replace it with a reader of your data: a factory that takes validated params and returns a
``DataReport`` of examples in the SDK's message format.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from mmllm_sdk.data.formats import DataReport, caption_example, caption_report
from mmllm_sdk.validation import StrictModel, validate
from pydantic import Field

from {{ cookiecutter.package_name }}.modality import CHANNELS

DATASET = "{{ cookiecutter.dataset_name }}"
KINDS = ("a flat signal", "a slow wave", "a fast wave", "a rising ramp")  # what the captions say


class DatasetParams(StrictModel):
    """Params of ``{{ cookiecutter.dataset_name }}``."""

    out_dir: str  # where the .npy files are written (created if missing)
    num_examples: int = Field(16, ge=1)  # signals; the kinds take turns
    seed: int = 0  # the same seed writes the same files
    length: int = Field(64, ge=2)  # samples per signal


def make_signal(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """A (length, CHANNELS) signal of the given kind, with a random phase and a little noise."""
    t = np.linspace(0, 1, length)[:, None]
    phase = rng.uniform(0, 2 * np.pi, (1, CHANNELS))
    shapes = {
        "a flat signal": np.zeros_like(t + phase),
        "a slow wave": np.sin(2 * np.pi * 2 * t + phase),
        "a fast wave": np.sin(2 * np.pi * 12 * t + phase),
        "a rising ramp": np.repeat(2 * t - 1, CHANNELS, axis=1),
    }
    return (shapes[kind] + rng.normal(0, 0.05, (length, CHANNELS))).astype(np.float32)


def build_dataset(params: dict[str, Any]) -> DataReport:
    """Write ``num_examples`` signals as .npy files into ``out_dir``; PT examples: the signal, then its caption."""
    p = validate(DatasetParams, params, where=f"{DATASET}.params")
    out_dir = Path(os.path.abspath(os.path.expanduser(p.out_dir)))
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(p.seed)
    examples = []
    for index in range(p.num_examples):
        kind = KINDS[index % len(KINDS)]
        path = out_dir / f"{index:05d}.npy"
        np.save(path, make_signal(kind, p.length, rng))
        examples.append(caption_example("{{ cookiecutter.modality }}", path, f"This is {kind}.", f"{DATASET}:{index}"))
    return caption_report(examples, out_dir)


build_dataset.Params = DatasetParams  # the SDK validates a recipe's data params against it
