"""Training settings checked before any weight loads, where the Trainer, accelerate or DeepSpeed would otherwise
ignore them without a word: FSDP on a CPU, and per-component learning rates that a DeepSpeed optimizer or scheduler
would replace."""

from __future__ import annotations

import fnmatch
from typing import Any

import torch

from mmllm_sdk.errors import SpecError
from mmllm_sdk.files import load_json, read_text
from mmllm_sdk.training.spec import RecipeSpec

MAX_DEEPSPEED_CONFIG = 1 << 20  # bytes of a DeepSpeed config file


def refuse_fsdp_without_an_accelerator(spec: RecipeSpec) -> None:
    """accelerate runs FSDP on GPU-class devices only; asked for on the CPU, a run would silently be plain DDP."""
    if spec.training.get("fsdp") and not torch.accelerator.is_available():
        raise SpecError(
            f"training.fsdp {spec.training['fsdp']!r}: there is no GPU here, and accelerate shards with FSDP only on "
            "GPU-class devices (CUDA, XPU, NPU, HPU, MLU, MUSA); on the CPU the run would be plain data-parallel "
            "(DDP) while saying nothing. Remove fsdp, or use DeepSpeed ZeRO-2 (training.deepspeed), which shards "
            "the optimizer state on the CPU too (docs/training.md, 'Scaling out')."
        )


def checked_learning_rates(spec: RecipeSpec, trained: list[str]) -> dict[str, float]:
    """``learning_rates``, each glob checked to name a component this run trains (a component takes the first), and
    refused with a DeepSpeed config that builds its own optimizer or scheduler (one rate for every parameter)."""
    for glob in spec.learning_rates:
        if not any(fnmatch.fnmatchcase(path, glob) for path in trained):
            raise SpecError(
                f"learning_rates: {glob!r} names no component this run trains; it trains {', '.join(trained)}."
            )
    config = spec.training.get("deepspeed")
    if spec.learning_rates and config:
        sections = [name for name in ("optimizer", "scheduler") if name in deepspeed_config(config)]
        if sections:
            raise SpecError(
                f"learning_rates {dict(spec.learning_rates)} with training.deepspeed's {' and '.join(sections)}: "
                "DeepSpeed then builds its own, at one rate for every parameter, and the per-component rates would "
                f"be ignored. Remove {' and '.join(sections)} from the DeepSpeed config (the Trainer's optimizer "
                "and schedule, with the per-component rates, are then the ones DeepSpeed wraps), or remove "
                "learning_rates."
            )
    return dict(spec.learning_rates)


def deepspeed_config(config: Any) -> dict[str, Any]:
    """``training.deepspeed``: a config inline, or the path of its JSON file (read bounded)."""
    if isinstance(config, dict):
        return config
    where = "training.deepspeed"
    if not isinstance(config, str):
        raise SpecError(f"{where} is {config!r}; give a DeepSpeed config inline or the path of its JSON file.")
    data = load_json(
        read_text(config, f"{where} file", limit=MAX_DEEPSPEED_CONFIG, error=SpecError), config, error=SpecError
    )
    if not isinstance(data, dict):
        raise SpecError(f"{where} file {config!r} holds a {type(data).__name__}; a DeepSpeed config is a JSON object.")
    return data
