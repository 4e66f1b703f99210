"""``mmllm_sdk.train``: read a recipe spec, check data and model, build, train on transformers.Trainer, save."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from mmllm_sdk.data.formats import DataReport, content_parts, estimate_length, read_examples
from mmllm_sdk.errors import PluginError, SpecError
from mmllm_sdk.registry import get_registry
from mmllm_sdk.spec import ModelSpec, load_spec
from mmllm_sdk.training.spec import DatasetSource, RecipeSpec, parse_recipe, with_training_overrides
from mmllm_sdk.validation import validate

if TYPE_CHECKING:
    from mmllm_sdk.model.modeling import MMLLM

DATA_REPORT = "data_report.json"
TRAINING_DEFAULTS: dict[str, Any] = {
    "report_to": "none",  # TensorBoard and others when the recipe asks: training: {report_to: tensorboard}
    "prediction_loss_only": True,  # evaluation reports the loss; logits over the vocabulary are not kept
    "dataloader_pin_memory": torch.cuda.is_available(),  # pinning helps only when batches go to a GPU
    "train_sampling_strategy": "group_by_length",  # batches of similar length: less padding (estimated lengths)
    # without a GPU the Trainer must be told it runs on the CPU: only then does a torchrun or accelerate
    # launch become data-parallel (gloo) instead of one full copy of the run per process
    "use_cpu": not torch.accelerator.is_available(),
}
TRAINING_FORCED: dict[str, Any] = {
    "remove_unused_columns": False,  # examples are raw conversations; the collator builds the tensors
}


class ExampleDataset(Dataset):
    """Examples read by ``mmllm_sdk.data.formats`` (dicts), with a length estimate each for grouping."""

    def __init__(self, examples: list[dict[str, Any]], lengths: list[int]) -> None:
        self.examples = examples
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]


@dataclass
class TrainResult:
    """What ``train`` returns: the trained model, where it was saved, and the Trainer's metrics."""

    model: MMLLM
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    encoded_for_cache: dict[str, int] = field(default_factory=dict)  # modality -> items encoded into the cache now
    cache_stats: Any = None  # the feature cache's CacheStats (hits while training), when the cache was on
    steps_trained: int | None = None  # optimizer steps this call ran (0: a resumed run that was already complete)


def resolve_model(source: str | dict[str, Any]) -> tuple[ModelSpec, dict[str, torch.Tensor] | None, str]:
    """The model spec to train and, when continuing from a checkpoint, its trained tensors and path."""
    from mmllm_sdk.model.checkpoint import MANIFEST, check_plugins, read_manifest, read_trained

    if isinstance(source, dict):
        return validate(ModelSpec, source, where="model"), None, ""
    path = Path(source)
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise SpecError(
                f"model: {source!r} is a folder without {MANIFEST}; give a model spec file or an SDK checkpoint."
            )
        data = read_manifest(path)
        check_plugins(data)
        return validate(ModelSpec, data["spec"], source=str(path / MANIFEST)), read_trained(path), str(path)
    return load_spec(path), None, ""


