"""Weight dtypes by name, and ``auto`` (frozen components' default): bfloat16 where computed natively, else float32."""

from __future__ import annotations

import os
from typing import Literal

import torch

DtypeName = Literal["auto", "float32", "float16", "bfloat16"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
AUTO_DTYPE_ENV = "MMLLM_AUTO_DTYPE"  # float32 | bfloat16 | float16: what "auto" means here, overriding the probe


def bf16_native() -> bool:
    """True where bfloat16 matmuls run at hardware speed: a CUDA GPU that supports them, or AVX512-BF16 or AMX."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def auto_dtype_name() -> str:
    """What ``dtype: auto`` resolves to here: ``$MMLLM_AUTO_DTYPE`` if set, else bfloat16 where native, else float32."""
    override = os.environ.get(AUTO_DTYPE_ENV)
    if override:
        if override not in DTYPES:
            raise ValueError(f"{AUTO_DTYPE_ENV}={override!r}; set it to one of {', '.join(DTYPES)} or unset it.")
        return override
    return "bfloat16" if bf16_native() else "float32"


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype of a spec's ``dtype`` value (``auto`` resolved on this machine)."""
    return DTYPES[auto_dtype_name() if name == "auto" else name]


def to_module(tensor: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """``tensor`` on the device and in the dtype of ``module``'s weights: a frozen bfloat16 part (an encoder, the LLM)
    feeds a float32 projector, which would otherwise fail on mixed dtypes. A module without weights takes it as is."""
    weight = next(module.parameters(), None)
    return tensor if weight is None else tensor.to(weight.device, weight.dtype)
