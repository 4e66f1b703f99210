"""Packing: several conversations in one row of at most ``max_length`` tokens, each attending only to itself.

A packed row carries ``position_ids`` that restart at every example and no ``attention_mask``: transformers then
confines attention to each example (SDPA and eager: a block-diagonal causal mask; flash attention: its varlen path),
so an example's loss is the loss it has alone. Rows are filled best-fit-decreasing from exact token counts; an example
is never cut. :func:`check_packing` confirms on the LLM itself, before training, that it honours the restarts.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mmllm_sdk.data.examples import Conversation, MediaPart
from mmllm_sdk.data.formats import as_example
from mmllm_sdk.errors import DataError, SpecError
from mmllm_sdk.model.processor import IGNORE_INDEX

if TYPE_CHECKING:
    from mmllm_sdk.components.llm import LLMBackbone
    from mmllm_sdk.model.modeling import MMLLM

DEFAULT_ROW_LENGTH = 1024  # TRL's default max_length; data.max_length sets it (capped by the LLM's positions)


@dataclass(frozen=True)
class Pack:
    """The conversations of one packed row, in row order."""

    examples: tuple[Conversation, ...]

    @property
    def source(self) -> str | None:
        return self.examples[0].source

    def parts(self) -> Iterator[Any]:
        for example in self.examples:
            yield from example.parts()

    def with_media(self, change: Callable[[MediaPart], MediaPart]) -> Pack:
        return Pack(tuple(example.with_media(change) for example in self.examples))


@dataclass(frozen=True)
class Packing:
    """How a data set was packed: the packs (example indices per row), each row's tokens and the row length."""

    rows: list[list[int]]
    lengths: list[int]  # tokens of each row
    row_length: int

    @property
    def padding_share(self) -> float:
        """The share of the rows' positions left empty if every row were ``row_length`` long."""
        return 1 - sum(self.lengths) / (len(self.rows) * self.row_length) if self.rows else 0.0

    def summary(self, examples: int) -> str:
        return (
            f"packing: {examples} examples in {len(self.rows)} rows of at most {self.row_length} tokens "
            f"({sum(self.lengths) / max(len(self.rows), 1):.0f} tokens a row on average, {self.padding_share:.1%} empty)"
        )


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows whose lengths sum to at most ``capacity``: the longest first, each into
    the fullest row that still has room (best fit decreasing). Deterministic; indices ascend within a row."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (space left, row index), ascending
    for index in order:
        length = lengths[index]
        if length > capacity:
            raise ValueError(f"item {index} is {length} long, more than the capacity {capacity}")
        slot = bisect.bisect_left(room, (length, -1))  # the row with the least space that still fits it
        if slot == len(room):
            rows.append([index])
            bisect.insort(room, (capacity - length, len(rows) - 1))
        else:
            left, row = room.pop(slot)
            rows[row].append(index)
            bisect.insort(room, (left - length, row))
    return [sorted(row) for row in rows]


def row_length(model: MMLLM, max_length: int | None) -> int:
    """The length of a packed row: ``data.max_length``, else :data:`DEFAULT_ROW_LENGTH` within the LLM's positions."""
    if max_length is not None:
        return max_length
    positions = model.llm.max_positions
    return DEFAULT_ROW_LENGTH if positions is None else min(DEFAULT_ROW_LENGTH, positions)


def pack(model: MMLLM, examples: Sequence[Conversation], length: int, train_on: str, split: str) -> Packing:
    """Exact token counts of ``examples`` (text only: no media file is read), packed into rows of ``length``."""
    counts = []
    for index, example in enumerate(examples):
        count = len(model.processor.encode(example, index=index, train_on=train_on).input_ids)
        if count > length:
            raise DataError(
                f"{example.source or f'{split} example {index}'} takes {count} tokens (placeholders expanded), more "
                f"than a packed row's {length} (data.max_length); raise data.max_length or shorten the example."
            )
        counts.append(count)
    rows = best_fit_decreasing(counts, length)
    return Packing(rows, [sum(counts[i] for i in row) for row in rows], length)


