"""``mmllm_sdk.train``: read a recipe spec, check data and model, build, train on transformers.Trainer, save."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from mmllm_sdk.data.examples import Conversation, Example, TextPart
from mmllm_sdk.data.formats import DataReport, as_example
from mmllm_sdk.default_plugins.recipes.data import estimate_length, read_data
from mmllm_sdk.default_plugins.recipes.features import CachedFeatures, cache_features, initialise_projectors
from mmllm_sdk.default_plugins.recipes.host import freed_memory_kept
from mmllm_sdk.default_plugins.recipes.processes import is_main_process, say
from mmllm_sdk.default_plugins.recipes.settings import checked_learning_rates, refuse_fsdp_without_an_accelerator
from mmllm_sdk.errors import CheckpointError, DataError, MMLLMError, SpecError, TrainingError
from mmllm_sdk.files import atomic_write, load_json, read_text
from mmllm_sdk.model.processor import MAX_CHARS_PER_TOKEN
from mmllm_sdk.model.trainable import select, spec_patterns, with_trainable
from mmllm_sdk.registry import get_registry
from mmllm_sdk.spec import LLM, ModelSpec, load_spec
from mmllm_sdk.training.spec import DatasetSource, RecipeSpec, parse_recipe
from mmllm_sdk.validation import validate

if TYPE_CHECKING:
    from mmllm_sdk.model.modeling import MMLLM

DATA_REPORT = "data_report.json"
TRAINING_DEFAULTS: dict[str, Any] = {
    "report_to": "none",  # TensorBoard and others when the recipe asks: training: {report_to: tensorboard}
    "prediction_loss_only": True,  # evaluation reports the loss; logits over the vocabulary are not kept
    "dataloader_pin_memory": torch.cuda.is_available(),  # pinning helps only when batches go to a GPU
    "use_cpu": not torch.accelerator.is_available(),  # so a CPU torchrun is data-parallel (gloo), not N full copies
}
TRAINING_FORCED: dict[str, Any] = {"remove_unused_columns": False}  # examples are typed; the collator makes tensors
# the Trainer would compile the whole model; the SDK compiles the LLM's decoder, where a step's time goes (compile_llm)
COMPILE_FIELDS = ("torch_compile", "torch_compile_backend", "torch_compile_mode")


@dataclass(eq=False)
class ExampleDataset(Dataset):
    """Typed examples with a length estimate each, their input items carrying cached ``features`` once filled."""

    examples: list[Example]
    lengths: list[int]
    features: CachedFeatures | None = None

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index] if self.features is None else self.examples[index].with_media(self.features.attach)


@dataclass
class TrainResult:
    model: MMLLM
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    encoded_for_cache: dict[str, int] = field(default_factory=dict)  # modality -> items encoded into the cache now
    cache_stats: Any = None  # the feature cache's CacheStats (hits while training), when the cache was on
    steps_trained: int | None = None  # optimizer steps this call ran (0: a resumed run that was already complete)


def resolve_model(
    source: str | dict[str, Any], trust_remote_code: bool = False
) -> tuple[ModelSpec, dict[str, torch.Tensor] | None, str]:
    """The model spec to train and, when continuing from a checkpoint, its trained tensors and path."""
    from mmllm_sdk.model.build import open_checkpoint
    from mmllm_sdk.model.checkpoint import MANIFEST

    if isinstance(source, dict):
        return validate(ModelSpec, source, where="model"), None, ""
    path = Path(source)
    if path.is_dir():
        if not (path / MANIFEST).exists():
            raise SpecError(
                f"model: {source!r} is a folder without {MANIFEST}; give a model spec file or an SDK checkpoint."
            )
        spec, state, _, _ = open_checkpoint(path, trust_remote_code)
        return spec, state, str(path)
    return load_spec(path), None, ""


def train(
    recipe_spec: RecipeSpec | dict[str, Any] | str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Run one recipe, the spec and the data checked before any weight loads. ``resume=True`` continues from the
    newest ``checkpoint-N`` in ``training.output_dir``; a folder holding anything else is refused unless
    ``overwrite=True`` lets the run write over it. A model that asks for ``trust_remote_code`` is refused unless
    ``trust_remote_code=True``. ``callbacks`` are handed to the Trainer (TrainerCallback)."""
    from transformers import TrainingArguments
    from transformers.utils import logging as hf_logging

    from mmllm_sdk.model.checkpoint import MANIFEST, load_trained, write_checkpoint_files
    from mmllm_sdk.model.modeling import build_model

    spec = parse_recipe(recipe_spec)
    _check_output_dir(Path(spec.training["output_dir"]), resume=resume, overwrite=overwrite)
    registry = get_registry()
    recipe = registry.get("recipes", spec.recipe, where="recipe").value
    options = validate(recipe.options, spec.options, where="options")
    refuse_fsdp_without_an_accelerator(spec)
    if spec.packing and not recipe.packing:
        packed = ", ".join(entry.name for entry in registry.entries("recipes") if entry.value.packing)
        raise SpecError(
            f"packing: recipe {spec.recipe!r} does not train on packed rows (its loss compares or scores whole "
            f"examples); set packing: false, or use a recipe that packs ({packed})."
        )
    base_spec, init_state, init_origin = resolve_model(spec.model, trust_remote_code)
    trainable = spec.trainable if spec.trainable is not None else list(recipe.default_trainable)
    if spec.trainable is None and init_state is None:  # a model spec (not a checkpoint) that opts components in
        trainable += [path for path in spec_patterns(base_spec) if path == LLM or path.endswith(".encoder")]
    peft = spec.peft if spec.peft is not None else base_spec.llm.peft and base_spec.llm.peft.model_dump()
    if recipe.requires_peft and peft is None:
        raise SpecError(
            f"recipe {spec.recipe!r} needs adapters on the LLM (it trains them); add "
            "peft: {method: lora, r: 8} to the recipe, or continue from a checkpoint that has them."
        )
    chosen = select(base_spec, trainable, strict=spec.trainable is not None)
    model_spec = with_trainable(base_spec, chosen, peft)
    learning_rates = checked_learning_rates(spec, sorted(chosen | ({LLM} if peft else set())))

    # the modalities examples may hold: inputs in user turns, outputs (signal tokens) in assistant turns
    modalities = {name: registry.modality(name) for name in [*model_spec.inputs, *model_spec.outputs]}
    splits = {"train": spec.data.train, "eval": spec.data.eval}
    reports = {split: _read(spec, data, modalities, recipe.kind) for split, data in splits.items() if data is not None}
    for split, report in reports.items():
        say(f"{split} data: {report.summary()}")
    answer_metric = _answer_metric(spec, reports.get("eval"))

    try:  # before any weight loads: transformers' own checks of the combination (strategies that must match…)
        watched = "score" if answer_metric is not None else "loss"  # what early stopping watches unless told
        stopping = {} if spec.early_stopping is None else {"metric_for_best_model": watched}
        training = {key: value for key, value in spec.training.items() if key not in COMPILE_FIELDS}
        args = TrainingArguments(
            **{**TRAINING_DEFAULTS, **recipe.training_defaults, **stopping, **training, **TRAINING_FORCED}
        )
    except (ValueError, TypeError) as exc:
        raise SpecError(f"training: {exc}") from exc
    if not is_main_process():  # one set of progress bars (transformers' weight loading too), not one per process
        hf_logging.disable_progress_bar()
    model = build_model(model_spec, progress=is_main_process(), trust_remote_code=trust_remote_code)
    if init_state is not None:
        load_trained(model, init_state, init_origin, complete=False)
    tokens_per_item = {m: len(ids) for m, ids in model.signal_ids.items()}  # an output part: its k signal tokens
    for m, projector in model.input_projectors.items():  # an input part: the projector's tokens (the larger count)
        tokens_per_item[m] = max(projector.num_tokens, tokens_per_item.get(m, 0))
    typed = {split: [as_example(e, modalities) for e in report.examples] for split, report in reports.items()}
    if model.llm.max_positions is not None:  # what the collator would refuse hours in, refused now
        for examples in typed.values():
            _refuse_long_text(examples, model.llm.max_positions)
    if spec.packing:
        datasets, collator = _packed(model, spec, recipe, typed)
    else:
        datasets = {
            split: ExampleDataset(ex, [estimate_length(e, tokens_per_item) for e in ex]) for split, ex in typed.items()
        }
        collator = recipe.collator(model, spec.data.max_length)
    output_dir = Path(args.output_dir)
    state_cache_dir = str(Path(spec.cache.dir).parent / "signal-states") if spec.cache.enabled else None  # align-output
    try:  # the Trainer checks the settings against the data it gets (eval_strategy without eval data …)
        trainer = recipe.trainer_class(
            model=model,
            args=args,
            train_dataset=datasets["train"],
            eval_dataset=datasets.get("eval"),
            data_collator=collator,
            callbacks=callbacks,
            **options.model_dump(),
            **({"state_cache_dir": state_cache_dir} if recipe.caches_signal_states else {}),
        )
    except MMLLMError:  # the recipe's own checks of its data and options, already sentences that name them
        raise
    except ValueError as exc:
        raise SpecError(f"training: the Trainer of recipe {spec.recipe!r} refuses these settings: {exc}") from exc
    if spec.early_stopping is not None:
        from transformers import EarlyStoppingCallback

        trainer.add_callback(EarlyStoppingCallback(spec.early_stopping.patience, spec.early_stopping.threshold))
    trainer.learning_rates = learning_rates
    scorer = None
    if answer_metric is not None:
        from mmllm_sdk.default_plugins.evaluation.heldout import HeldoutScorer

        cache_dir = spec.cache.dir if spec.cache.enabled else None
        scorer = HeldoutScorer(reports["eval"], answer_metric, args.per_device_eval_batch_size, cache_dir)
        trainer.answer_scorer = scorer
    checkpoint = _last_checkpoint(output_dir) if resume else None
    start_step = _checkpoint_step(checkpoint) if checkpoint is not None else 0
    # the optimizer steps the whole run takes (max_steps, or the epochs over this data), as the Trainer counts them
    planned = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1] if checkpoint else 0
    if checkpoint is not None and start_step >= planned:  # nothing left: say so, encode and save nothing new
        say(
            f"--resume: {checkpoint} is at step {start_step} and this run takes {planned} steps; nothing to train. "
            "Raise training.max_steps or num_train_epochs to train further, or start a new output_dir."
        )
        trainer._load_from_checkpoint(str(checkpoint))
        if args.should_save and not (output_dir / MANIFEST).is_file():  # killed between the last save and the end
            write_checkpoint_files(model, output_dir)
        return TrainResult(model=model, output_dir=output_dir, steps_trained=0)
    encoded, features = ({}, None)
    if spec.cache.enabled:
        every = [example for split in typed.values() for example in split]
        first = lambda desc: args.main_process_first(desc=desc)  # noqa: E731
        encoded, features = cache_features(model, spec.cache.dir, every, args.per_device_train_batch_size, first)
    for dataset in datasets.values():
        dataset.features = features
    # new projectors: their first layers standardise the features (on resume too, so that the set-up, and a reference
    # policy taken from it, are the first run's; the checkpoint's tensors then replace them)
    if init_state is None:
        initialise_projectors(model, datasets["train"], args.per_device_train_batch_size, args.seed)
    if args.should_save:
        report_data = {split: report.to_dict() for split, report in reports.items()}
        atomic_write(output_dir / DATA_REPORT, json.dumps(report_data, indent=2) + "\n")
    eager = compile_llm(model, **{key: spec.training[key] for key in COMPILE_FIELDS if key in spec.training})
    with freed_memory_kept(args.device.type == "cpu"):  # no page faults for each step's buffers (host.py)
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    eager()  # the trained model answers uncompiled: generation's shapes would compile anew
    # sharded weights (FSDP, DeepSpeed ZeRO) are gathered by every process together, then written by the first
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    values = trainer.accelerator.get_state_dict(trainer.model) if sharded else None
    if args.should_save:
        write_checkpoint_files(model, output_dir, values=values)
    stats = features.cache.stats if features is not None else None
    if stats is not None:
        say(f"feature cache: {stats}")
    metrics = dict(result.metrics)
    if scorer is not None:
        metrics.update(_final_score(trainer, scorer, model, reports["train"]))
    return TrainResult(model, output_dir, metrics, encoded, stats, trainer.state.global_step - start_step)


