"""The transformers.Trainer behind every recipe: supervised-only LM loss, SDK checkpoints written atomically."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from mmllm_sdk.errors import CheckpointError, InputError
from mmllm_sdk.model.checkpoint import MANIFEST, load_trained, read_trained, write_checkpoint_files
from mmllm_sdk.model.processor import IGNORE_INDEX

STAGING = ".saving"  # checkpoints are written here, then renamed to checkpoint-N: a kill never leaves half of one


class MMTrainer(Trainer):
    """``transformers.Trainer`` for an MMLLM.

    The loss is the LM loss on supervised positions only (captions, assistant turns), the
    LM head running on those positions alone. ``checkpoint-N`` folders are SDK checkpoints
    (``mmllm.json`` + ``trainable.safetensors``) plus the Trainer's optimizer, scheduler,
    RNG and data position, staged in a hidden folder and renamed into place whole.
    """

    # The LM loss is a mean over the supervised tokens of the whole optimizer step: all its
    # gradient-accumulation micro-batches on all processes (the Trainer counts them, as for
    # transformers' own causal LMs). Recipes with a loss per example or pair (DPO, align-output)
    # set this to False and return a per-batch mean, which the Trainer divides by the accumulation steps.
    token_weighted_loss = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = self.token_weighted_loss  # the Trainer then counts num_items_in_batch
        self._staging_root: Path | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, supervised_only=True, num_items_in_batch=num_items_in_batch)
        loss = outputs.loss
        if model.training and not loss.requires_grad:
            unwrapped = self.accelerator.unwrap_model(model)
            trained = sorted({name.split(".")[0] for name, p in unwrapped.named_parameters() if p.requires_grad})
            raise InputError(
                f"This batch trains nothing: the loss does not depend on any trained tensor ({', '.join(trained) or 'none'})."
                " The examples may not use what trains (an input projector, with no file of its modality in the data);"
                " add such inputs, or train the LLM's adapters (peft: {method: lora, r: 8})."
            )
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # the count covers every process and DDP averages their gradients: undo the average
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def through_wrapper(self, model: torch.nn.Module, loss_of: Any, *args: Any) -> Any:
        """``loss_of(unwrapped_model, *args)``, run as the forward pass of ``model`` as the Trainer wrapped it.

        A recipe whose loss is not ``MMLLM.forward`` (align-output) reaches into the model's parts;
        under DDP (torchrun) or FSDP only a call through the wrapper's forward synchronises the
        gradients across processes, so the loss is computed there. Without a wrapper it is a call.
        ``loss_of`` must not call the model itself (its ``forward`` is ``loss_of`` meanwhile);
        it calls ``type(model).forward(model, …)`` for the model's own forward.
        """
        unwrapped = self.accelerator.unwrap_model(model)
        if unwrapped is model:
            return loss_of(unwrapped, *args)
        unwrapped.forward = functools.partial(loss_of, unwrapped)  # nn.Module.__call__ calls self.forward
        try:
            return model(*args)
        finally:
            del unwrapped.forward

    # batches --------------------------------------------------------------------------------

    # Datasets of examples carry a length estimate per example (``lengths``): the Trainer's own
    # length grouping would tokenize every example to measure it.

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

    # checkpoints ----------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        folder = Path(output_dir or self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        write_checkpoint_files(self.accelerator.unwrap_model(self.model), folder, values=state_dict)

    def _get_output_dir(self, trial) -> str:
        if self._staging_root is not None:
            return str(self._staging_root)
        return super()._get_output_dir(trial)

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
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging_root / name, final)
            best = self.state.best_model_checkpoint
            if best is not None and Path(best).parent == staging_root:
                self.state.best_model_checkpoint = str(run_dir / Path(best).name)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
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


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of the log-probabilities of each row's supervised target tokens: (B, K, V), (B, K) -> (B,)."""
    logprobs = F.log_softmax(logits.float(), dim=-1)  # (B, K, V)
    supervised = targets != IGNORE_INDEX  # (B, K)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, K)
    return (picked * supervised).sum(dim=-1)


class DPOTrainer(MMTrainer):
    """Direct Preference Optimization (Rafailov et al., 2023).

    ``loss = -log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])``.

    The reference π_ref is the model as DPO starts (the SFT model, as in the paper): the
    starting values of the trained tensors (the adapters, and a projector if it trains) are
    copied once, megabytes rather than a second LLM, and put in place, in eval mode, for the
    reference pass of each step. So a DPO stage that continues from an SFT checkpoint with
    trained adapters stays close to that checkpoint, not to the model without its adapters.
    """

    token_weighted_loss = False  # a mean over the batch's pairs

    def __init__(self, *args: Any, beta: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.beta = beta
        self._metrics: dict[str, list[float]] = {}
        self._reference = {  # name -> starting value, of every tensor this run trains
            name: param.detach().clone() for name, param in self.model.named_parameters() if param.requires_grad
        }

    @contextlib.contextmanager
    def reference_policy(self, model: torch.nn.Module) -> Iterator[None]:
        """Within this block ``model`` computes π_ref: the trained tensors hold their starting values, eval mode."""
        params = dict(model.named_parameters())
        current = {name: params[name].detach().clone() for name in self._reference}
        training = model.training
        with torch.no_grad():
            for name, start in self._reference.items():
                params[name].copy_(start)
        model.eval()
        try:
            yield
        finally:
            model.train(training)
            with torch.no_grad():
                for name, value in current.items():
                    params[name].copy_(value)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad(), self.reference_policy(unwrapped):  # first: the policy pass's graph needs its weights
            reference_out = unwrapped(**inputs, supervised_only=True)
            reference = sequence_logprobs(reference_out.logits, reference_out.targets)  # (2B,)
        outputs = model(**inputs, supervised_only=True)
        policy = sequence_logprobs(outputs.logits, outputs.targets)  # (2B,)
        pairs = policy.shape[0] // 2
        chosen_reward = self.beta * (policy[:pairs] - reference[:pairs]).detach()
        rejected_reward = self.beta * (policy[pairs:] - reference[pairs:]).detach()
        margin = (policy[:pairs] - reference[:pairs]) - (policy[pairs:] - reference[pairs:])
        loss = -F.logsigmoid(self.beta * margin).mean()
        for key, value in (
            ("rewards/chosen", chosen_reward.mean()),
            ("rewards/rejected", rejected_reward.mean()),
            ("rewards/margin", (chosen_reward - rejected_reward).mean()),
            ("rewards/accuracy", (chosen_reward > rejected_reward).float().mean()),
        ):
            self._metrics.setdefault(key, []).append(value.item())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for key, values in self._metrics.items():
            logs[key] = sum(values) / len(values)
        self._metrics.clear()
        super().log(logs, *args, **kwargs)
