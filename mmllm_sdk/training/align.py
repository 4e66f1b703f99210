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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from mmllm_sdk.data.feature_cache import FeatureCache
from mmllm_sdk.errors import InputError
from mmllm_sdk.model.modeling import find_signal_runs
from mmllm_sdk.training.trainer import MMTrainer

if TYPE_CHECKING:
    from mmllm_sdk.model.modeling import MMLLM

CAPTION_KEYS = ("caption", "text")  # where an output part of an assistant turn says what it shows


def caption_pair(example: Mapping[str, Any], outputs: Sequence[str]) -> tuple[str, str, Any]:
    """(output modality, caption, the item's source or None) of one caption example.

    Either a caption record as read for PT (a user turn holding an item of an output modality,
    the assistant turn its caption: ``{"image": "a.png", "text": "…"}``), or a conversation whose
    assistant turn holds an output part with a ``caption`` (``{"type": "image", "caption": "…"}``).
    """
    messages = example.get("messages", [])
    answers = [m for m in messages if m.get("role") == "assistant"]
    for answer in answers:
        for part in _parts(answer.get("content")):
            if part.get("type") in outputs:
                caption = next(
                    (part[k] for k in CAPTION_KEYS if isinstance(part.get(k), str) and part[k].strip()), None
                )
                if caption is not None:
                    return part["type"], caption.strip(), part.get("path")
    for message in messages:
        if message.get("role") != "user":
            continue
        for part in _parts(message.get("content")):
            if part.get("type") in outputs and answers:
                caption = _text(answers[-1].get("content"))
                if caption:
                    return part["type"], caption, part.get("path")
    source = example.get("source", "an example")
    raise InputError(
        f"{source}: align-output needs a caption of an output modality ({', '.join(outputs)}): a caption record "
        '({"image": "a.png", "text": "a caption"}) or an assistant part {"type": "image", "caption": "…"}; this '
        "example has neither."
    )


def _parts(content: Any) -> list[Mapping[str, Any]]:
    return [part for part in content if isinstance(part, Mapping)] if isinstance(content, list) else []


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content.strip()
    return " ".join(str(p.get("text", "")) for p in _parts(content) if p.get("type") == "text").strip()


@dataclass
class AlignCollator:
    """Caption examples -> a batch in which the LLM reads each caption and then its modality's signal tokens."""

    model: MMLLM
    max_length: int | None

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        pairs = [caption_pair(example, list(self.model.output_projectors)) for example in examples]
        conversations = [
            [
                {"role": "user", "content": caption},
                {"role": "assistant", "content": [{"type": modality, "caption": caption}]},
            ]
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
        if not model.output_projectors:
            raise InputError(
                "align-output trains output projectors, and this model has none; add outputs.<modality> (signal "
                "tokens, an output projector and a generator) to the model spec."
            )
        upstream_trains = any(p.requires_grad for p in model.llm.parameters())
        self.state_cache = None if upstream_trains or state_cache_dir is None else FeatureCache(state_cache_dir)
        self.state_fingerprints = {m: signal_state_fingerprint(model, m) for m in model.signal_ids}
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
            projector = model.output_projectors[modality]
            weight = next(projector.parameters())
            predicted = projector(signal.to(weight.device, weight.dtype))  # (n, num_tokens, dim)
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
                shape = (len(model.signal_ids[modality]), model.llm.hidden_size)
                found[row] = self.state_cache.get(key, shape=shape)
        missing = [row for row, states in enumerate(found) if states is None]
        if missing:
            ids, attention = input_ids[missing].to(model.device), mask[missing].to(model.device)
            hidden = model.signal_states(ids, model.embed_inputs(ids, {}), attention)  # (n, T, D)
            for position, row in enumerate(missing):
                signal = signal_positions(input_ids[row], model.signal_ids[modalities[row]])
                found[row] = hidden[position, signal]  # (k, D)
                if self.state_cache is not None:
                    self.state_cache.put(keys[row], found[row].detach().float().cpu())
        grouped: dict[str, tuple[list[int], torch.Tensor]] = {}
        for modality in dict.fromkeys(modalities):
            rows = [row for row, m in enumerate(modalities) if m == modality]
            grouped[modality] = (rows, torch.stack([found[row].to(model.device) for row in rows]))
        return grouped

    def items(self, modality: str, sources: list[Any], captions: list[str]) -> list[Any]:
        """The items the captions describe, loaded through the modality (the denoising loss needs them)."""
        from mmllm_sdk.registry import get_registry

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
        generator = model.generators[modality]
        try:
            return generator.denoising_loss(conditioning, items)
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
                computed = model.generators[modality].condition_targets(todo)  # (n, num_tokens, dim)
            for caption, target in zip(todo, computed, strict=True):
                self.targets[(modality, caption)] = target.detach().float().cpu()
        return torch.stack([self.targets[(modality, c)] for c in captions])

    def _state_key(self, modality: str, input_ids: torch.Tensor, mask: torch.Tensor) -> str:
        tokens = input_ids[mask.bool()].tolist()
        digest = hashlib.sha256(json.dumps([modality, tokens]).encode()).hexdigest()
        return f"{self.state_fingerprints[modality]}-{digest}"


def signal_positions(input_ids: torch.Tensor, signal_ids: list[int]) -> torch.Tensor:
    """The k positions of the first complete run of ``signal_ids`` in one row of ``input_ids``."""
    k = len(signal_ids)
    starts = find_signal_runs(input_ids.tolist(), signal_ids)
    if starts:
        return torch.arange(starts[0], starts[0] + k)
    raise InputError(
        f"A batch row has no complete run of the {k} signal tokens; build align batches with AlignCollator."
    )


def signal_state_fingerprint(model: MMLLM, modality: str) -> str:
    """What the signal states of ``modality`` depend on: the LLM (spec, seed, reference), the trained tensors
    inside it (signal rows, adapters of earlier stages) and the signal tokens."""
    inside = {
        name: hashlib.sha256(tensor.detach().float().cpu().numpy().tobytes()).hexdigest()
        for name, tensor in sorted(model.llm.named_parameters())
        if "signal_rows" in name or f"llm.{name}" in model.carried_parameters
    }
    identity = {
        "llm": model.spec.llm.model_dump(mode="json"),
        "seed": model.spec.seed,
        "reference": model.llm.reference(),
        "signal_tokens": model.signal_tokens[modality],
        "trained": inside,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