def compile_llm(
    model: MMLLM,
    torch_compile: bool = False,
    torch_compile_backend: str | None = None,
    torch_compile_mode: str | None = None,
) -> Any:
    """The Trainer's ``torch_compile`` settings applied to the LLM's decoder only (``dynamic=True``: batches differ in
    length), where a training step spends its time; the encoders' frozen work is cached and the SDK's own forward has
    data-dependent shapes. A backend or a mode alone turns it on, as in transformers. Returns a function that puts the
    decoder back to eager."""
    if not (torch_compile or torch_compile_backend or torch_compile_mode):
        return lambda: None
    llm = model.llm.model
    decoder = (llm.get_base_model() if hasattr(llm, "get_base_model") else llm).get_decoder()
    decoder.compile(dynamic=True, backend=torch_compile_backend or "inductor", mode=torch_compile_mode)
    say(f"torch_compile: the LLM's decoder ({type(decoder).__name__}) is compiled; the first steps include compiling")
    return lambda: setattr(decoder, "_compiled_call_impl", None)


def _packed(model: MMLLM, spec: RecipeSpec, recipe: Any, typed: dict[str, list[Example]]) -> tuple[dict, Any]:
    """The datasets of packed rows (each a :class:`~.packing.Pack`) and their collator, once the LLM is seen to
    confine attention to each packed example."""
    from mmllm_sdk.default_plugins.recipes.packing import Pack, PackedCollator, pack, prepare_packing, row_length

    prepare_packing(model.llm, spec.recipe)
    length, datasets = row_length(model, spec.data.max_length), {}
    for split, examples in typed.items():
        packing = pack(model, examples, length, recipe.train_on, split)
        say(f"{split} {packing.summary(len(examples))}")
        packs = [Pack(tuple(examples[i] for i in row)) for row in packing.rows]
        datasets[split] = ExampleDataset(packs, packing.lengths)
    return datasets, PackedCollator(model, length, recipe.train_on)


