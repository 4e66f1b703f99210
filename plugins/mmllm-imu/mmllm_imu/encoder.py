"""``imu-patch``: an ImageBind-style IMU encoder: resample, cut a fixed window into patches, embed, Transformer."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from mmllm_sdk.components import ModalityEncoder
from mmllm_sdk.errors import DimensionError, InputError
from mmllm_sdk.validation import StrictModel, validate
from pydantic import Field
from torch import nn

from mmllm_imu.modality import CHANNELS, to_imu

GRAVITY = 9.80665  # m/s² in one g
DEGREE = np.pi / 180  # rad in one degree


class IMUPatchParams(StrictModel):
    """Params of ``imu-patch``."""

    sample_rate: float = Field(gt=0)  # Hz of the recordings (required: the data's rate, e.g. 100)
    rate: float = Field(50.0, gt=0)  # Hz the encoder reads: recordings are resampled from sample_rate to this
    window: int = Field(128, ge=1)  # samples (at rate) per item; shorter recordings are zero-padded and masked
    patch: int = Field(8, ge=1)  # samples per token: num_tokens = window // patch
    dim: int = Field(128, ge=1)  # D, the feature size
    layers: int = Field(2, ge=1)  # Transformer layers
    heads: int = Field(4, ge=1)  # attention heads; dim must be a multiple
    accel_unit: Literal["m/s2", "g"] = "m/s2"  # unit of ax, ay, az in the files; read as g
    gyro_unit: Literal["rad/s", "deg/s"] = "rad/s"  # unit of gx, gy, gz in the files; read as rad/s


def resample(values: np.ndarray, from_rate: float, to_rate: float) -> np.ndarray:
    """(T, C) samples at ``from_rate`` Hz -> (T', C) at ``to_rate`` Hz, by linear interpolation.

    Downsampling first averages over ``from_rate / to_rate`` samples (a box filter) so that
    motion faster than the new rate does not fold back into it. T' = floor((T - 1) * to / from) + 1.
    """
    if from_rate == to_rate or len(values) == 1:
        return values.astype(np.float32, copy=False)
    ratio = from_rate / to_rate
    if ratio > 1:  # box filter of width round(ratio), edges padded with the end samples
        width = round(ratio)
        padded = np.pad(values, ((width // 2, width - 1 - width // 2), (0, 0)), mode="edge")
        kernel = np.ones(width) / width
        values = np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(values.shape[1])], axis=1)
    count = int(np.floor((len(values) - 1) / ratio + 1e-9)) + 1
    source_times = np.arange(len(values)) / from_rate
    target_times = np.arange(count) / to_rate
    return np.stack(
        [np.interp(target_times, source_times, values[:, c]) for c in range(values.shape[1])], axis=1
    ).astype(np.float32)


class IMUPatchEncoder(ModalityEncoder):
    """``imu-patch``: patches of ``patch`` samples of the 6 channels, linearly embedded, through a Transformer.

    As ImageBind's IMU encoder: a recording is resampled to ``rate``, padded to ``window``
    samples, cut into ``window // patch`` patches of ``patch x 6`` values, each embedded by
    one linear layer, plus a learned position embedding, then ``layers`` Transformer layers
    and a LayerNorm. Patches that are all padding are masked out of attention. The encoder
    starts from random weights: train it with the projector (``trainable: true``).
    """

    Params = IMUPatchParams

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__()
        self.params = p = validate(IMUPatchParams, params, where="imu-patch.params")
        if p.window % p.patch:
            raise DimensionError(
                f"imu-patch: window {p.window} is not a multiple of patch {p.patch}; pick a window of k * {p.patch} "
                f"samples (e.g. {max(1, p.window // p.patch) * p.patch})."
            )
        if p.dim % p.heads:
            raise DimensionError(f"imu-patch: dim {p.dim} is not a multiple of heads {p.heads}; change one of them.")
        self.modality = "imu"
        self.num_tokens = p.window // p.patch  # N
        self.output_dim = p.dim  # D
        self.embed = nn.Linear(CHANNELS * p.patch, p.dim)
        self.position = nn.Parameter(torch.randn(self.num_tokens, p.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            p.dim, p.heads, 4 * p.dim, dropout=0.0, batch_first=True, norm_first=True, activation="gelu"
        )
        self.transformer = nn.TransformerEncoder(layer, p.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(p.dim)
        scale = np.array(
            [1 / GRAVITY if p.accel_unit == "m/s2" else 1.0] * 3 + [DEGREE if p.gyro_unit == "deg/s" else 1.0] * 3
        )
        self.unit_scale = scale.astype(
            np.float32
        )  # per channel: file units -> g and rad/s (numpy: no device to follow)

    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        p = self.params
        values = torch.zeros(len(items), p.window, CHANNELS)  # (B, window, 6)
        mask = torch.zeros(len(items), self.num_tokens, dtype=torch.bool)  # (B, N): True where a patch holds data
        for index, item in enumerate(items):
            recording = resample(to_imu(item, f"imu-patch: item {index}"), p.sample_rate, p.rate) * self.unit_scale
            if len(recording) > p.window:
                seconds = len(recording) / p.rate
                raise InputError(
                    f"imu-patch: item {index} lasts {seconds:.2f} s ({len(recording)} samples at {p.rate:g} Hz), more "
                    f"than window={p.window} samples ({p.window / p.rate:.2f} s); cut the recording into windows or "
                    "raise 'window'."
                )
            values[index, : len(recording)] = torch.from_numpy(recording)
            mask[index, : -(-len(recording) // p.patch)] = True
        return {"imu_values": values, "imu_mask": mask}

    def forward(self, imu_values: torch.Tensor, imu_mask: torch.Tensor) -> torch.Tensor:
        weight = self.embed.weight
        values = imu_values.to(device=weight.device, dtype=weight.dtype)  # (B, window, 6)
        patches = values.reshape(values.shape[0], self.num_tokens, -1)  # (B, N, patch * 6)
        tokens = self.embed(patches) + self.position  # (B, N, D)
        padding = ~imu_mask.to(device=weight.device, dtype=torch.bool)  # (B, N): True where attention must not look
        return self.norm(self.transformer(tokens, src_key_padding_mask=padding))  # (B, N, D)
