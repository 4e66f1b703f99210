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
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, model_validator

from mmllm_sdk.components.generator import ModalityGenerator
from mmllm_sdk.components.hf import cached_call, content_hash, hf_call, is_skeleton
from mmllm_sdk.components.modality import AudioClip
from mmllm_sdk.components.output_projector import ConditionSpec
from mmllm_sdk.dtypes import DtypeName, resolve_dtype
from mmllm_sdk.errors import DimensionError, InputError, SpecError
from mmllm_sdk.validation import StrictModel, validate

SchedulerName = Literal["ddim", "pndm", "euler", "euler-ancestral", "dpm-solver"]
SCHEDULERS: dict[str, str] = {  # scheduler param -> diffusers class, built from the pipeline's scheduler config
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "dpm-solver": "DPMSolverMultistepScheduler",
}
DEPRECATION_NOTICE = "has been deprecated and will not receive"  # diffusers' warning on deprecated pipelines
PIPELINE_SIZE_MULTIPLE = 8  # StableDiffusionPipeline refuses image sides that are not multiples of 8

# The byte-level tokenizers a ``config:`` pipeline gets when it names no tokenizer folder: no merges,
# so every byte is one token. Their sizes, for the text encoder's vocab_size:
BYTE_CLIP_VOCAB_SIZE = 514  # 256 bytes, 256 bytes ending a word ("</w>"), <|startoftext|>, <|endoftext|>
BYTE_ROBERTA_VOCAB_SIZE = 261  # <s>, <pad>, </s>, <unk>, 256 bytes, <mask>
BYTE_ROBERTA_PAD_ID = 1  # RoBERTa's <pad>; the CLAP text config's pad_token_id must match it


def byte_level_clip_tokenizer(model_max_length: int) -> Any:
    """A CLIP tokenizer without merges (``BYTE_CLIP_VOCAB_SIZE`` tokens), built in memory, deterministic."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())  # the 256 byte-level symbols
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab.update({symbol + "</w>": len(symbols) + i for i, symbol in enumerate(symbols)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def byte_level_roberta_tokenizer(model_max_length: int) -> Any:
    """A RoBERTa tokenizer without merges (``BYTE_ROBERTA_VOCAB_SIZE`` tokens), built in memory, deterministic."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": BYTE_ROBERTA_PAD_ID, "</s>": 2, "<unk>": 3}
    vocab.update({symbol: len(vocab) + i for i, symbol in enumerate(sorted(ByteLevel.alphabet()))})
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


class _DropDeprecationNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return DEPRECATION_NOTICE not in record.getMessage()


@contextlib.contextmanager
def _without_deprecation_notice() -> Iterator[None]:
    """Drop diffusers' "pipeline deprecated" warning (AudioLDMPipeline logs it on every build), nothing else."""
    logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    dropper = _DropDeprecationNotice()
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A diffusers model in ``dtype``, through ``nn.Module.to``: diffusers' own ``to`` warns on every cast,
    even when none of the model's modules must stay in float32."""
    return module if module.dtype == dtype else torch.nn.Module.to(module, dtype)


# params --------------------------------------------------------------------------------------------------


class GeneratorParams(StrictModel):
    """Params shared by the diffusers generators: where the pipeline comes from and how it samples.

    Subclasses add ``config`` (their components' arguments) and their own sizes.
    """

    model: str | None = None  # a diffusers pipeline: hub id or local folder (safetensors weights, no remote code)
    revision: str | None = None  # hub branch, tag or commit of ``model``
    dtype: DtypeName = "auto"  # auto: bfloat16 where the hardware computes it natively, else float32
    num_inference_steps: int = Field(25, ge=1)  # denoising steps per generate()
    guidance_scale: float = Field(1.0, ge=0.0)  # classifier-free guidance; above 1 it also denoises for caption ""
    scheduler: SchedulerName | None = None  # None: the pipeline's own (DDIM for ``config:``)

    @model_validator(mode="after")
    def _one_source(self) -> GeneratorParams:
        if (self.model is None) == (getattr(self, "config", None) is None):
            raise ValueError(
                "set exactly one of 'model' (a diffusers pipeline folder or hub id, for pretrained weights) "
                "or 'config' (the arguments of each component, for a random pipeline)"
            )
        if self.revision is not None and self.model is None:
            raise ValueError("'revision' picks a version of 'model'; it means nothing with 'config'")
        return self