def _answer_metric(spec: RecipeSpec, heldout: DataReport | None) -> str | None:
    """The metric that scores ``data.eval``'s answers, checked against the registered metrics before any weight loads;
    None when none is scored (see :func:`~mmllm_sdk.default_plugins.evaluation.heldout.answer_metric`)."""
    from mmllm_sdk.default_plugins.evaluation.heldout import answer_metric

    if heldout is None or spec.data.metric == "none":
        return None
    name = answer_metric(heldout, spec.data.metric)
    if name is not None:
        get_registry().get("metrics", name, where="data.metric")
    return name


def _final_score(trainer: Any, scorer: Any, model: MMLLM, train: DataReport) -> dict[str, float]:
    """The held-out score of the model the run ends with (the last evaluation's, when it was of this model) and the
    linear probe's ceiling on the same items, said and returned as metrics."""
    state = trainer.state
    scored = [entry for entry in state.log_history if "eval_score" in entry]
    ended_on_last = (
        bool(scored) and scored[-1].get("step") == state.global_step and not trainer.args.load_best_model_at_end
    )
    if not ended_on_last or scorer.last is None:
        scorer(model)
    final, ceiling = scorer.last, scorer.ceiling(model, train)
    line = f"held-out score ({scorer.metric}, {final.count} items): {final}"
    if ceiling is not None:
        line += f"; linear probe on the frozen encoder features (the ceiling, mmllm probe): {ceiling}"
    say(line)
    metrics = {"heldout_score": final.mean}
    return metrics | ({"probe_score": ceiling.mean} if ceiling is not None else {})


