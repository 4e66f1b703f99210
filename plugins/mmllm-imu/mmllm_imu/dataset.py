"""``imu-synthetic``: generated wrist-IMU recordings of simple activities, with captions, for PT."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from mmllm_sdk.data.formats import DataReport, caption_example, caption_report
from mmllm_sdk.validation import StrictModel, validate
from pydantic import Field

from mmllm_imu.encoder import GRAVITY
from mmllm_imu.modality import COLUMNS

DATASET = "imu-synthetic"
# activity -> (step frequency in Hz, vertical acceleration amplitude in m/s², turn rate about z in rad/s)
ACTIVITIES = {
    "standing still": (0.0, 0.0, 0.0),
    "walking": (1.8, 2.5, 0.0),
    "running": (2.8, 9.0, 0.0),
    "turning on the spot": (0.0, 0.0, 1.5),
}


class IMUSyntheticParams(StrictModel):
    """Params of the ``imu-synthetic`` data source."""

    out_dir: str  # where the CSV files are written (created if missing)
    num_examples: int = Field(16, ge=1)  # recordings; the activities take turns
    seed: int = 0  # the same seed writes the same files
    sample_rate: float = Field(100.0, gt=0)  # Hz of the written recordings: give imu-patch the same sample_rate
    seconds: float = Field(2.5, gt=0)  # length of each recording


def recording(activity: str, rng: np.random.Generator, sample_rate: float, seconds: float) -> np.ndarray:
    """A (T, 6) recording in m/s² and rad/s: gravity on z, the activity's rhythm, sensor noise."""
    step_hz, amplitude, turn = ACTIVITIES[activity]
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    phase = rng.uniform(0, 2 * np.pi)
    values = rng.normal(0, 0.05, (len(t), len(COLUMNS)))  # sensor noise
    values[:, 2] += GRAVITY + amplitude * np.sin(2 * np.pi * step_hz * t + phase)  # az: gravity and the steps
    values[:, 0] += 0.3 * amplitude * np.sin(np.pi * step_hz * t + phase)  # ax: sway at half the step rate
    values[:, 3] += 0.2 * amplitude * np.cos(np.pi * step_hz * t + phase)  # gx: the arm's swing
    values[:, 5] += turn  # gz: turning
    return values.astype(np.float32)


def build_imu_dataset(params: dict[str, Any]) -> DataReport:
    """Write ``num_examples`` CSV recordings into ``out_dir`` and return PT examples: the recording, then its caption."""
    p = validate(IMUSyntheticParams, params, where=f"{DATASET}.params")
    out_dir = Path(os.path.abspath(os.path.expanduser(p.out_dir)))
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(p.seed)
    names = list(ACTIVITIES)
    examples = []
    for index in range(p.num_examples):
        activity = names[index % len(names)]
        path = out_dir / f"imu-{index:05d}.csv"
        values = recording(activity, rng, p.sample_rate, p.seconds)
        lines = [",".join(COLUMNS), *(",".join(f"{v:.5f}" for v in row) for row in values)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        examples.append(caption_example("imu", path, f"The wearer is {activity}.", f"{DATASET}:{index}"))
    report = caption_report(examples, out_dir)
    report.categories = [names[index % len(names)] for index in range(p.num_examples)]  # mmllm eval: per activity
    return report


build_imu_dataset.Params = IMUSyntheticParams  # type: ignore[attr-defined]
