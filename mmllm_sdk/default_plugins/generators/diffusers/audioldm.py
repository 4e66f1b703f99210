"""``diffusers-audioldm``: AudioLDM, conditioned on the projected, L2-normalised CLAP text embedding."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from mmllm_sdk.components.modality import AudioClip
from mmllm_sdk.components.output_projector import ConditionSpec
from mmllm_sdk.default_plugins.generators.diffusers.base import DiffusersGenerator, GeneratorParams
from mmllm_sdk.default_plugins.generators.diffusers.byte_tokenizers import (
    BYTE_ROBERTA_PAD_ID,
    byte_level_roberta_tokenizer,
)
from mmllm_sdk.errors import DimensionError, InputError, SpecError
from mmllm_sdk.validation import StrictModel


class AudioLDMConfig(StrictModel):
    """``config:`` of ``diffusers-audioldm``: the arguments of each component of a random AudioLDM pipeline."""

    unet: dict[str, Any]  # UNet2DConditionModel arguments, class_embed_type "simple_projection" of the CLAP embedding
    vae: dict[str, Any]  # AutoencoderKL arguments (1 channel: a mel spectrogram)
    text_encoder: dict[str, Any]  # ClapTextConfig fields
    vocoder: dict[str, Any]  # SpeechT5HifiGanConfig fields
    tokenizer: str | None = None  # a RoBERTa tokenizer folder; None: a byte-level one (vocab_size 261, pad id 1)


class AudioLDMGenerator(DiffusersGenerator):
    """``diffusers-audioldm``: an AudioLDM pipeline conditioned on the CLAP text embedding, returning AudioClips.

    ``condition_spec`` is ``(1, text_encoder.projection_dim)``: the projected CLAP text
    embedding, L2-normalised as AudioLDM does; the UNet takes it as its class embedding.
    diffusers marks ``AudioLDMPipeline`` deprecated (no updates after 0.33.1); it still runs.
    """

    name = "diffusers-audioldm"
    modality_name = "audio"
    pipeline_class = "AudioLDMPipeline"
    tokenizer_class = "RobertaTokenizer"
    text_model_classes = ("ClapTextModelWithProjection", "ClapTextConfig")
    overridable = ("num_inference_steps", "guidance_scale", "audio_length_in_s")

    class Params(GeneratorParams):
        config: AudioLDMConfig | None = None  # the components of a random pipeline (tests, examples)
        num_inference_steps: int = Field(10, ge=1)  # denoising steps per generate()
        audio_length_in_s: float | None = Field(None, gt=0)  # clip length; default: the UNet's sample_size in time

    def module_parts(self) -> tuple[str, ...]:
        return ("unet", "vae", "text_encoder", "vocoder")

    def extra_parts(self) -> dict[str, tuple[str, str]]:
        return {"vocoder": ("SpeechT5HifiGan", "SpeechT5HifiGanConfig")}

    def text_positions(self, config: Any) -> int:
        return config.max_position_embeddings - (config.pad_token_id or 0) - 1  # RoBERTa's positions follow the pad id

    def byte_tokenizer(self, text_config: Any) -> Any:
        pad = text_config.pad_token_id
        if pad != BYTE_ROBERTA_PAD_ID:
            raise SpecError(
                f"{self.name}.params.config.text_encoder.pad_token_id is {pad}, but the byte-level tokenizer pads with "
                f"id {BYTE_ROBERTA_PAD_ID}; set pad_token_id to {BYTE_ROBERTA_PAD_ID} or name a tokenizer folder."
            )
        return byte_level_roberta_tokenizer(self.text_positions(text_config))

    @property
    def sampling_rate(self) -> int:
        """Samples per second of the clips generate() makes (the vocoder's)."""
        return int(self.vocoder.config.sampling_rate)

    @property
    def seconds_per_frame(self) -> float:
        """Seconds of audio per mel frame: the vocoder's upsampling over its sampling rate."""
        return float(np.prod(self.vocoder.config.upsample_rates)) / self.vocoder.config.sampling_rate

    @property
    def audio_length_in_s(self) -> float:
        """The length of the clips generate() makes by default, in seconds."""
        if self.params.audio_length_in_s is not None:
            return self.params.audio_length_in_s
        return self.unet.config.sample_size * self.vae_scale_factor * self.seconds_per_frame

    @property
    def min_seconds(self) -> float:
        """The shortest clip the pipeline makes: one latent cell of mel frames."""
        return self.seconds_per_frame * self.vae_scale_factor

    def check_sizes(self) -> None:
        super().check_sizes()
        unet, projection = self.unet.config, self.text_encoder.config.projection_dim
        if unet.class_embed_type != "simple_projection" or unet.projection_class_embeddings_input_dim != projection:
            raise DimensionError(
                f"{self.what}: the UNet takes the CLAP text embedding as its class embedding, so it needs "
                f'class_embed_type "simple_projection" and projection_class_embeddings_input_dim {projection} (the '
                f"text encoder's projection_dim); it has {unet.class_embed_type!r} and "
                f"{unet.projection_class_embeddings_input_dim}."
            )
        bins = self.vocoder.config.model_in_dim
        if bins % self.vae_scale_factor:
            raise DimensionError(
                f"{self.what}: the vocoder takes {bins} mel bins (model_in_dim), not a multiple of the VAE's scale "
                f"{self.vae_scale_factor}; pick model_in_dim a multiple of {self.vae_scale_factor}."
            )
        length = self.params.audio_length_in_s
        if length is not None and length < self.min_seconds:
            raise SpecError(
                f"{self.name}.params.audio_length_in_s is {length}, shorter than the {self.min_seconds:g} s this "
                f"pipeline makes at least; use {self.min_seconds:g} or more."
            )

    def make_condition_spec(self) -> ConditionSpec:
        return ConditionSpec(1, self.text_encoder.config.projection_dim)

    def condition_targets(self, texts: list[str]) -> torch.Tensor:
        """Captions -> the normalised CLAP text embedding (B, 1, projection_dim), as AudioLDM encodes a prompt."""
        self.check_texts(texts)
        tokens = self.tokenize(texts)
        device = self.text_encoder.device
        with torch.no_grad():
            output = self.text_encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
        embeds = F.normalize(output.text_embeds, dim=-1)  # (B, dim)
        return embeds.unsqueeze(1)  # (B, 1, dim)

    def run_pipeline(self, pipeline, conditioning, negative, options, generators) -> list[Any]:
        length = options.audio_length_in_s
        if length is not None and length < self.min_seconds:
            raise InputError(
                f"{self.what}: generate() audio_length_in_s is {length}; it must be at least {self.min_seconds:g} s."
            )
        result = pipeline(
            prompt_embeds=conditioning[:, 0],  # (B, dim)
            negative_prompt_embeds=None if negative is None else negative[:, 0],  # (B, dim)
            num_inference_steps=options.num_inference_steps,
            guidance_scale=options.guidance_scale,
            audio_length_in_s=length,
            generator=generators,
            output_type="np",
        )
        waves = result.audios  # (B, T) float32
        return [AudioClip(np.ascontiguousarray(wave, dtype=np.float32), self.sampling_rate) for wave in waves]


__all__ = ["AudioLDMConfig", "AudioLDMGenerator"]
