"""Saving generated items: images as PNG, audio as 16-bit WAV; each written whole or not at all."""

from __future__ import annotations

import os
import tempfile
import wave
from pathlib import Path
from typing import Any

import numpy as np

from mmllm_sdk.components.modality import AudioClip
from mmllm_sdk.errors import InputError


def save_outputs(
    outputs: dict[str, list[Any]], output_dir: str | os.PathLike[str], prefix: str = ""
) -> dict[str, list[str]]:
    """Write every generated item into ``output_dir`` as ``{prefix}{modality}-{i}.png`` / ``.wav``; their paths."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    for modality, items in outputs.items():
        for index, item in enumerate(items):
            files.setdefault(modality, []).append(str(save_item(item, folder / f"{prefix}{modality}-{index}")))
    return files


def save_item(item: Any, stem: Path) -> Path:
    """One item at ``stem`` plus its suffix: a PIL image as PNG, an :class:`AudioClip` as WAV."""
    if hasattr(item, "save") and hasattr(item, "mode"):  # a PIL image
        return _atomic(stem.with_suffix(".png"), lambda path: item.save(path, format="PNG"))
    if isinstance(item, AudioClip):
        return _atomic(stem.with_suffix(".wav"), lambda path: write_wav(item, path))
    raise InputError(
        f"A generated {type(item).__name__} cannot be saved: generators return PIL images or AudioClips; a plugin "
        "with another kind of output saves it itself."
    )


def write_wav(clip: AudioClip, path: str | os.PathLike[str]) -> None:
    """Mono 16-bit PCM at the clip's rate; samples are clipped to [-1, 1]."""
    samples = np.clip(np.asarray(clip.samples, dtype=np.float32), -1.0, 1.0)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(int(clip.sampling_rate))
        handle.writeframes((samples * 32767).round().astype("<i2").tobytes())


def _atomic(path: Path, write: Any) -> Path:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
