"""Testing helpers: tiny offline configs, and the conformance kit a plugin's tests call."""

from __future__ import annotations

from mmllm_sdk.testing.conformance import (
    ConformanceError,
    PTCheck,
    caption_loss,
    check_discovered,
    check_encoder,
    check_generator,
    check_modality,
    check_output_projector,
    check_projector,
    check_pt,
)
from mmllm_sdk.testing.hub import STANDIN_IDS, is_written, offline_hub, standin_commit
from mmllm_sdk.testing.tiny import (
    CHATML_TEMPLATE,
    configure_test_environment,
    tiny_clip_vision_config,
    tiny_gguf,
    tiny_llm_config,
    tiny_siglip_vision_config,
    tiny_spec,
    tiny_tokenizer,
    tiny_whisper_config,
)
from mmllm_sdk.testing.tiny_generators import tiny_audioldm_config, tiny_sd_config

__all__ = [
    "CHATML_TEMPLATE",
    "STANDIN_IDS",
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
    "configure_test_environment",
    "is_written",
    "offline_hub",
    "standin_commit",
    "tiny_audioldm_config",
    "tiny_clip_vision_config",
    "tiny_gguf",
    "tiny_llm_config",
    "tiny_sd_config",
    "tiny_siglip_vision_config",
    "tiny_spec",
    "tiny_tokenizer",
    "tiny_whisper_config",
]
