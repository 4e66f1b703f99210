"""``diffusers-sd``: Stable Diffusion, conditioned on the CLIP text encoder's last hidden states."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from mmllm_sdk.components.output_projector import ConditionSpec
from mmllm_sdk.default_plugins.generators.diffusers.base import DiffusersGenerator, GeneratorParams
from mmllm_sdk.default_plugins.generators.diffusers.byte_tokenizers import byte_level_clip_tokenizer
from mmllm_sdk.errors import DimensionError, InputError, SpecError
from mmllm_sdk.validation import StrictModel

PIPELINE_SIZE_MULTIPLE = 8  # StableDiffusionPipeline refuses image sides that are not multiples of 8


class SDConfig(StrictModel):
    """``config:`` of ``diffusers-sd``: the arguments of each component of a random Stable Diffusion pipeline."""

    unet: dict[str, Any]  # UNet2DConditionModel arguments; its cross_attention_dim is the text encoder's hidden_size
    vae: dict[str, Any]  # AutoencoderKL arguments (3 image channels)
    text_encoder: dict[str, Any]  # CLIPTextConfig fields
    tokenizer: str | None = None  # a CLIP tokenizer folder; None: a byte-level one (vocab_size 514)


class StableDiffusionGenerator(DiffusersGenerator):
    """``diffusers-sd``: a Stable Diffusion pipeline conditioned on CLIP text hidden states, returning PIL images.

    ``condition_spec`` is ``(tokenizer.model_max_length, text_encoder.hidden_size)``;
    :meth:`condition_targets` is the pipeline's own prompt encoding (the last hidden state).
    No safety checker is loaded: the pipeline returns what the UNet and VAE make.
    """

    name = "diffusers-sd"
    modality_name = "image"
    pipeline_class = "StableDiffusionPipeline"
    tokenizer_class = "CLIPTokenizer"
    text_model_classes = ("CLIPTextModel", "CLIPTextConfig")
    overridable = ("num_inference_steps", "guidance_scale", "height", "width")

    class Params(GeneratorParams):
        config: SDConfig | None = None  # the components of a random pipeline (tests, examples)
        height: int | None = Field(None, ge=1)  # image height in pixels; default: the UNet's sample_size x VAE scale
        width: int | None = Field(None, ge=1)  # image width in pixels; the same default

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def byte_tokenizer(self, text_config: Any) -> Any:
        return byte_level_clip_tokenizer(self.text_positions(text_config))

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images generate() makes by default."""
        sample = self.unet.config.sample_size
        side_h, side_w = (sample, sample) if isinstance(sample, int) else tuple(sample)
        return (
            self.params.height or side_h * self.vae_scale_factor,
            self.params.width or side_w * self.vae_scale_factor,
        )

    def size_multiple(self) -> int:
        return max(PIPELINE_SIZE_MULTIPLE, self.vae_scale_factor)

    def check_sizes(self) -> None:
        super().check_sizes()
        hidden = self.text_encoder.config.hidden_size
        cross = self.unet.config.cross_attention_dim
        if any(dim != hidden for dim in (cross if isinstance(cross, (list, tuple)) else [cross])):
            raise DimensionError(
                f"{self.what}: the UNet's cross_attention_dim is {cross}, but the text encoder's hidden_size is "
                f"{hidden}; they must be equal (set unet.cross_attention_dim to {hidden})."
            )
        multiple = self.size_multiple()
        for field in ("height", "width"):
            value = getattr(self.params, field)
            if value is not None and value % multiple:
                raise SpecError(
                    f"{self.name}.params.{field} is {value}, but image sides must be multiples of {multiple} (the "
                    f"VAE's scale and the pipeline's 8); use {multiple * max(1, round(value / multiple))}."
                )

    def make_condition_spec(self) -> ConditionSpec:
        return ConditionSpec(self.tokenizer.model_max_length, self.text_encoder.config.hidden_size)

    def condition_targets(self, texts: list[str]) -> torch.Tensor:
        """Captions -> the CLIP text encoder's last hidden states (B, model_max_length, hidden_size)."""
        self.check_texts(texts)
        tokens = self.tokenize(texts)
        device = self.text_encoder.device
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        attention_mask = tokens.attention_mask.to(device) if use_mask else None  # as the pipeline does
        with torch.no_grad():
            output = self.text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)
        return output[0]  # (B, num_tokens, dim)

    def denoising_loss(self, conditioning: torch.Tensor, items: list[Any]) -> torch.Tensor:
        """The UNet's loss on the images' VAE latents, noised at random timesteps, under ``conditioning``.

        Epsilon (or v) prediction, as the scheduler says; the VAE and UNet stay frozen, the
        gradient reaches ``conditioning``.
        """
        from PIL import Image

        pipeline = self.require_pipeline()
        if len(items) != conditioning.shape[0] or not all(isinstance(item, Image.Image) for item in items):
            raise InputError(
                f"{self.what}: denoising_loss takes one PIL image per conditioning row; got {len(items)} item(s) for "
                f"{conditioning.shape[0]} row(s)."
            )
        height, width = self.image_size
        pixels = np.stack([np.asarray(item.convert("RGB").resize((width, height)), dtype=np.float32) for item in items])
        pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        with torch.no_grad():
            encoded = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist.sample()
            latents = encoded * self.vae.config.scaling_factor  # (B, C, H / s, W / s)
        scheduler = pipeline.scheduler
        noise = torch.randn_like(latents)
        steps = torch.randint(0, scheduler.config.num_train_timesteps, (len(items),), device=latents.device)
        noisy = scheduler.add_noise(latents, noise, steps)
        prediction = self.unet(noisy, steps, encoder_hidden_states=self.check_conditioning(conditioning)).sample
        target = (
            noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, steps)
        )
        return F.mse_loss(prediction.float(), target.float())

    def run_pipeline(self, pipeline, conditioning, negative, options, generators) -> list[Any]:
        multiple = self.size_multiple()
        height = options.height or self.image_size[0]
        width = options.width or self.image_size[1]
        for field, value in (("height", height), ("width", width)):
            if value % multiple:
                raise InputError(f"{self.what}: generate() {field} is {value}; it must be a multiple of {multiple}.")
        result = pipeline(
            prompt_embeds=conditioning,  # (B, num_tokens, dim)
            negative_prompt_embeds=negative,  # (B, num_tokens, dim) or None
            num_inference_steps=options.num_inference_steps,
            guidance_scale=options.guidance_scale,
            height=height,
            width=width,
            generator=generators,
            output_type="pil",
        )
        return list(result.images)


__all__ = ["PIPELINE_SIZE_MULTIPLE", "SDConfig", "StableDiffusionGenerator"]
