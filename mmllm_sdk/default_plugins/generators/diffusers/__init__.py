"""Built-in modality generators over diffusers pipelines: Stable Diffusion (images) and AudioLDM (audio).

Each generator is a frozen ``nn.Module`` whose submodules are the pipeline's torch models
(``unet``, ``vae``, ``text_encoder`` and, for AudioLDM, ``vocoder``), so ``.to()``,
``state_dict()`` and freezing work on it; the pipeline object that calls them is
``self.pipeline``. The pipeline comes from ``model:`` (a diffusers pipeline folder or hub id,
safetensors weights only, never remote code) or from ``config:`` (the keyword arguments of
each component, random weights: tiny pipelines for tests, see
:mod:`mmllm_sdk.testing.tiny_generators`).

The conditioning (``condition_spec``) is the pipeline's own text conditioning, so an output
projector trained towards :meth:`~DiffusersGenerator.condition_targets` speaks the
generator's language:

- ``diffusers-sd``: the CLIP text encoder's last hidden states, ``(B, model_max_length, hidden_size)``
  (``(B, 77, 768)`` for Stable Diffusion 1.5), passed as ``prompt_embeds``;
- ``diffusers-audioldm``: the projected, L2-normalised CLAP text embedding, ``(B, 1, projection_dim)``,
  passed as ``prompt_embeds`` of shape ``(B, projection_dim)``.

In :func:`~mmllm_sdk.components.hf.skeleton_mode` only configs and the tokenizer are read:
the torch models are built on ``meta`` and ``self.pipeline`` is ``None``.

Modules: :mod:`.base` (what both share: params, building or loading the pipeline, checks,
generate()), :mod:`.stable_diffusion`, :mod:`.audioldm` and :mod:`.byte_tokenizers` (the
in-memory tokenizers of ``config:`` pipelines).
"""

from __future__ import annotations

from mmllm_sdk.default_plugins.generators.diffusers.audioldm import AudioLDMConfig, AudioLDMGenerator
from mmllm_sdk.default_plugins.generators.diffusers.base import SCHEDULERS, DiffusersGenerator, GeneratorParams
from mmllm_sdk.default_plugins.generators.diffusers.byte_tokenizers import (
    BYTE_CLIP_VOCAB_SIZE,
    BYTE_ROBERTA_PAD_ID,
    BYTE_ROBERTA_VOCAB_SIZE,
    byte_level_clip_tokenizer,
    byte_level_roberta_tokenizer,
)
from mmllm_sdk.default_plugins.generators.diffusers.stable_diffusion import SDConfig, StableDiffusionGenerator

GENERATORS: tuple[type[DiffusersGenerator], ...] = (StableDiffusionGenerator, AudioLDMGenerator)


__all__ = [
    "BYTE_CLIP_VOCAB_SIZE",
    "BYTE_ROBERTA_PAD_ID",
    "BYTE_ROBERTA_VOCAB_SIZE",
    "GENERATORS",
    "SCHEDULERS",
    "AudioLDMConfig",
    "AudioLDMGenerator",
    "DiffusersGenerator",
    "GeneratorParams",
    "SDConfig",
    "StableDiffusionGenerator",
    "byte_level_clip_tokenizer",
    "byte_level_roberta_tokenizer",
]
