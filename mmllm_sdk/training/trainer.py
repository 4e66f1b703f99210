"""The transformers.Trainer behind every recipe: supervised-only LM loss, SDK checkpoints written atomically."""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor
from torch.utils._pytree import tree_leaves
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from mmllm_sdk.errors import CheckpointError, InputError, TrainingError
from mmllm_sdk.model.checkpoint import MANIFEST, load_trained, read_trained, write_checkpoint_files

STOP = "No checkpoint was written for this step (earlier ones are kept); fix that component or its inputs."
STAGING = ".saving"  # checkpoints are written here, then renamed to checkpoint-N: a kill never leaves half of one


class MMTrainer(Trainer):
    """``transformers.Trainer`` for an MMLLM: the LM loss on supervised positions only; ``checkpoint-N`` folders are
    SDK checkpoints plus the Trainer's state, staged in a hidden folder and renamed into place whole."""

    # True: the loss is a mean over the supervised tokens of the whole optimizer step (all micro-batches and
    # processes); recipes with a per-example loss (DPO, align-output) set False and return a per-batch mean.
    token_weighted_loss = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = self.token_weighted_loss  # the Trainer then counts num_items_in_batch
        self._staging_root: Path | None = None
        # model -> {name: value}: more metrics of each evaluation (logged as eval_<name>), e.g. held-out answers scored
        self.answer_scorer: Callable[[torch.nn.Module], dict[str, float]] | None = None
        self.learning_rates: dict[str, float] = {}  # component path glob -> its learning rate (the rest: the args')

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, its groups split so that each component :attr:`learning_rates` names trains at
        its own rate (the schedule scales every group alike)."""
        optimizer = super().create_optimizer(model)
        if not self.learning_rates:
            return optimizer
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        rate_of = {}
        for path, part in unwrapped.components().items():
            rate = next((lr for glob, lr in self.learning_rates.items() if fnmatch.fnmatchcase(path, glob)), None)
            rate_of.update({id(p): rate for p in part.parameters()} if rate is not None else {})
        groups = []
        for group in optimizer.param_groups:
            by_rate: dict[float, list[torch.nn.Parameter]] = {}
            for parameter in group["params"]:
                by_rate.setdefault(rate_of.get(id(parameter), group["lr"]), []).append(parameter)
            groups += [{**group, "params": params, "lr": lr} for lr, params in by_rate.items()]
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.answer_scorer is not None:  # logged with the loss, and seen by metric_for_best_model and early stopping
            scores = self.answer_scorer(self.accelerator.unwrap_model(self.model))
            output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in scores.items()})
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, supervised_only=True, num_items_in_batch=num_items_in_batch, skip_logits=True)
        loss = self.trains_something(model, outputs.loss)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # the count covers every process and DDP averages their gradients: undo the average
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def trains_something(self, model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
        """``loss``, refused with an :class:`InputError` in training when it depends on no trained tensor."""
        if model.training and not loss.requires_grad:
            unwrapped = self.accelerator.unwrap_model(model)
            trained = sorted({name.split(".")[0] for name, p in unwrapped.named_parameters() if p.requires_grad})
            raise InputError(
                "This batch trains nothing: the loss does not depend on any trained tensor "
                f"({', '.join(trained) or 'none'})."
                " The examples may not use what trains (an input projector, with no file of its modality in the data);"
                " add such inputs, or train the LLM's adapters (peft: {method: lora, r: 8})."
            )
        return loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """One micro-batch's forward and backward. A loss or a gradient that is not finite stops the run with a
        :class:`TrainingError` naming the step and the component, before an optimizer step or a checkpoint takes it."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        unwrapped, step = self.accelerator.unwrap_model(model), f"Training stopped at step {self.state.global_step + 1}"
        if not torch.isfinite(loss):
            raise TrainingError(f"{step}: the loss is {loss.item()}; {self.first_nonfinite(unwrapped, inputs)}. {STOP}")
        # every gradient at once (fp16's scaler skips overflowing steps by design); FSDP's: each shard, then all hear
        named = [(n, p) for n, p in unwrapped.named_parameters() if p.grad is not None and not self.accelerator.scaler]
        grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for _, p in named]
        finite = torch.stack([g.isfinite().all().to(loss.device) for g in grads]).int() if grads else torch.ones(0)
        if any(isinstance(p.grad, DTensor) for _, p in named):
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        finite = finite.bool().tolist()
        if bad := [(name, p) for (name, p), ok in zip(named, finite, strict=True) if not ok]:
            owner = {id(p): path for path, part in unwrapped.components().items() for p in part.parameters()}
            parts = ", ".join(dict.fromkeys(owner.get(id(p), name) for name, p in bad))
            raise TrainingError(
                f"{step}: the gradient of {parts} is not finite (NaN or inf, in {bad[0][0]}"
                f"{' and more' if len(bad) > 1 else ''}) while the loss is {loss.item():.4g}. {STOP}"
            )
        return loss

    def first_nonfinite(self, model: torch.nn.Module, inputs: dict[str, Any]) -> str:
        """Where non-finite values first appear when the batch runs again (no gradients; the model is left in eval
        mode, as the run stops), found by forward hooks on every module of the model's components."""
        found: list[str] = []

        def check(path: str, module: Any, args: Any, kwargs: Any, output: Any) -> None:
            if not found and not _finite([args, kwargs]):  # from the batch, an encoder before it, or the feature cache
                found.append(f"{path} receives non-finite inputs")
            elif not found and not _finite(output):
                found.append(f"the output of {path} is the first that is not finite")

        owner = {module: path for path, part in reversed(model.components().items()) for module in part.modules()}
        hooks = [m.register_forward_hook(functools.partial(check, p), with_kwargs=True) for m, p in owner.items()]
        try:
            with torch.no_grad(), contextlib.suppress(Exception):  # a rerun that fails leaves what the hooks found
                self.compute_loss(model.eval(), self._prepare_inputs(inputs))
        finally:
            for hook in hooks:
                hook.remove()
        return found[0] if found else "every component's output is finite, so the recipe's loss itself is not"

    def through_wrapper(self, model: torch.nn.Module, loss_of: Any, *args: Any) -> Any:
        """``loss_of(unwrapped_model, *args)`` run as the forward of the wrapped ``model``, so DDP/FSDP sync gradients.
        Meanwhile the model's ``forward`` is ``loss_of``: it calls ``type(model).forward(model, …)`` for the real one.
        """
        unwrapped = self.accelerator.unwrap_model(model)
        if unwrapped is model:
            return loss_of(unwrapped, *args)
        unwrapped.forward = functools.partial(loss_of, unwrapped)  # nn.Module.__call__ calls self.forward
        try:
            return model(*args)
        finally:
            del unwrapped.forward

    # group by the datasets' estimated ``lengths``: the Trainer's own grouping would tokenize every example
    def _get_train_sampler(self, train_dataset=None):
        lengths = getattr(train_dataset if train_dataset is not None else self.train_dataset, "lengths", None)
        if self.args.train_sampling_strategy == "group_by_length" and lengths is not None:
            # one optimizer step's examples over all processes: the order does not depend on how they are split
            size = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            return EpochSeededLengthGroupedSampler(size, lengths=lengths, seed=self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        lengths = getattr(eval_dataset, "lengths", None)
        if self.args.train_sampling_strategy == "group_by_length" and lengths is not None:
            return EpochSeededLengthGroupedSampler(self.args.eval_batch_size, lengths=lengths, seed=self.args.seed)
        return super()._get_eval_sampler(eval_dataset)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        folder = Path(output_dir or self.args.output_dir)  # made by write_checkpoint_files' atomic writes
        write_checkpoint_files(self.accelerator.unwrap_model(self.model), folder, values=state_dict)

    def _get_output_dir(self, trial) -> str:
        return str(self._staging_root) if self._staging_root is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        staging_root = run_dir / STAGING
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)  # what a killed save left behind
            staging_root.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self._staging_root = staging_root
        try:
            super()._save_checkpoint(model, trial)  # every rank writes its part (RNG state) into the stage
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = run_dir / name
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging_root / name, final)
            best = self.state.best_model_checkpoint
            if best is not None and Path(best).parent == staging_root:
                self.state.best_model_checkpoint = best = str(run_dir / Path(best).name)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(str(run_dir), self.args.save_total_limit, best_model_checkpoint=best, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        folder = Path(resume_from_checkpoint)
        if not (folder / MANIFEST).is_file():
            raise CheckpointError(f"{str(folder)!r} is not an SDK checkpoint (no {MANIFEST}); cannot resume from it.")
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        load_trained(target, read_trained(folder), str(folder))

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Batches of similar length, shuffled from (seed, epoch) alone: a resumed run sees the same order."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed + epoch)


def _finite(value: Any) -> bool:
    """False when a floating tensor in ``value`` (tensors in lists, tuples, dicts, model outputs) holds NaN or inf."""
    return all(t.isfinite().all() for t in tree_leaves(value) if isinstance(t, torch.Tensor) and t.is_floating_point())