class SDConfig(StrictModel):
    """``config:`` of ``diffusers-sd``: the arguments of each component of a random Stable Diffusion pipeline."""

    unet: dict[str, Any]  # UNet2DConditionModel arguments; its cross_attention_dim is the text encoder's hidden_size
    vae: dict[str, Any]  # AutoencoderKL arguments (3 image channels)
    text_encoder: dict[str, Any]  # CLIPTextConfig fields
    tokenizer: str | None = None  # a CLIP tokenizer folder; None: a byte-level one (vocab_size 514)


class AudioLDMConfig(StrictModel):
    """``config:`` of ``diffusers-audioldm``: the arguments of each component of a random AudioLDM pipeline."""

    unet: dict[str, Any]  # UNet2DConditionModel arguments, class_embed_type "simple_projection" of the CLAP embedding
    vae: dict[str, Any]  # AutoencoderKL arguments (1 channel: a mel spectrogram)
    text_encoder: dict[str, Any]  # ClapTextConfig fields
    vocoder: dict[str, Any]  # SpeechT5HifiGanConfig fields
    tokenizer: str | None = None  # a RoBERTa tokenizer folder; None: a byte-level one (vocab_size 261, pad id 1)


# the shared generator ------------------------------------------------------------------------------------


class DiffusersGenerator(ModalityGenerator):
    """What the diffusers generators share: params, building the components, shape checks and seeding.

    Subclasses name their pipeline and components and implement :meth:`condition_targets`,
    :meth:`check_sizes` and :meth:`run_pipeline`.
    """

    name: ClassVar[str]
    modality_name: ClassVar[str]
    pipeline_class: ClassVar[str]  # "StableDiffusionPipeline"
    tokenizer_class: ClassVar[str]  # "CLIPTokenizer"
    text_model_classes: ClassVar[tuple[str, str]]  # ("CLIPTextModel", "CLIPTextConfig")
    overridable: ClassVar[tuple[str, ...]] = ("num_inference_steps", "guidance_scale")  # params generate() takes
    Params: ClassVar[type[GeneratorParams]] = GeneratorParams

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.params = validate(self.Params, params or {}, where=f"{self.name}.params")
        self.what = f"generator {self.name!r}"
        self.modality = self.modality_name
        dtype = resolve_dtype(self.params.dtype)
        pipeline = None
        if self.params.config is not None or is_skeleton():
            modules, tokenizer = self.build_components(dtype)
        else:
            pipeline = self.load_pipeline(dtype)
            modules = {part: getattr(pipeline, part) for part in self.module_parts()}
            tokenizer = pipeline.tokenizer
        for part, module in modules.items():
            setattr(self, part, module)  # registered as submodules: .to(), state_dict() and freezing reach them
        self.tokenizer = tokenizer
        self.check_sizes()
        self.condition_spec = self.make_condition_spec()
        self.pipeline = None if is_skeleton() else self.finish_pipeline(pipeline)
        self.requires_grad_(False)  # a generator is frozen
        self.eval()

    # building ----------------------------------------------------------------------------------------------

    def module_parts(self) -> tuple[str, ...]:
        """The pipeline's torch models this generator registers, in state-dict order."""
        return ("unet", "vae", "text_encoder")

    def extra_parts(self) -> dict[str, tuple[str, str]]:
        """Torch models besides the text encoder that transformers builds: part -> (model class, config class)."""
        return {}

    def text_positions(self, config: Any) -> int:
        """How many tokens the text encoder's position embeddings hold."""
        return config.max_position_embeddings

    def byte_tokenizer(self, text_config: Any) -> Any:
        """The tokenizer of a ``config:`` pipeline that names no tokenizer folder, as long as the text encoder allows."""
        raise NotImplementedError

    def build_components(self, dtype: torch.dtype) -> tuple[dict[str, torch.nn.Module], Any]:
        """The torch models and tokenizer with random weights: from ``config:``, or from the configs in the
        subfolders of ``model:`` in skeleton mode (where everything is on ``meta`` and no weight is read)."""
        import diffusers
        import transformers

        config, model, kwargs = self.params.config, self.params.model, self.revision_kwargs()
        modules: dict[str, torch.nn.Module] = {}
        for part, class_name in (("unet", "UNet2DConditionModel"), ("vae", "AutoencoderKL")):
            cls, where = getattr(diffusers, class_name), self.where(part)
            if config is not None:
                module = hf_call(where, cls, **getattr(config, part))  # the constructor refuses unknown arguments
            else:
                module = hf_call(
                    where, cls.from_config, cached_call(where, cls.load_config, model, subfolder=part, **kwargs)
                )
            modules[part] = _cast(module, dtype)
        for part, (model_name, config_name) in {"text_encoder": self.text_model_classes, **self.extra_parts()}.items():
            config_cls, where = getattr(transformers, config_name), self.where(part)
            if config is not None:
                hf_config = hf_call(where, config_cls, **getattr(config, part))
            else:
                hf_config = cached_call(where, config_cls.from_pretrained, model, subfolder=part, **kwargs)
            model_cls = getattr(transformers, model_name)
            builder = getattr(model_cls, "from_config", None) or model_cls._from_config
            modules[part] = hf_call(where, builder, hf_config, dtype=dtype)
        tokenizer_cls, where = getattr(transformers, self.tokenizer_class), self.where("tokenizer")
        if config is None:
            tokenizer = cached_call(where, tokenizer_cls.from_pretrained, model, subfolder="tokenizer", **kwargs)
        elif config.tokenizer is None:
            tokenizer = self.byte_tokenizer(modules["text_encoder"].config)
        else:
            tokenizer = cached_call(where, tokenizer_cls.from_pretrained, config.tokenizer)
        return modules, tokenizer

    def where(self, part: str) -> str:
        """Names a component in error messages: its ``config:`` entry, or the generator."""
        return f"{self.what} (params.config.{part})" if self.params.config is not None else self.what

    def load_pipeline(self, dtype: torch.dtype) -> Any:
        """The pretrained pipeline of ``model:``: safetensors weights only, no remote code."""
        cls = self.pipeline_class_object()
        with _without_deprecation_notice():
            return hf_call(
                self.what,
                cls.from_pretrained,
                self.params.model,
                dtype=dtype,
                use_safetensors=True,
                **self.revision_kwargs(),
                **self.pipeline_kwargs(),
            )

    def pipeline_class_object(self) -> Any:
        import diffusers

        cls = getattr(diffusers, self.pipeline_class, None)
        if cls is None:
            raise SpecError(
                f"{self.what}: diffusers {diffusers.__version__} has no {self.pipeline_class}; install a diffusers "
                "version that does (pip install 'diffusers>=0.25')."
            )
        return cls

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Extra arguments of the pipeline's constructor and from_pretrained."""
        return {}

    def finish_pipeline(self, pipeline: Any) -> Any:
        """The pipeline to call: the loaded one, or one made of the random components; with the chosen scheduler."""
        import diffusers

        if pipeline is None:
            scheduler = diffusers.DDIMScheduler(steps_offset=1, clip_sample=False)  # default betas
            components = {part: getattr(self, part) for part in self.module_parts()}
            with _without_deprecation_notice():
                pipeline = self.pipeline_class_object()(
                    tokenizer=self.tokenizer, scheduler=scheduler, **components, **self.pipeline_kwargs()
                )
        if self.params.scheduler is not None:
            cls = getattr(diffusers, SCHEDULERS[self.params.scheduler])
            extra = {"skip_prk_steps": True} if self.params.scheduler == "pndm" else {}  # as Stable Diffusion's PNDM
            pipeline.scheduler = cls.from_config(pipeline.scheduler.config, **extra)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def revision_kwargs(self) -> dict[str, Any]:
        return {"revision": self.params.revision} if self.params.revision else {}

    @property
    def vae_scale_factor(self) -> int:
        """How many pixels (or mel frames and bins) one latent cell covers along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def check_sizes(self) -> None:
        """Raise SpecError when the components or size params do not fit together."""
        vocab_size = self.text_encoder.config.vocab_size
        if len(self.tokenizer) > vocab_size:
            raise DimensionError(
                f"{self.what}: the text encoder's vocab_size is {vocab_size}, but the tokenizer has "
                f"{len(self.tokenizer)} tokens; set text_encoder.vocab_size to at least {len(self.tokenizer)}."
            )
        positions = self.text_positions(self.text_encoder.config)
        if self.tokenizer.model_max_length > positions:
            raise DimensionError(
                f"{self.what}: the tokenizer pads captions to {self.tokenizer.model_max_length} tokens "
                f"(model_max_length), but the text encoder has positions for {positions}; give the tokenizer a "
                f"model_max_length of at most {positions}, or the text encoder more max_position_embeddings."
            )

    def make_condition_spec(self) -> ConditionSpec:
        raise NotImplementedError

    # running -----------------------------------------------------------------------------------------------

    def check_texts(self, texts: list[str]) -> None:
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            found = type(texts).__name__ if not isinstance(texts, (list, tuple)) else "an empty list or non-str items"
            raise InputError(
                f"{self.what}: condition_targets() takes a non-empty list of captions (str); got {found}. "
                'Wrap a single caption in a list: ["a red circle"].'
            )

    def tokenize(self, texts: list[str]) -> Any:
        """Captions padded (and truncated) to the tokenizer's model_max_length, as the pipeline does."""
        return self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )

    def check_conditioning(self, conditioning: torch.Tensor) -> torch.Tensor:
        """``conditioning`` checked against ``condition_spec`` and moved to the UNet's device and dtype."""
        spec = self.condition_spec
        expected = f"(B, {spec.num_tokens}, {spec.dim}) (batch, num_tokens, dim)"
        if not isinstance(conditioning, torch.Tensor) or not conditioning.is_floating_point():
            found = type(conditioning).__name__ if not isinstance(conditioning, torch.Tensor) else conditioning.dtype
            raise InputError(f"{self.what}: generate() takes a float tensor of shape {expected}; got {found}.")
        shape = tuple(conditioning.shape)
        if len(shape) != 3 or shape[0] < 1 or shape[1:] != (spec.num_tokens, spec.dim):
            raise InputError(
                f"{self.what}: expected conditioning of shape {expected}, got {shape}; pass the output projector's "
                "H_X, built for this generator's condition_spec."
            )
        return conditioning.to(device=self.unet.device, dtype=self.unet.dtype)  # (B, num_tokens, dim)

    def options(self, kwargs: dict[str, Any]) -> tuple[Any, int]:
        """generate()'s keyword arguments over the params, validated as the params are; and the seed."""
        allowed = (*self.overridable, "seed")
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise InputError(
                f"{self.what}: generate() got unknown keyword arguments {', '.join(unknown)}; it takes "
                f"{', '.join(allowed)}."
            )
        overrides = {key: value for key, value in kwargs.items() if key != "seed"}
        try:
            options = self.Params.model_validate({**self.params.model_dump(), **overrides})
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or 'options'}: {item['msg']} (got {item.get('input')!r})"
                for item in error.errors()
            )
            raise InputError(f"{self.what}: generate() options are not valid: {problems}.") from None
        seed = kwargs.get("seed")
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))  # drawn from the global torch RNG: torch.manual_seed fixes it
        elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"{self.what}: generate() seed must be an int >= 0 or None; got {seed!r}.")
        return options, seed

    def require_pipeline(self) -> Any:
        if self.pipeline is None:
            raise InputError(
                f"{self.what} was built in skeleton mode (configs only, weights on meta) and cannot generate; "
                "build it outside mmllm_sdk.components.hf.skeleton_mode()."
            )
        return self.pipeline

    def generate(self, conditioning: torch.Tensor, **kwargs: Any) -> list[Any]:
        """(B, num_tokens, dim) conditioning -> B items; deterministic for a given torch seed or ``seed=``.

        Item i draws its initial noise from ``seed + i``, so it does not depend on the other rows.
        kwargs override ``num_inference_steps``, ``guidance_scale`` and the generator's own size params.
        """
        options, seed = self.options(kwargs)
        pipeline = self.require_pipeline()
        conditioning = self.check_conditioning(conditioning)  # (B, num_tokens, dim)
        generators = [torch.Generator().manual_seed(seed + i) for i in range(len(conditioning))]
        negative = None
        if options.guidance_scale > 1.0:  # the unconditional branch: the empty caption's conditioning
            negative = self.condition_targets([""]).to(conditioning.dtype).expand_as(conditioning)
        with torch.no_grad():
            return self.run_pipeline(pipeline, conditioning, negative, options, generators)

    def run_pipeline(
        self,
        pipeline: Any,
        conditioning: torch.Tensor,
        negative: torch.Tensor | None,
        options: Any,
        generators: list[torch.Generator],
    ) -> list[Any]:
        raise NotImplementedError

    def reference(self) -> dict[str, Any]:
        """What a checkpoint records of this frozen generator: the config, or the model, revision and content hash."""
        if self.params.config is not None:
            return {"config": self.params.config.model_dump()}
        ref: dict[str, Any] = {"model": self.params.model}
        if self.params.revision:
            ref["revision"] = self.params.revision
        if Path(self.params.model).exists():
            ref["sha256"] = content_hash(Path(self.params.model))
        return ref


# Stable Diffusion ----------------------------------------------------------------------------------------


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


# AudioLDM ------------------------------------------------------------------------------------------------


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


GENERATORS: tuple[type[DiffusersGenerator], ...] = (StableDiffusionGenerator, AudioLDMGenerator)


__all__ = [
    "BYTE_CLIP_VOCAB_SIZE",
    "BYTE_ROBERTA_PAD_ID",
    "BYTE_ROBERTA_VOCAB_SIZE",
    "GENERATORS",
    "AudioLDMGenerator",
    "DiffusersGenerator",
    "StableDiffusionGenerator",
    "byte_level_clip_tokenizer",
    "byte_level_roberta_tokenizer",
]
