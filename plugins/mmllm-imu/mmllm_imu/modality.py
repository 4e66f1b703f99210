"""The ``imu`` modality: 6-axis recordings (ax, ay, az, gx, gy, gz) read from CSV or ``.npy`` files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mmllm_sdk.components import ModalitySpec
from mmllm_sdk.errors import InputError

CHANNELS = 6  # ax, ay, az (accelerometer), gx, gy, gz (gyroscope)
COLUMNS = ("ax", "ay", "az", "gx", "gy", "gz")  # the header a CSV may have, in this order


def to_imu(item: Any, source: str = "The IMU input") -> np.ndarray:
    """A ``(T, 6)`` float32 array of finite readings from an array or nested list, or an :class:`InputError`.

    ``source`` names the input in the error (a file path, or "The IMU input" for in-memory data).
    """
    try:
        array = np.asarray(item, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source} is not numeric ({exc}); give a (T, {CHANNELS}) array of IMU readings.") from exc
    if array.ndim != 2 or array.shape[1] != CHANNELS:
        raise InputError(
            f"{source} has shape {array.shape}; an IMU recording is a (T, {CHANNELS}) array, one row per sample with "
            f"the columns {', '.join(COLUMNS)} (accelerometer, then gyroscope)."
        )
    if len(array) == 0:
        raise InputError(f"{source} holds no samples; an IMU recording needs at least one row.")
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        shown = ", ".join(str(r) for r in rows[:5]) + (" …" if len(rows) > 5 else "")
        raise InputError(
            f"{source} has {int(bad.sum())} NaN or infinite readings in {len(rows)} of its {len(array)} samples "
            f"(rows {shown}); the encoder cannot read them. Drop or interpolate those samples (a sensor dropout), or "
            "remove the recording from the data."
        )
    return array


def load_npy(path: Path) -> np.ndarray:
    return to_imu(np.load(path, allow_pickle=False), f"The IMU file {str(path)!r}")


def load_csv(path: Path) -> np.ndarray:
    """Six comma-separated numeric columns, with or without the header ``ax,ay,az,gx,gy,gz``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = [cell.strip().lower() for cell in lines[0].split(",")] if lines else []
    has_header = bool(header) and not _is_number(header[0])
    if has_header and tuple(header) != COLUMNS:
        raise InputError(
            f"The IMU file {str(path)!r} has the header {','.join(header)!r}; expected {','.join(COLUMNS)!r} (or no "
            "header): reorder or rename its columns."
        )
    rows = []
    for number, line in enumerate(lines[1 if has_header else 0 :], start=2 if has_header else 1):
        if not line.strip():
            continue
        cells = line.split(",")
        if len(cells) != CHANNELS:
            raise InputError(
                f"The IMU file {str(path)!r}, line {number}, has {len(cells)} columns; every line needs {CHANNELS} "
                f"({','.join(COLUMNS)})."
            )
        try:
            rows.append([float(cell) for cell in cells])
        except ValueError as exc:
            raise InputError(f"The IMU file {str(path)!r}, line {number}, is not numeric: {line.strip()!r}.") from exc
    return to_imu(np.array(rows, dtype=np.float32).reshape(-1, CHANNELS), f"The IMU file {str(path)!r}")


def load_imu(source: Any) -> np.ndarray:
    """Read an IMU recording from a path (``.csv``, ``.npy``) or take an in-memory array, as the SDK does."""
    return IMU.load(source)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


IMU = ModalitySpec(
    name="imu",
    placeholder="<imu>",
    loaders={".npy": load_npy, ".csv": load_csv},
    normalize=to_imu,
    description=(
        "6-axis IMU recordings: (T, 6) arrays of accelerometer (ax, ay, az) and gyroscope (gx, gy, gz) readings; "
        "their sample rate is stated in the encoder's params."
    ),
)
