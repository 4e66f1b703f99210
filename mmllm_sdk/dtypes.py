"""Weight dtypes by name, and ``auto``: bfloat16 where the hardware computes it natively, else float32.

Frozen components (encoders, the LLM) default to ``auto``. Trainable projectors stay in
float32; their outputs are cast to the LLM's dtype, and gradients flow back through it.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

DtypeName = Literal["auto", "float32", "float16", "bfloat16"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
AUTO_DTYPE_ENV = (
    "MMLLM_AUTO_DTYPE"  # float32 | bfloat16 | float16: what "auto" means on this machine, overriding the probe
)


def bf16_native() -> bool:
    """True where bfloat16 matmuls run at hardware speed: a CUDA GPU that supports them, or a CPU
    with AVX512-BF16 or AMX. Elsewhere (AVX2 CPUs, say) bfloat16 is emulated and far slower than float32."""
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
