"""``pointcloud-synthetic``: coloured shapes sampled as point clouds, written as PLY files, with captions or labelled
questions (which solid, which colour)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from mmllm_sdk.data.formats import DataReport, caption_example, caption_report
from mmllm_sdk.validation import StrictModel, validate
from pydantic import Field

from mmllm_pointcloud import DATASET_NAME
from mmllm_pointcloud.cloud import COLOUR_SCALE, PointCloud
from mmllm_pointcloud.ply import write_ply

SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")
PALETTE = {  # colour name -> 8-bit RGB, saturated and far apart
    "red": (220, 38, 38),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "yellow": (240, 210, 30),
    "purple": (135, 60, 190),
    "orange": (245, 130, 20),
}
COLOUR_JITTER = 12  # each point's colour channels vary by up to this much (8-bit units)
SCALE_RANGE = (0.6, 1.4)  # a shape's size is drawn from this range
OFFSET = 2.0  # a shape's centre is drawn from [-OFFSET, OFFSET]^3
TORUS_TUBE = 0.35  # the torus's tube radius, as a fraction of its ring radius
CONE_HEIGHT = 2.0  # cone and cylinder height, as a multiple of their base radius


class Params(StrictModel):
    out_dir: str  # where the PLY files are written (writing again gives identical files)
    num_examples: int = Field(16, ge=1)  # clouds to generate
    seed: int = 0  # every cloud is drawn from (seed, index): the same seed gives the same data
    num_points: int = Field(256, ge=1)  # points sampled on each shape's surface
    # captions ("A red cube."), or one labelled question per cloud: its solid ("Cube.") or its colour ("Red.")
    task: Literal["captions", "shape", "colour"] = "captions"


QUESTIONS = {"shape": "What solid is this?", "colour": "What colour is this?"}


def _unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.normal(size=(count, 3))  # (n, 3)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)


def _sphere(rng: np.random.Generator, count: int) -> np.ndarray:
    return _unit_vectors(rng, count)


def _cube(rng: np.random.Generator, count: int) -> np.ndarray:
    points = rng.uniform(-1.0, 1.0, size=(count, 3))  # (n, 3)
    axis = rng.integers(0, 3, size=count)  # each point lies on one of the six faces: all have the same area
    points[np.arange(count), axis] = rng.choice([-1.0, 1.0], size=count)
    return points


def _cylinder(rng: np.random.Generator, count: int) -> np.ndarray:
    half = CONE_HEIGHT / 2
    side_area, cap_area = 2 * np.pi * CONE_HEIGHT, 2 * np.pi  # radius 1
    on_side = rng.uniform(size=count) < side_area / (side_area + cap_area)
    angle = rng.uniform(0.0, 2 * np.pi, size=count)
    radius = np.where(on_side, 1.0, np.sqrt(rng.uniform(size=count)))  # uniform on the discs
    height = np.where(on_side, rng.uniform(-half, half, size=count), rng.choice([-half, half], size=count))
    return np.stack([radius * np.cos(angle), radius * np.sin(angle), height], axis=1)


def _cone(rng: np.random.Generator, count: int) -> np.ndarray:
    slant = np.hypot(1.0, CONE_HEIGHT)
    side_area, base_area = np.pi * slant, np.pi  # radius 1
    on_side = rng.uniform(size=count) < side_area / (side_area + base_area)
    angle = rng.uniform(0.0, 2 * np.pi, size=count)
    fraction = np.sqrt(rng.uniform(size=count))  # area grows with the square of the distance from the apex (and disc)
    height = np.where(on_side, CONE_HEIGHT * (1 - fraction), 0.0) - CONE_HEIGHT / 3
    return np.stack([fraction * np.cos(angle), fraction * np.sin(angle), height], axis=1)


def _torus(rng: np.random.Generator, count: int) -> np.ndarray:
    tube = TORUS_TUBE
    kept: list[np.ndarray] = []
    while sum(len(k) for k in kept) < count:  # the outer side has more area: accept with (1 + r cos v) / (1 + r)
        v = rng.uniform(0.0, 2 * np.pi, size=2 * count)
        kept.append(v[rng.uniform(size=2 * count) < (1 + tube * np.cos(v)) / (1 + tube)])
    v = np.concatenate(kept)[:count]
    u = rng.uniform(0.0, 2 * np.pi, size=count)
    ring = 1 + tube * np.cos(v)
    return np.stack([ring * np.cos(u), ring * np.sin(u), tube * np.sin(v)], axis=1)


SAMPLERS = {"sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone, "torus": _torus}


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def make_shape(seed: int, index: int, num_points: int) -> tuple[str, str, PointCloud]:
    """Example ``index`` of a seed: its shape, its colour name and its cloud (randomly rotated, scaled and moved).

    Shapes and colours go round their lists (shape ``index % 5``, colour ``(index // 5 + index) % 6``), so every
    pair appears within 30 examples; the rest is drawn from ``(seed, index)``.
    """
    shape = SHAPES[index % len(SHAPES)]
    colour = list(PALETTE)[(index // len(SHAPES) + index) % len(PALETTE)]
    rng = np.random.default_rng([seed, index])
    points = SAMPLERS[shape](rng, num_points)  # (n, 3) around the origin, about unit size
    points = points @ _rotation(rng).T * rng.uniform(*SCALE_RANGE) + rng.uniform(-OFFSET, OFFSET, size=3)
    rgb = np.array(PALETTE[colour]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=(num_points, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.float32) / COLOUR_SCALE  # (n, 3), exact in uchar
    return shape, colour, PointCloud(points.astype(np.float32), rgb)


def build_pointcloud_dataset(params: Params | dict[str, Any]) -> DataReport:
    """The ``pointcloud-synthetic`` factory: writes ``out_dir/pointcloud-SEED-INDEX.ply`` and returns captions.

    Each example is a user turn holding the cloud and an assistant turn "A red cube."; its
    source is ``pointcloud-synthetic:INDEX``.
    """
    if not isinstance(params, Params):
        params = validate(Params, params, where=f"{DATASET_NAME}.params")
    out_dir = Path(os.path.abspath(os.path.expanduser(params.out_dir)))
    examples, shapes = [], []
    for index in range(params.num_examples):
        shape, colour, cloud = make_shape(params.seed, index, params.num_points)
        path = write_ply(out_dir / f"pointcloud-{params.seed}-{index:05d}.ply", cloud)
        source = f"{DATASET_NAME}:{index}"
        if params.task == "captions":
            examples.append(caption_example("pointcloud", path, f"A {colour} {shape}.", source))
        else:
            label = (shape if params.task == "shape" else colour).capitalize() + "."
            question = [{"type": "pointcloud", "path": str(path)}, {"type": "text", "text": QUESTIONS[params.task]}]
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": label}]
            examples.append({"messages": messages, "source": source})
        shapes.append(shape)
    report = caption_report(examples, out_dir)
    report.categories = shapes  # mmllm eval scores each shape apart (another seed is a held-out set)
    return report


build_pointcloud_dataset.Params = Params  # type: ignore[attr-defined]