def _refuse_long_text(examples: list[Example], positions: int) -> None:
    """Each example's text fits the LLM's positions at the processor's bound (characters per token)."""
    limit = positions * MAX_CHARS_PER_TOKEN
    for example in examples:
        conversations = (example,) if isinstance(example, Conversation) else example.conversations()
        chars = max(sum(len(p.text) for p in c.parts() if isinstance(p, TextPart)) for c in conversations)
        if chars > limit:
            raise DataError(
                f"{example.source or 'An example'} holds {chars:,} characters of text, more than the LLM's "
                f"{positions:,} positions can hold (at most {limit:,}: {MAX_CHARS_PER_TOKEN} a token); shorten it "
                "or remove it from the data."
            )


def _read(
    spec: RecipeSpec, paths: str | list[str] | DatasetSource, modalities: dict[str, Any], kind: str
) -> DataReport:
    """Examples from a registered data source, checked against the recipe's kind and the model's modalities."""
    options = spec.data.model_dump(include={"format", "base_dir", "skip_invalid"})
    report = read_data(paths, modalities, **options)
    if kind not in (report.kind, "any"):
        raise SpecError(
            f"recipe {spec.recipe!r} trains on {kind} examples, but {paths} holds {report.kind} examples; "
            "pick the recipe that fits the data (pt/sft: conversations or captions; dpo/simpo/orpo: preference "
            "pairs; kto: unpaired answers; grpo: any of them)."
        )
    return report