def train(
    recipe_spec: RecipeSpec | dict[str, Any] | str | os.PathLike[str],
    *,
    resume: bool = False,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Run one recipe: the spec and the data are checked before any weight loads.

    ``resume=True`` continues from the newest ``checkpoint-N`` in ``training.output_dir``
    (weights, optimizer, scheduler, RNG and data position), as ``mmllm train --resume`` does.
    ``callbacks`` are ``transformers.TrainerCallback`` objects handed to the Trainer.
    """
    from transformers import TrainingArguments

    from mmllm_sdk.model.checkpoint import MANIFEST, load_trained, write_checkpoint_files
    from mmllm_sdk.model.modeling import build_model

    spec = parse_recipe(recipe_spec)
    if resume and _last_checkpoint(Path(spec.training["output_dir"])) is None:
        raise SpecError(
            f"--resume: {spec.training['output_dir']!r} holds no checkpoint-N folder to resume from; "
            "run without --resume to start."
        )
    registry = get_registry()
    recipe = registry.get("recipes", spec.recipe, where="recipe").value
    options = validate(recipe.options, spec.options, where="options")
    base_spec, init_state, init_origin = resolve_model(spec.model)
    trainable = spec.trainable if spec.trainable is not None else list(recipe.default_trainable)
    if spec.trainable is None and init_state is None:  # a model spec (not a checkpoint) that opts components in
        trainable += opted_in(base_spec)
    peft = spec.peft if spec.peft is not None else _peft_of(base_spec)
    if recipe.requires_peft and peft is None:
        raise SpecError(
            f"recipe {spec.recipe!r} needs adapters on the LLM (it trains them); add "
            "peft: {method: lora, r: 8} to the recipe, or continue from a checkpoint that has them."
        )
    model_spec = with_training_overrides(base_spec, trainable, peft, strict=spec.trainable is not None)

    # the modalities examples may hold: inputs in user turns, outputs (signal tokens) in assistant turns
    modalities = {name: registry.modality(name) for name in [*model_spec.inputs, *model_spec.outputs]}
    reports = {"train": _read(spec, spec.data.train, modalities, recipe.kind)}
    if spec.data.eval is not None:
        reports["eval"] = _read(spec, spec.data.eval, modalities, recipe.kind)
    for split, report in reports.items():
        _say(f"{split} data: {report.summary()}")

    try:  # before any weight loads: transformers' own checks of the combination (strategies that must match…)
        args = TrainingArguments(**{**TRAINING_DEFAULTS, **spec.training, **TRAINING_FORCED})
    except (ValueError, TypeError) as exc:
        raise SpecError(f"training: {exc}") from exc
    if not is_main_process():  # one set of progress bars (transformers' weight loading too), not one per process
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model = build_model(model_spec, progress=is_main_process())
    if init_state is not None:
        load_trained(model, init_state, init_origin, complete=False)
    tokens_per_item = {m: len(ids) for m, ids in model.signal_ids.items()}  # an output part: its k signal tokens
    for m, projector in model.input_projectors.items():  # an input part: the projector's tokens (the larger count)
        tokens_per_item[m] = max(projector.num_tokens, tokens_per_item.get(m, 0))
    datasets = {
        split: ExampleDataset(report.examples, [estimate_length(e, tokens_per_item) for e in report.examples])
        for split, report in reports.items()
    }
    output_dir = Path(args.output_dir)
    trainer = recipe.trainer_class(
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("eval"),
        data_collator=recipe.collator(model, spec.data.max_length),
        callbacks=callbacks,
        **options.model_dump(),
        **({"state_cache_dir": _state_cache_dir(spec)} if recipe.caches_signal_states else {}),
    )
    checkpoint = _last_checkpoint(output_dir) if resume else None
    start_step = _checkpoint_step(checkpoint) if checkpoint is not None else 0
    planned = _planned_steps(trainer) if checkpoint is not None else 0
    if checkpoint is not None and start_step >= planned:  # nothing left: say so, encode and save nothing new
        _say(
            f"--resume: {checkpoint} is at step {start_step} and this run takes {planned} steps; nothing to train. "
            "Raise training.max_steps or num_train_epochs to train further, or start a new output_dir."
        )
        trainer._load_from_checkpoint(str(checkpoint))
        if args.should_save and not (output_dir / MANIFEST).is_file():  # killed between the last save and the end
            write_checkpoint_files(model, output_dir)
        return TrainResult(model=model, output_dir=output_dir, steps_trained=0)
    encoded = _fill_feature_cache(model, spec, reports, args) if spec.cache.enabled else {}
    cache = model.processor.feature_cache
    if args.should_save:
        output_dir.mkdir(parents=True, exist_ok=True)
        report_data = {split: report.to_dict() for split, report in reports.items()}
        (output_dir / DATA_REPORT).write_text(json.dumps(report_data, indent=2) + "\n", encoding="utf-8")
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    finally:
        model.processor.use_feature_cache(None)
    if args.should_save:
        write_checkpoint_files(model, output_dir)
    if cache is not None:
        _say(f"feature cache: {cache.stats}")
    return TrainResult(
        model=model,
        output_dir=output_dir,
        metrics=dict(result.metrics),
        encoded_for_cache=encoded,
        cache_stats=cache.stats if cache is not None else None,
        steps_trained=trainer.state.global_step - start_step,
    )


def _fill_feature_cache(model: MMLLM, spec: RecipeSpec, reports: dict[str, DataReport], args: Any) -> dict[str, int]:
    """Encode every media file of the data once with each frozen encoder, and read features from disk after.

    Runs on the main process first (the others then find everything cached); items already
    cached by an earlier run with the same encoder, preprocessing and file content are not
    encoded again. Returns how many items were encoded now, per modality.
    """
    from mmllm_sdk.data.feature_cache import FeatureCache, encoder_fingerprint, fill_cache

    cache = FeatureCache(spec.cache.dir)
    fingerprints, encoded = {}, {}
    for modality, encoder in model.encoders.items():
        if not model.is_frozen(f"inputs.{modality}.encoder"):
            continue  # a trained encoder's features change every step
        fingerprint = encoder_fingerprint(encoder, model.spec.inputs[modality].encoder, model.spec.seed)
        sources = [
            source for report in reports.values() for e in report.examples for source in _media_sources(e, modality)
        ]
        if not sources:
            continue  # the data hold no file of this modality: nothing to cache, nothing to say
        with args.main_process_first(desc=f"{modality} feature cache"):
            encoded[modality] = fill_cache(
                encoder,
                cache,
                fingerprint,
                sources,
                get_registry().modality(modality).load,
                batch_size=args.per_device_train_batch_size,
            )
        fingerprints[modality] = fingerprint
        _say(
            f"{modality} feature cache ({spec.cache.dir}): {encoded[modality]} item(s) encoded now, "
            f"{len(set(sources)) - encoded[modality]} already cached"
        )
    if fingerprints:
        model.processor.use_feature_cache(cache, fingerprints)
    return encoded


def _media_sources(example: dict[str, Any], modality: str) -> list[Any]:
    return [part["path"] for part in content_parts(example) if part.get("type") == modality and "path" in part]


def is_main_process() -> bool:
    """True in a plain run and in the first process of a torchrun / accelerate launch (the one that talks)."""
    return int(os.environ.get("RANK", "0")) == 0


def _say(line: str) -> None:
    """A line for the person running the job: on standard error, once (not once per torchrun process)."""
    if is_main_process():
        print(line, file=sys.stderr, flush=True)


def _peft_of(spec: ModelSpec) -> dict[str, Any] | None:
    return spec.llm.peft.model_dump() if spec.llm.peft is not None else None


def _read(
    spec: RecipeSpec, paths: str | list[str] | DatasetSource, modalities: dict[str, Any], kind: str
) -> DataReport:
    if isinstance(paths, DatasetSource):
        report = _from_dataset(paths, modalities)
    else:
        report = read_examples(
            paths,
            format=spec.data.format,
            modalities=modalities,
            base_dir=spec.data.base_dir,
            skip_invalid=spec.data.skip_invalid,
        )
    if report.kind != kind:
        raise SpecError(
            f"recipe {spec.recipe!r} trains on {kind} examples, but {paths} holds {report.kind} examples; "
            "pick the recipe that fits the data (pt/sft: conversations or captions; dpo: preference pairs)."
        )
    return report


def _from_dataset(source: DatasetSource, modalities: dict[str, Any]) -> DataReport:
    """Examples from a registered data source, checked against the model's input modalities."""
    entry = get_registry().get("datasets", source.dataset, where="data: dataset")
    schema = getattr(entry.value, "Params", None)
    params = (
        validate(schema, source.params, where=f"data.{source.dataset}.params").model_dump() if schema else source.params
    )
    report = entry.build(params)
    if not isinstance(report, DataReport):
        raise PluginError(
            f"Plugin {entry.plugin!r}: the {entry.label} returned a {type(report).__name__}, not a DataReport."
        )
    for modality in report.media_counts():
        if modality not in modalities:
            raise SpecError(
                f"data: dataset {source.dataset!r} gives {modality} inputs, but the model takes only "
                f"{', '.join(modalities) or 'text'}; add an inputs.{modality} entry or pick another data source."
            )
    return report


def opted_in(spec: ModelSpec) -> list[str]:
    """Components a model spec marks ``trainable: true`` against their default: encoders and the LLM.

    A recipe without ``trainable:`` trains its defaults plus these, so an encoder that starts
    from random weights (``trainable: true`` in the spec) trains without repeating it in every
    recipe. A checkpoint's flags are the previous stage's choice and are not carried over.
    """
    paths = ["llm"] if spec.llm.trainable else []
    return paths + [f"inputs.{m}.encoder" for m, inputs in spec.inputs.items() if inputs.encoder.trainable]


def _state_cache_dir(spec: RecipeSpec) -> str | None:
    """Where align-output keeps the LLM's signal states: beside the feature cache (None: caching off)."""
    return str(Path(spec.cache.dir).parent / "signal-states") if spec.cache.enabled else None


def _last_checkpoint(output_dir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    return Path(found) if found is not None else None


def _planned_steps(trainer: Any) -> int:
    """The optimizer steps the whole run takes (``max_steps``, or the epochs over this data), as the Trainer counts."""
    return trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]


def _checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a checkpoint-N folder was saved at (its trainer_state.json, else N)."""
    state = checkpoint / "trainer_state.json"
    try:
        return int(json.loads(state.read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return int(checkpoint.name.rsplit("-", 1)[-1])
