"""The plugin conformance kit: checks a plugin's tests call on its modalities, encoders, projectors and generators.

Each ``check_*`` function builds the component the way :func:`mmllm_sdk.build_model` does
(through the registry, first in skeleton mode, then for real), runs it, and raises
:class:`ConformanceError` (an ``AssertionError``, so pytest shows it as a failed test) whose
message names the component, the check and what to change. On success it returns what it
built or loaded, for further tests of the plugin's own.

What every component must do (docs/writing-plugins.md, "Testing a plugin"):

- shapes and dtypes: the contract's shapes, floating point, finite;
- frozen by default (encoders, generators): once the SDK freezes it (``requires_grad_(False)``
  and ``eval()``, as for a spec with ``trainable: false``), nothing it returns needs a gradient
  and it stays frozen through ``forward`` and ``train()``; projectors are trained by default,
  so every parameter receives a gradient;
- deterministic in eval mode: the same input gives the same output, bit for bit;
- batch of one and of many: an item gives the same result alone as inside a batch;
- moves with ``.to()``: every tensor is a parameter or a registered buffer, and the module
  runs in ``float64`` (and on CUDA when there is one) on the float32 CPU tensors its
  ``preprocess`` makes;
- survives save -> load: its state dict goes through safetensors into a freshly built
  instance (another random seed) and gives the same results.

Modules: :mod:`.components` (``check_modality``, ``check_encoder``, ``check_projector``,
``check_generator``, ``check_output_projector``), :mod:`.runs` (``check_pt``, ``caption_loss``,
``check_discovered``) and :mod:`.shared` (the checks they share). Import the names from here
(or from :mod:`mmllm_sdk.testing`).
"""

from __future__ import annotations

from mmllm_sdk.testing.conformance.components import (
    CONDITION_SPEC,
    check_encoder,
    check_generator,
    check_modality,
    check_output_projector,
    check_projector,
)
from mmllm_sdk.testing.conformance.runs import PTCheck, caption_loss, check_discovered, check_pt
from mmllm_sdk.testing.conformance.shared import (
    ATOL,
    FLOAT64_ATOL,
    FLOAT64_RTOL,
    GARBAGE,
    RTOL,
    SEED,
    ConformanceError,
)

__all__ = [
    "ATOL",
    "CONDITION_SPEC",
    "FLOAT64_ATOL",
    "FLOAT64_RTOL",
    "GARBAGE",
    "RTOL",
    "SEED",
    "ConformanceError",
    "PTCheck",
    "caption_loss",
    "check_discovered",
    "check_encoder",
    "check_generator",
    "check_modality",
    "check_output_projector",
    "check_projector",
    "check_pt",
]
