"""The ``{{ cookiecutter.modality }}`` modality: (T, {{ cookiecutter.channels }}) signals read from ``.npy`` or ``.csv`` files.

Start here: change the loaders to read your format, and ``to_signal`` to check what an item
must look like. Every problem with an input is an ``InputError`` that names the file, says
what was found and what would fit: the SDK never skips a bad file silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mmllm_sdk.components import ModalitySpec
from mmllm_sdk.errors import InputError

CHANNELS = {{ cookiecutter.channels }}  # values per sample


def to_signal(item: Any, source: str = "The {{ cookiecutter.modality }} input") -> np.ndarray:
    """A (T, CHANNELS) float32 array of finite values, or an InputError naming ``source``."""
    try:
        array = np.asarray(item, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source} is not numeric ({exc}); give a (T, {CHANNELS}) array.") from exc
    if array.ndim != 2 or array.shape[1] != CHANNELS or len(array) == 0:
        raise InputError(
            f"{source} has shape {array.shape}; a {{ cookiecutter.modality }} signal is a (T, {CHANNELS}) array with "
            "at least one row (one row per sample)."
        )
    bad = ~np.isfinite(array)
    if bad.any():
        raise InputError(
            f"{source} has {int(bad.sum())} NaN or infinite values; fill or drop those samples before using it."
        )
    return array


def load_npy(path: Path) -> np.ndarray:
    return to_signal(np.load(path, allow_pickle=False), f"The {{ cookiecutter.modality }} file {str(path)!r}")


def load_csv(path: Path) -> np.ndarray:
    """CHANNELS comma-separated numbers per line, no header."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append([float(cell) for cell in line.split(",")])
        except ValueError as exc:
            raise InputError(f"The {{ cookiecutter.modality }} file {str(path)!r}, line {number}, is not numeric.") from exc
        if len(rows[-1]) != CHANNELS:
            raise InputError(
                f"The {{ cookiecutter.modality }} file {str(path)!r}, line {number}, has {len(rows[-1])} values; "
                f"every line needs {CHANNELS}."
            )
    return to_signal(np.array(rows, dtype=np.float32).reshape(-1, CHANNELS), f"The {{ cookiecutter.modality }} file {str(path)!r}")


MODALITY = ModalitySpec(
    name="{{ cookiecutter.modality }}",
    placeholder="{{ cookiecutter.placeholder }}",
    loaders={".npy": load_npy, ".csv": load_csv},
    normalize=to_signal,
    description="{{ cookiecutter.modality }} signals: (T, {{ cookiecutter.channels }}) arrays, one row per sample.",
)
