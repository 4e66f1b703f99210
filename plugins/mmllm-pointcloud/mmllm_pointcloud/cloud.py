"""PointCloud items: xyz coordinates with optional RGB colours, checked once when they are made."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mmllm_sdk.errors import InputError

XYZ, XYZ_RGB = 3, 6  # columns of an (N, 3) or (N, 6) array
COLOUR_SCALE = 255.0  # 8-bit colours (0..255) are divided by this


@dataclass(frozen=True, eq=False)
class PointCloud:
    """A point cloud: ``xyz`` float32 ``(N, 3)`` and ``rgb`` float32 ``(N, 3)`` in [0, 1], or None.

    Building one checks the arrays (shapes, finite values, N >= 1, colours in [0, 1]) and
    stores float32 copies; two clouds are equal when their arrays are.
    """

    xyz: np.ndarray  # (N, 3) float32
    rgb: np.ndarray | None = None  # (N, 3) float32 in [0, 1], or None

    def __post_init__(self) -> None:
        xyz, rgb = checked_arrays(self.xyz, self.rgb, "A PointCloud")
        object.__setattr__(self, "xyz", xyz)
        object.__setattr__(self, "rgb", rgb)

    def __len__(self) -> int:
        return len(self.xyz)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PointCloud):
            return NotImplemented
        if (self.rgb is None) != (other.rgb is None):
            return False
        same_rgb = self.rgb is None or np.array_equal(self.rgb, other.rgb)
        return np.array_equal(self.xyz, other.xyz) and same_rgb

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside: not hashable

    def __repr__(self) -> str:
        colours = "with rgb" if self.rgb is not None else "without rgb"
        return f"PointCloud({len(self)} points, {colours})"


def _numeric(array: Any, what: str, field: str) -> np.ndarray:
    """``array`` as a numpy array of real numbers (bool, strings and objects refused)."""
    try:
        array = np.asarray(array)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{what}: {field} cannot be read as an array ({exc}); pass an (N, 3) array of numbers."
        ) from exc
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise InputError(
            f"{what}: {field} has dtype {array.dtype}, not numbers; point clouds hold integer or float coordinates "
            "(and colours). Convert the array with .astype(np.float32)."
        )
    return array


def checked_arrays(xyz: Any, rgb: Any, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Float32 copies of ``xyz`` (N, 3) and ``rgb`` (N, 3) in [0, 1] or None; InputError naming ``what`` otherwise."""
    xyz = _numeric(xyz, what, "xyz")
    if xyz.ndim != 2 or xyz.shape[1] != XYZ:
        raise InputError(f"{what}: xyz must be an (N, 3) array of x, y, z coordinates; got shape {xyz.shape}.")
    if len(xyz) == 0:
        raise InputError(f"{what} has no points (N == 0); a point cloud needs at least one point.")
    xyz = xyz.astype(np.float32)
    if not np.isfinite(xyz).all():
        bad = int((~np.isfinite(xyz).all(axis=1)).sum())
        raise InputError(
            f"{what} has {bad} point(s) with non-finite coordinates (NaN or inf); remove those points or fix the export."
        )
    if rgb is None:
        return xyz, None
    rgb = _numeric(rgb, what, "rgb")
    if rgb.shape != xyz.shape:
        raise InputError(
            f"{what}: rgb must be an (N, 3) array like xyz {xyz.shape}; got shape {rgb.shape}. Give one colour per point."
        )
    rgb = rgb.astype(np.float32)
    if not np.isfinite(rgb).all() or rgb.min() < 0.0 or rgb.max() > 1.0:
        low, high = float(np.nanmin(rgb)), float(np.nanmax(rgb))
        raise InputError(
            f"{what}: rgb values must be finite and in [0, 1]; got values from {low} to {high}. "
            "Divide 8-bit colours by 255."
        )
    return xyz, rgb


def from_array(array: Any, what: str) -> PointCloud:
    """A PointCloud from an (N, 3) xyz or (N, 6) xyz+rgb array.

    The colours are used as they are when they are floats in [0, 1]; integer colours, and
    float colours above 1 (0..255), are divided by 255.
    """
    array = _numeric(array, what, "the array")
    if array.ndim != 2 or array.shape[1] not in (XYZ, XYZ_RGB):
        raise InputError(
            f"{what} must be an (N, 3) array of x, y, z or an (N, 6) array of x, y, z, r, g, b; got shape {array.shape}."
        )
    xyz = array[:, :XYZ]
    rgb = None
    if array.shape[1] == XYZ_RGB:
        rgb = array[:, XYZ:].astype(np.float64)
        if np.issubdtype(array.dtype, np.integer) or (np.isfinite(rgb).all() and len(rgb) and rgb.max() > 1.0):
            rgb = rgb / COLOUR_SCALE
    xyz, rgb = checked_arrays(xyz, rgb, what)
    return PointCloud(xyz, rgb)


def to_pointcloud(item: Any) -> PointCloud:
    """The modality's ``normalize``: a PointCloud, or an (N, 3) / (N, 6) array, as a checked PointCloud."""
    if isinstance(item, PointCloud):
        return item
    if isinstance(item, (str, bytes, dict)) or item is None:
        raise InputError(
            f"A pointcloud input must be a PointCloud or an (N, 3) / (N, 6) array; got {type(item).__name__}. "
            "Pass a file path as {'type': 'pointcloud', 'path': ...}."
        )
    return from_array(item, "A pointcloud array")


def load_npy(path: Path) -> PointCloud:
    """Read an (N, 3) or (N, 6) ``.npy`` array (no pickles)."""
    what = f"The pointcloud file {str(path)!r}"
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(
            f"{what} is not a readable .npy array ({exc}); save it with np.save(path, array) from an (N, 3) or (N, 6) "
            "numeric array."
        ) from exc
    return from_array(array, what)
