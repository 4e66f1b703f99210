"""dtype: auto resolves to bfloat16 only where the hardware computes it natively."""

from __future__ import annotations

import pytest
import torch

from mmllm_sdk import dtypes


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_follows_the_hardware_probe(native, expected, monkeypatch):
    monkeypatch.delenv(dtypes.AUTO_DTYPE_ENV, raising=False)
    monkeypatch.setattr(dtypes, "bf16_native", lambda: native)
    assert dtypes.resolve_dtype("auto") == expected


def test_the_environment_overrides_the_probe(monkeypatch):
    monkeypatch.setattr(dtypes, "bf16_native", lambda: True)
    monkeypatch.setenv(dtypes.AUTO_DTYPE_ENV, "float32")
    assert dtypes.resolve_dtype("auto") == torch.float32
    assert dtypes.resolve_dtype("bfloat16") == torch.bfloat16  # an explicit dtype is never overridden


def test_a_bad_override_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv(dtypes.AUTO_DTYPE_ENV, "fp8")
    with pytest.raises(ValueError, match=r"MMLLM_AUTO_DTYPE='fp8'; set it to one of float32, float16, bfloat16"):
        dtypes.resolve_dtype("auto")


def test_the_cpu_probe_agrees_with_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dtypes.bf16_native() == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
