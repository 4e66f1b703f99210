"""Packing: several conversations in one row of at most ``max_length`` tokens, each attending only to itself.

A packed row carries ``position_ids`` that restart at every example, no ``attention_mask``, and each example's bounds
as flash attention's variable-length arguments (``cu_seq_lens_q`` …). transformers then confines attention to each
example: flash attention runs its varlen kernel, eager attention a block-diagonal causal mask, and an LLM on SDPA is
switched to :func:`segment_attention`, SDPA's causal kernel run on each example alone, which skips the masked blocks
that a block-diagonal mask would still compute. An example's loss is the loss it has alone. Rows are filled
best-fit-decreasing from exact token counts; an example is never cut. :func:`prepare_packing` confirms on the LLM
itself, before training, that it honours the restarts.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mmllm_sdk.data.examples import Conversation, MediaPart
from mmllm_sdk.data.formats import as_example
from mmllm_sdk.errors import DataError, InputError, SpecError
from mmllm_sdk.model.processor import IGNORE_INDEX

if TYPE_CHECKING:
    from mmllm_sdk.components.llm import LLMBackbone
    from mmllm_sdk.model.modeling import MMLLM

DEFAULT_ROW_LENGTH = 1024  # TRL's default max_length; data.max_length sets it (capped by the LLM's positions)
SEGMENTED = "mmllm_sdpa_segments"  # the attention implementation an LLM on SDPA trains packed rows with


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
        rows = f"{len(self.rows)} row{'s' * (len(self.rows) != 1)}"
        return (
            f"packing: {examples} examples in {rows} of at most {self.row_length} tokens "
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
        if longest > self.max_length:  # packs made by pack() fit; a pack from elsewhere may not
            raise InputError(f"A pack takes {longest} tokens, more than a packed row's {self.max_length}.")
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
        batch.update(varlen_arguments(batch["position_ids"]))
        for modality, parts in items.items():
            if parts:
                batch[modality] = processor.modality_inputs(modality, parts)
        return batch


def varlen_arguments(position_ids: torch.Tensor) -> dict[str, Any]:
    """Flash attention's variable-length arguments for packed rows: where each example (and each row's padding)
    starts in the flattened batch, where the last ends, and the longest."""
    flat = position_ids.flatten()
    starts = (flat == 0).nonzero().flatten()
    bounds = torch.cat([starts, torch.tensor([flat.numel()])]).to(torch.int32)
    longest = int((bounds[1:] - bounds[:-1]).max())
    return {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}


def segment_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, run on each packed example alone (causal, no mask) when the call carries
    ``cu_seq_lens_q`` for rows of queries and keys alike; any other call (generation, a sliding window, a position
    bias) is transformers' SDPA as it is. Returns (batch, positions, heads, head size), as SDPA does."""
    bounds = kwargs.pop("cu_seq_lens_q", None)
    kwargs.pop("cu_seq_lens_k", None)
    rows, _, length, _ = query.shape
    whole = (
        bounds is None
        or key.shape[2] != length
        or getattr(module, "sliding_window", None) is not None
        or kwargs.get("position_bias") is not None
        or not getattr(module, "is_causal", True)
    )
    if whole:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    edges = bounds.tolist()
    sizes: list[list[int]] = [[] for _ in range(rows)]  # each row's examples' lengths (its padding: one more)
    for start, end in itertools.pairwise(edges):
        sizes[start // length].append(end - start)
    # split, not sliced: a split's backward joins the gradients once, where each slice's would fill a whole zero tensor
    rows_out = []
    for row, q, k, v in zip(sizes, query.split(1), key.split(1), value.split(1), strict=True):
        parts = zip(q.split(row, dim=2), k.split(row, dim=2), v.split(row, dim=2), strict=True)
        outs = [sdpa_attention_forward(module, *qkv, None, is_causal=True, **kwargs)[0] for qkv in parts]
        rows_out.append(torch.cat(outs, dim=1))
    return torch.cat(rows_out), None


AttentionInterface.register(SEGMENTED, segment_attention)
AttentionMaskInterface.register(SEGMENTED, sdpa_mask)  # masks as SDPA's, for every call that is not packed


def prepare_packing(llm: LLMBackbone, recipe: str) -> None:
    """Make the LLM train packed rows: on SDPA, switch it to :func:`segment_attention` (its other calls unchanged).
    Refuse packing, with a :class:`SpecError`, where the LLM would let a packed example see the one before it:
    prompt-learning adapters (their own key/value cache) or an attention that ignores restarting ``position_ids``
    (checked by running two short sequences packed, as the collator packs them, and alone)."""
    peft_config = getattr(llm.model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        raise SpecError(
            f"packing: recipe {recipe!r} trains {peft_config.peft_type.value.lower()} adapters, whose virtual tokens "
            "are a key/value cache every packed example would share; use peft method lora, or packing: false."
        )
    base = llm.model.get_base_model() if hasattr(llm.model, "get_base_model") else llm.model
    if base.config._attn_implementation == "sdpa":
        base.set_attn_implementation(SEGMENTED)
    embeddings = llm.get_input_embeddings()
    vocabulary, device = embeddings.weight.shape[0], embeddings.weight.device
    first, second = torch.arange(3, 10, device=device) % vocabulary, torch.arange(11, 16, device=device) % vocabulary
    training = llm.training
    llm.eval()
    try:
        with torch.no_grad():
            alone = llm(inputs_embeds=embeddings(second)[None], use_cache=False)
            positions = torch.cat([torch.arange(7), torch.arange(5)])[None]
            packed = llm(
                inputs_embeds=embeddings(torch.cat([first, second]))[None],
                position_ids=positions.to(device),
                use_cache=False,
                **{
                    k: v.to(device) if isinstance(v, torch.Tensor) else v
                    for k, v in varlen_arguments(positions).items()
                },
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
            "example alone): its attention neither takes variable-length rows nor confines itself by restarting "
            "position_ids. Set packing: false, or use an LLM on SDPA or flash attention."
        )
