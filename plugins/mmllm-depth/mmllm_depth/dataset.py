"""``depth-synthetic``: generated depth scenes (an object in front of a wall) as 16-bit PNGs, with captions."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mmllm_sdk.data.formats import DataReport, caption_example, caption_report
from mmllm_sdk.errors import InputError
from mmllm_sdk.validation import StrictModel, validate
from pydantic import Field

from mmllm_depth.modality import MAX_UINT16, MODALITY

DATASET_NAME = "depth-synthetic"
SHAPES = ("box", "sphere", "cylinder")
POSITIONS = {"left": 0.25, "centre": 0.5, "right": 0.75}  # the object's centre, as a fraction of the width
POSITION_PHRASES = {"left": "on the left", "centre": "in the centre", "right": "on the right"}
OBJECT_DISTANCES = (1.0, 1.5, 2.0, 2.5)  # metres from the camera to the object's front
WALL_DISTANCES = (3.0, 4.0, 5.0, 6.0)  # metres from the camera to the back wall (parallel to the image)
OBJECT_RADIUS = 0.3  # metres: half the width of every object
CYLINDER_HEIGHT = 3.2  # the cylinder's height in object radii (it stands upright)
FOCAL_LENGTH = 1.0  # in image widths: a field of view of about 53 degrees
HOLE_FRACTION = 0.02  # pixels without depth (0), as a structured-light sensor leaves them
MILLIMETRES_PER_METRE = 1000.0


class DepthSyntheticParams(StrictModel):
    """Params of ``depth-synthetic``: how many scenes, from which seed, how large, written where."""

    out_dir: str = Field(min_length=1)  # folder for the PNG files (created); relative paths start at the cwd
    num_examples: int = Field(16, ge=1)  # one scene (and one PNG file) per example
    seed: int = Field(0, ge=0)  # scene i is drawn from (seed, i): the same files every time
    size: int = Field(32, ge=8, le=1024)  # pixels per side of each depth map


@dataclass(frozen=True)
class DepthScene:
    """One generated scene: an object at a distance and position in front of a wall."""

    shape: str  # box, sphere, cylinder
    distance: float  # metres to the object's front
    position: str  # left, centre, right
    wall: float  # metres to the wall

    def caption(self) -> str:
        """The caption, such as 'A sphere 1.5 metres away, on the left, in front of a wall 4 metres away.'"""
        return (
            f"A {self.shape} {_metres(self.distance)} away, {POSITION_PHRASES[self.position]}, "
            f"in front of a wall {_metres(self.wall)} away."
        )


def _metres(value: float) -> str:
    return f"{value:g} metre" + ("" if value == 1 else "s")


def draw_scene(seed: int, index: int) -> DepthScene:
    """Scene ``index`` of ``seed``: shape, position and distances drawn from a stream seeded by (seed, index)."""
    rng = np.random.default_rng([seed, index])
    return DepthScene(
        shape=SHAPES[int(rng.integers(len(SHAPES)))],
        distance=OBJECT_DISTANCES[int(rng.integers(len(OBJECT_DISTANCES)))],
        position=tuple(POSITIONS)[int(rng.integers(len(POSITIONS)))],
        wall=WALL_DISTANCES[int(rng.integers(len(WALL_DISTANCES)))],
    )


def render_depth(scene: DepthScene, size: int, seed: int, index: int) -> np.ndarray:
    """The scene's depth along the optical axis in millimetres, ``(size, size)`` uint16; 0 where depth is missing.

    A pinhole camera looks at a wall parallel to the image; the object's apparent half-width is
    ``focal * radius / distance`` pixels, and its surface bulges back from its front (sphere,
    cylinder) or is flat (box).
    """
    focal = FOCAL_LENGTH * size  # pixels
    radius = focal * OBJECT_RADIUS / scene.distance  # pixels
    centre_x, centre_y = POSITIONS[scene.position] * size, 0.5 * size
    v, u = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # (S, S) pixel centres
    dx, dy = (u - centre_x) / radius, (v - centre_y) / radius  # (S, S) in object radii
    depth = np.full((size, size), scene.wall)  # (S, S) metres
    if scene.shape == "box":
        inside = (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
        surface = np.full_like(depth, scene.distance)
    elif scene.shape == "sphere":
        rho2 = dx**2 + dy**2
        inside = rho2 <= 1
        surface = scene.distance + OBJECT_RADIUS * (1 - np.sqrt(np.clip(1 - rho2, 0, 1)))
    else:  # an upright cylinder: curved across, straight up
        inside = (np.abs(dx) <= 1) & (np.abs(dy) <= CYLINDER_HEIGHT / 2)
        surface = scene.distance + OBJECT_RADIUS * (1 - np.sqrt(np.clip(1 - dx**2, 0, 1)))
    depth = np.where(inside, surface, depth)
    millimetres = np.clip(np.round(depth * MILLIMETRES_PER_METRE), 0, MAX_UINT16).astype(np.uint16)  # (S, S)
    holes = np.random.default_rng([seed, index, 1]).random((size, size)) < HOLE_FRACTION
    millimetres[holes] = 0
    return millimetres


def write_depth_png(millimetres: np.ndarray, path: Path) -> None:
    """Write a ``(H, W)`` uint16 array as a 16-bit greyscale PNG, atomically (a reader never sees half a file)."""
    from PIL import Image

    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        Image.fromarray(millimetres).save(temporary, format="PNG")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def build_depth_dataset(params: DepthSyntheticParams | dict[str, Any]) -> DataReport:
    """The ``depth-synthetic`` factory: write ``num_examples`` depth PNGs (millimetres) and caption each.

    Every file is a 16-bit PNG in millimetres, so the whole dataset fits ``depth-vit`` with
    ``units: mm`` (the default). Each example's ``source`` is ``"depth-synthetic:INDEX"``.
    """
    if not isinstance(params, DepthSyntheticParams):
        params = validate(DepthSyntheticParams, params, where=f"{DATASET_NAME}.params")
    out_dir = Path(os.path.abspath(os.path.expanduser(params.out_dir)))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"{DATASET_NAME}: cannot create out_dir {str(out_dir)!r} for the depth maps ({exc.strerror}); give a "
            "writable folder."
        ) from None
    examples, shapes = [], []
    for index in range(params.num_examples):
        scene = draw_scene(params.seed, index)
        shapes.append(scene.shape)
        path = out_dir / f"depth-seed{params.seed}-{index:06d}-{params.size}px.png"
        write_depth_png(render_depth(scene, params.size, params.seed, index), path)
        examples.append(caption_example(MODALITY, path, scene.caption(), f"{DATASET_NAME}:{index}"))
    report = caption_report(examples, out_dir)
    report.categories = shapes  # mmllm eval scores each shape apart (another seed is a held-out set)
    return report


build_depth_dataset.Params = DepthSyntheticParams  # type: ignore[attr-defined]