def _check_output_dir(folder: Path, *, resume: bool, overwrite: bool) -> None:
    """Before anything is read or written: ``folder`` is (or can become) a folder this process may write to, and it
    is empty unless the run resumes from one of its checkpoint-N folders or may write over it."""
    existing = next(path for path in (folder, *folder.parents) if path.exists() or path.is_symlink())
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        raise SpecError(
            f"training.output_dir {str(folder)!r}: {str(existing)!r} is not a folder this process may "
            "write to; pick another output_dir."
        )
    if resume and _last_checkpoint(folder) is None:
        raise SpecError(f"--resume: {str(folder)!r} holds no checkpoint-N folder to resume from; run without --resume.")
    found = sorted(p.name for p in folder.iterdir()) if existing == folder and not (resume or overwrite) else []
    if found:
        shown = ", ".join(found[:4]) + (", …" if len(found) > 4 else "")
        raise TrainingError(
            f"training.output_dir {str(folder)!r} is not empty ({shown}: an earlier run?); continue the run in it with "
            "--resume, write over it with --overwrite (overwrite=True), or pick a new output_dir."
        )


def _last_checkpoint(output_dir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    return Path(found) if found is not None else None


def _checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a checkpoint-N folder was saved at (its trainer_state.json, else N). Its files must be
    regular files: the Trainer reads them whole, and a FIFO or a device would hang it."""
    if odd := [path for path in checkpoint.iterdir() if not (path.is_file() or path.is_dir())]:
        raise CheckpointError(f"--resume: {str(odd[0])!r} is not a regular file; remove it or the checkpoint.")
    try:
        state = read_text(checkpoint / "trainer_state.json", "The trainer state", limit=1 << 26)
        return int(load_json(state, "The trainer state")["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return int(checkpoint.name.rsplit("-", 1)[-1])
