"""``{{ cookiecutter.encoder_name }}``: cut a signal into patches, embed each, and run a small Transformer over them.

Replace it with your own encoder (or wrap a pretrained one with
``mmllm_sdk.components.hf.load_model``); the contract is ``mmllm_sdk.components.ModalityEncoder``
and ``mmllm_sdk.testing.check_encoder`` checks it.
"""

from __future__ import annotations

from typing import Any

import torch
from mmllm_sdk.components import ModalityEncoder
from mmllm_sdk.errors import DimensionError, InputError
from mmllm_sdk.validation import StrictModel, validate
from pydantic import Field
from torch import nn

from {{ cookiecutter.package_name }}.modality import CHANNELS, to_signal


class PatchParams(StrictModel):
    """Params of ``{{ cookiecutter.encoder_name }}`` (validated before any weight is built)."""

    window: int = Field(64, ge=1)  # samples per item; shorter items are zero-padded, longer ones refused
    patch: int = Field(8, ge=1)  # samples per token: num_tokens = window // patch
    dim: int = Field(64, ge=1)  # D, the feature size
    layers: int = Field(2, ge=1)  # Transformer layers
    heads: int = Field(4, ge=1)  # attention heads; dim must be a multiple


class PatchEncoder(ModalityEncoder):
    """Patches of ``patch`` samples, linearly embedded, plus learned positions, through a Transformer.

    It starts from random weights: train it with the projector (``trainable: true`` in the spec,
    or ``trainable: [inputs.{{ cookiecutter.modality }}.encoder, …]`` in a recipe).
    """

    Params = PatchParams

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__()
        self.params = p = validate(PatchParams, params, where="{{ cookiecutter.encoder_name }}.params")
        if p.window % p.patch or p.dim % p.heads:
            raise DimensionError(
                f"{{ cookiecutter.encoder_name }}: window {p.window} must be a multiple of patch {p.patch}, and dim "
                f"{p.dim} a multiple of heads {p.heads}."
            )
        self.modality = "{{ cookiecutter.modality }}"
        self.num_tokens = p.window // p.patch  # N
        self.output_dim = p.dim  # D
        self.embed = nn.Linear(CHANNELS * p.patch, p.dim)
        self.position = nn.Parameter(torch.randn(self.num_tokens, p.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(p.dim, p.heads, 4 * p.dim, dropout=0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, p.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(p.dim)

    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        window = self.params.window
        values = torch.zeros(len(items), window, CHANNELS)  # (B, window, C)
        for index, item in enumerate(items):
            signal = to_signal(item, f"{{ cookiecutter.encoder_name }}: item {index}")
            if len(signal) > window:
                raise InputError(
                    f"{{ cookiecutter.encoder_name }}: item {index} has {len(signal)} samples, more than "
                    f"window={window}; cut it into windows or raise 'window'."
                )
            values[index, : len(signal)] = torch.from_numpy(signal)
        return {"signal_values": values}

    def forward(self, signal_values: torch.Tensor) -> torch.Tensor:
        weight = self.embed.weight
        values = signal_values.to(device=weight.device, dtype=weight.dtype)  # (B, window, C)
        patches = values.reshape(values.shape[0], self.num_tokens, -1)  # (B, N, patch * C)
        return self.norm(self.transformer(self.embed(patches) + self.position))  # (B, N, D)