@dataclass
class PackedCollator:
    """Packs -> a batch of rows: ``input_ids``, ``labels`` and ``position_ids`` restarting at every example (no
    ``attention_mask``), padded to the longest row; each modality's items in row order. The first label of each
    example is ``IGNORE_INDEX``, so no example learns to predict the next one's first token."""

    model: MMLLM
    max_length: int
    train_on: str = "assistant"

    def __call__(self, packs: Sequence[Pack]) -> dict[str, Any]:
        processor = self.model.processor
        rows, items = [], {modality: [] for modality in processor.inputs}
        for pack in packs:
            ids: list[int] = []
            labels: list[int] = []
            positions: list[int] = []
            for index, example in enumerate(pack.examples):
                encoded = processor.encode(as_example(example), index=index, train_on=self.train_on)
                ids += encoded.input_ids
                labels += [IGNORE_INDEX, *encoded.labels[1:]]
                positions += range(len(encoded.input_ids))
                for modality, parts in encoded.items.items():
                    items[modality] += parts
            rows.append((ids, labels, positions))
        longest = max(len(ids) for ids, _, _ in rows)
        shape = (len(rows), longest)
        batch: dict[str, Any] = {
            "input_ids": torch.full(shape, processor.tokenizer.pad_token_id, dtype=torch.long),
            "labels": torch.full(shape, IGNORE_INDEX, dtype=torch.long),
            # the padding after a row's last example is an example of its own, attended by nothing else
            "position_ids": torch.arange(longest).repeat(len(rows), 1),
        }
        for row, (ids, labels, positions) in enumerate(rows):
            end = len(ids)
            batch["input_ids"][row, :end] = torch.tensor(ids, dtype=torch.long)
            batch["labels"][row, :end] = torch.tensor(labels, dtype=torch.long)
            batch["position_ids"][row, :end] = torch.tensor(positions, dtype=torch.long)
            batch["position_ids"][row, end:] = torch.arange(longest - end)
        for modality, parts in items.items():
            if parts:
                batch[modality] = processor.modality_inputs(modality, parts)
        return batch


def check_packing(llm: LLMBackbone, recipe: str) -> None:
    """Refuse packing, with a :class:`SpecError`, where the LLM would let a packed example see the one before it:
    prompt-learning adapters (their own key/value cache) or an attention that ignores restarting ``position_ids``
    (checked by running two short sequences packed and alone)."""
    peft_config = getattr(llm.model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        raise SpecError(
            f"packing: recipe {recipe!r} trains {peft_config.peft_type.value.lower()} adapters, whose virtual tokens "
            "are a key/value cache every packed example would share; use peft method lora, or packing: false."
        )
    embeddings = llm.get_input_embeddings()
    vocabulary, device = embeddings.weight.shape[0], embeddings.weight.device
    first, second = torch.arange(3, 10, device=device) % vocabulary, torch.arange(11, 16, device=device) % vocabulary
    training = llm.training
    llm.eval()
    try:
        with torch.no_grad():
            alone = llm(inputs_embeds=embeddings(second)[None], use_cache=False)
            positions = torch.cat([torch.arange(7), torch.arange(5)]).to(device)[None]
            packed = llm(
                inputs_embeds=embeddings(torch.cat([first, second]))[None], position_ids=positions, use_cache=False
            )
    finally:
        llm.train(training)
    expected, found = alone.logits[0].float(), packed.logits[0, 7:].float()
    tolerance = (1e-4 if embeddings.weight.dtype == torch.float32 else 3e-2) * (1 + float(expected.abs().max()))
    if not torch.allclose(found, expected, rtol=0, atol=tolerance):
        implementation = getattr(llm.model.config, "_attn_implementation", None)
        raise SpecError(
            f"packing: the LLM ({type(llm.model).__name__}, attention {implementation!r}) lets a packed example "
            f"attend to the one before it (logits differ by {float((found - expected).abs().max()):.3g} from the "
            "example alone): it does not confine attention by restarting position_ids. Load it with "
            "attn_implementation sdpa, eager or flash_attention_2, or set packing: false."
        )
