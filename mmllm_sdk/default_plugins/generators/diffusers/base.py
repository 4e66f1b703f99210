"""What the diffusers generators share: params, building or loading the pipeline, shape checks, conditioning
checks, generate()'s options and seeding, and the checkpoint reference.

Subclasses (:mod:`.stable_diffusion`, :mod:`.audioldm`) name their pipeline and components and
implement the conditioning (``make_condition_spec``, ``condition_targets``), their size checks
and ``run_pipeline``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationError, model_validator

from mmllm_sdk.components.generator import ModalityGenerator
from mmllm_sdk.components.hf import cached_call, content_hash, hf_call, is_skeleton
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


__all__ = ["SCHEDULERS", "DiffusersGenerator", "GeneratorParams"]
