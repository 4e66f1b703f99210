"""The ``align-output`` recipe: decoding-side alignment, as NExT-GPT does it.

For a caption of an output modality, the LLM reads the caption and then that modality's
k signal tokens; the output projector maps their last hidden states S_X to H_X, and the
loss is the mean squared distance between H_X and the generator's own text conditioning
of the caption (``generator.condition_targets``). It trains the output projectors and,
by default, the signal tokens' rows. When nothing upstream of the signal states trains
(the LLM, its adapters and the signal rows all frozen), each caption's signal states are
computed once and kept in an on-disk cache: later epochs do not run the LLM at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from mmllm_sdk.data.examples import Conversation, MediaPart, Message, OutputPart, TextPart
from mmllm_sdk.data.messages import ANSWER_ROLE
from mmllm_sdk.default_plugins.recipes.feature_cache import FeatureCache
from mmllm_sdk.errors import InputError
from mmllm_sdk.model.heads import EmbeddingHead
from mmllm_sdk.registry import get_registry
from mmllm_sdk.training.trainer import MMTrainer

if TYPE_CHECKING:
    from mmllm_sdk.model.modeling import MMLLM


def caption_pair(example: Any, outputs: Sequence[str]) -> tuple[str, str, Any]:
    """(output modality, caption, the item's source or None) of one caption example.

    Either a caption record as read for PT (a user turn holding an item of an output modality,
    the assistant turn its caption: ``{"image": "a.png", "text": "…"}``), or a conversation whose
    assistant turn holds an output part with a caption (``{"type": "image", "caption": "…"}``).
    ``example`` is a :class:`Conversation` (or a dict in the message format, parsed first).
    """
    from mmllm_sdk.data.formats import as_example

    example = as_example(example)
    messages = example.messages if isinstance(example, Conversation) else ()
    answers = [m for m in messages if m.role == ANSWER_ROLE]
    for part in (part for answer in answers for part in answer.parts):
        if isinstance(part, OutputPart) and part.modality in outputs and part.caption and part.caption.strip():
            return part.modality, part.caption.strip(), part.source
    for part in (part for message in messages if message.role == "user" for part in message.parts):
        if isinstance(part, MediaPart) and part.modality in outputs and answers and answers[-1].text():
            return part.modality, answers[-1].text(), part.source
    raise InputError(
        f"{example.source or 'an example'}: align-output needs a caption of an output modality "
        f'({", ".join(outputs)}): a caption record ({{"image": "a.png", "text": "a caption"}}) or an assistant part '
        '{"type": "image", "caption": "…"}; this example has neither.'
    )


def signal_state_identity(model: MMLLM, modality: str) -> str:
    """A digest of what the signal states of ``modality`` depend on: the LLM (spec, seed, reference), the
    trained tensors inside it (signal rows, adapters of earlier stages) and the signal tokens."""
    trained = {
        name: hashlib.sha256(tensor.detach().float().cpu().numpy().tobytes()).hexdigest()
        for name, tensor in sorted(model.llm.named_parameters())
        if "signal_rows" in name or f"llm.{name}" in model.carried_parameters
    }
    llm, tokens = model.spec.llm.model_dump(mode="json"), model.output_heads[modality].signal_tokens
    identity = [llm, model.spec.seed, model.llm.reference(), tokens, trained]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class AlignCollator:
    """Caption examples -> a batch in which the LLM reads each caption and then its modality's signal tokens."""

    model: MMLLM
    max_length: int | None

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        pairs = [caption_pair(example, list(self.model.output_projectors)) for example in examples]
        conversations = [
            Conversation(
                (Message("user", (TextPart(caption),)), Message(ANSWER_ROLE, (OutputPart(modality, caption),)))
            )
            for modality, caption, _ in pairs
        ]
        batch = self.model.processor(conversations, max_length=self.max_length)
        batch["align_modalities"] = [modality for modality, _, _ in pairs]
        batch["align_captions"] = [caption for _, caption, _ in pairs]
        batch["align_sources"] = [source for _, _, source in pairs]
        return batch


class AlignOutputTrainer(MMTrainer):
    """L2 between projected signal states and the generator's conditioning of the caption (plus ``lm_weight`` x LM)."""

    token_weighted_loss = False  # a mean over the batch's captions

    def __init__(
        self,
        *args: Any,
        lm_weight: float = 0.0,
        denoising_weight: float = 0.0,
        state_cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lm_weight = lm_weight
        self.denoising_weight = denoising_weight
        model: MMLLM = self.model
        if not any(isinstance(head, EmbeddingHead) for head in model.output_heads.values()):
            raise InputError(
                "align-output trains output projectors, and this model has none; add outputs.<modality> (signal "
                "tokens, an output projector and a generator) to the model spec."
            )
        # fixed signal states: nothing upstream of them trains (the LLM, its adapters, the signal rows)
        fixed = state_cache_dir is not None and not any(p.requires_grad for p in model.llm.parameters())
        self.state_cache = FeatureCache(state_cache_dir) if fixed else None
        self.state_fingerprints = {m: signal_state_identity(model, m) for m in model.output_heads}
        self.targets: dict[tuple[str, str], torch.Tensor] = {}  # (modality, caption) -> the generator's conditioning

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.through_wrapper(model, self.align_loss, inputs)
        return (loss, {"loss": loss}) if return_outputs else loss

    def align_loss(self, model: MMLLM, inputs: dict[str, Any]) -> torch.Tensor:
        """The L2 (plus the denoising and LM terms their weights ask for) of one batch, on the unwrapped model."""
        inputs = dict(inputs)
        modalities = inputs.pop("align_modalities")
        captions = inputs.pop("align_captions")
        sources = inputs.pop("align_sources")
        states = self.signal_states(model, inputs, modalities)  # modality -> (rows, (n, k, D))
        losses, count = [], 0
        for modality, (rows, signal) in states.items():
            predicted = model.project_signals(modality, signal)  # (n, num_tokens, dim)
            target = self.condition_targets(model, modality, [captions[r] for r in rows]).to(predicted)
            loss = F.mse_loss(predicted.float(), target.float(), reduction="mean")
            if self.denoising_weight:
                items = self.items(modality, [sources[r] for r in rows], [captions[r] for r in rows])
                loss = loss + self.denoising_weight * self.denoising(model, modality, predicted, items)
            losses.append(loss * len(rows))
            count += len(rows)
        loss = torch.stack(losses).sum() / count
        if self.lm_weight:
            loss = loss + self.lm_weight * type(model).forward(model, **inputs, supervised_only=True).loss
        return loss

    def signal_states(
        self, model: MMLLM, inputs: dict[str, Any], modalities: list[str]
    ) -> dict[str, tuple[list[int], torch.Tensor]]:
        """Per output modality: the batch rows of its captions and their signal states (n, k, D_llm)."""
        input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
        keys = [self._state_key(modality, ids, m) for modality, ids, m in zip(modalities, input_ids, mask, strict=True)]
        found: list[torch.Tensor | None] = [None] * len(modalities)
        if self.state_cache is not None:
            for row, (modality, key) in enumerate(zip(modalities, keys, strict=True)):
                shape = (len(model.output_heads[modality].signal_ids), model.llm.hidden_size)
                found[row] = self.state_cache.get(key, shape=shape)
        missing = [row for row, states in enumerate(found) if states is None]
        if missing:
            computed = model.signal_states(input_ids[missing].to(model.device), mask[missing].to(model.device))
            for modality, (runs, states) in computed.items():
                for (position, _), signal in zip(runs, states, strict=True):
                    row = missing[position]
                    if modalities[row] == modality and found[row] is None:  # the row's first run of its modality
                        found[row] = signal  # (k, D)
                        if self.state_cache is not None:
                            self.state_cache.put(keys[row], signal.detach().float().cpu())
        lost = [row for row, states in enumerate(found) if states is None]
        if lost:
            raise InputError(
                f"Batch row {lost[0]} has no complete run of the {modalities[lost[0]]} signal tokens; build "
                "align batches with AlignCollator."
            )
        grouped: dict[str, tuple[list[int], torch.Tensor]] = {}
        for modality in dict.fromkeys(modalities):
            rows = [row for row, m in enumerate(modalities) if m == modality]
            grouped[modality] = (rows, torch.stack([found[row].to(model.device) for row in rows]))
        return grouped

    def items(self, modality: str, sources: list[Any], captions: list[str]) -> list[Any]:
        """The items the captions describe, loaded through the modality (the denoising loss needs them)."""
        missing = [caption for caption, source in zip(captions, sources, strict=True) if source is None]
        if missing:
            raise InputError(
                f"align-output: denoising_weight needs the {modality} each caption describes, and {missing[0]!r} has "
                f'none; use caption records ({{"{modality}": "file", "text": "…"}}) or set denoising_weight to 0.'
            )
        spec = get_registry().modality(modality)
        return [spec.load(source) for source in sources]

    @staticmethod
    def denoising(model: MMLLM, modality: str, conditioning: torch.Tensor, items: list[Any]) -> torch.Tensor:
        try:
            return model.output_heads[modality].generator.denoising_loss(conditioning, items)
        except NotImplementedError as exc:
            raise InputError(
                f"align-output: the {modality} generator {model.spec.outputs[modality].generator.name!r} has no "
                "denoising loss; set denoising_weight to 0 (the L2 alignment alone), or use a generator that has one."
            ) from exc

    def condition_targets(self, model: MMLLM, modality: str, captions: list[str]) -> torch.Tensor:
        """The generator's conditioning of each caption (frozen: computed once per caption, kept in memory)."""
        todo = [c for c in dict.fromkeys(captions) if (modality, c) not in self.targets]
        if todo:
            with torch.no_grad():
                computed = model.output_heads[modality].generator.condition_targets(todo)  # (n, num_tokens, dim)
            for caption, target in zip(todo, computed, strict=True):
                self.targets[(modality, caption)] = target.detach().float().cpu()
        return torch.stack([self.targets[(modality, c)] for c in captions])

    def _state_key(self, modality: str, input_ids: torch.Tensor, mask: torch.Tensor) -> str:
        tokens = input_ids[mask.bool()].tolist()
        digest = hashlib.sha256(json.dumps([modality, tokens]).encode()).hexdigest()
        return f"{self.state_fingerprints[modality]}-{digest}"
