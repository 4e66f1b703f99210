"""Generation: answering conversations in a batch and, for any-to-any models, generating the outputs they call for.

The LLM decides whether to produce a modality by emitting its first signal token; for an embedding-conditioned output
the other k - 1 are then forced (:class:`SignalForcing`) and the states of each complete run go through the head's
output projector to the generator. A text-conditioned output's generator takes the text between its two signal tokens.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import LogitsProcessor, LogitsProcessorList

from mmllm_sdk.errors import InputError
from mmllm_sdk.model.heads import EmbeddingHead, TextHead

if TYPE_CHECKING:
    from mmllm_sdk.model.modeling import MMLLM


@dataclass
class Response:
    """What :meth:`MMLLM.generate` returns: the text and, for any-to-any models, generated items per modality."""

    text: str
    outputs: dict[str, list[Any]] = field(default_factory=dict)  # modality -> generated items (PIL images, AudioClips)
    token_ids: list[int] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)  # modality -> where the items were saved (output_dir)
    prompt_tokens: int = 0  # the prompt's length in tokens, placeholders expanded (what a server reports as usage)


@torch.no_grad()
def generate_batch(
    model: MMLLM,
    conversations: list[list[dict[str, Any]]],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    generator_kwargs: dict[str, Any] | None = None,
    text_only: bool = False,
    **generation_kwargs: Any,
) -> list[Response]:
    """Answer conversations in one left-padded batch; greedy answers equal those of one conversation at a time.

    Keyword arguments go to the LLM's ``generate``; ``generator_kwargs`` go to every generator, or per modality as
    ``{"image": {...}}``. Generated items are in ``Response.outputs``, and saved under ``output_dir`` when given;
    ``text_only`` runs no generator (the answers' signal tokens stay in their ``token_ids``).
    """
    if not conversations:
        return []
    batch = model.processor(conversations, add_generation_prompt=True)
    modality_inputs = {k: batch[k] for k in model.encoders if k in batch}
    input_ids, attention_mask = batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)
    inputs_embeds = model.embed_inputs(input_ids, modality_inputs)
    forced = {m: head.signal_ids for m, head in model.output_heads.items() if isinstance(head, EmbeddingHead)}
    if forced:
        processors = generation_kwargs.pop("logits_processor", None) or LogitsProcessorList()
        processors.append(SignalForcing(forced, model.llm.get_input_embeddings().weight.shape[0]))
        generation_kwargs["logits_processor"] = processors
    if model.placeholder_ids:  # an input's placeholder is never an answer's token (fed back, it would want an item)
        suppressed = list(generation_kwargs.get("suppress_tokens") or ())
        generation_kwargs["suppress_tokens"] = suppressed + list(model.placeholder_ids.values())
    budget, room = generation_kwargs.get("max_new_tokens"), model.llm.max_positions
    if isinstance(budget, int) and room is not None and input_ids.shape[1] + budget > room:
        raise InputError(
            f"The prompt takes {input_ids.shape[1]:,} positions and max_new_tokens asks for {budget:,} more, beyond "
            f"the LLM's {room:,}; ask for at most {max(room - input_ids.shape[1], 0):,} new tokens."
        )
    try:  # (B, T_new), right-padded with pad ids after a row's end-of-turn token
        new_tokens = model.llm.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generation_kwargs)
    except ValueError as exc:  # transformers' checks of the options: an unknown one, max_new_tokens below 1 …
        raise InputError(f"generate(): {exc}") from exc
    ends, rows = model.llm.end_token_ids(), []
    for row in new_tokens.tolist():  # each row up to and including its first end token (the rest is batch padding)
        end = next((i + 1 for i, token_id in enumerate(row) if token_id in ends), len(row))
        rows.append(row[:end])
    prompts = attention_mask.sum(dim=1).tolist()
    decode = model.processor.decode
    responses = [Response(decode(ids), token_ids=ids, prompt_tokens=n) for ids, n in zip(rows, prompts, strict=True)]
    if model.output_heads and not text_only:
        _generate_outputs(model, input_ids, attention_mask, modality_inputs, rows, responses, generator_kwargs or {})
        if output_dir is not None:
            for index, response in enumerate(responses):
                response.files = _save(model, response.outputs, Path(output_dir), f"{index}-" if index else "")
    return responses


def _generate_outputs(
    model: MMLLM,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    modality_inputs: dict[str, Any],
    rows: list[list[int]],
    responses: list[Response],
    generator_kwargs: dict[str, Any],
) -> None:
    """Each head's items from the answers: texts between a text head's tokens, states of an embedding head's runs."""
    conditions: dict[str, tuple[list[int], Any]] = {}  # modality -> (each item's row, what the items are made from)
    for modality, head in model.output_heads.items():
        if isinstance(head, TextHead):
            found = [(i, text) for i, row in enumerate(rows) for text in head.texts(row, model.processor.decode)]
            if found:
                conditions[modality] = ([i for i, _ in found], [text for _, text in found])
    pad = model.llm.tokenizer.pad_token_id
    new_ids = pad_sequence([torch.tensor(row, dtype=torch.long) for row in rows], batch_first=True, padding_value=pad)
    new_mask = pad_sequence([torch.ones(len(row), dtype=torch.long) for row in rows], batch_first=True)
    full_ids = torch.cat([prompt_ids, new_ids.to(model.device)], dim=1)  # (B, T_prompt + T_new)
    full_mask = torch.cat([prompt_mask, new_mask.to(model.device)], dim=1)
    offset = prompt_ids.shape[1]
    for modality, (runs, states) in model.signal_states(full_ids, full_mask, modality_inputs).items():
        answered = [i for i, (_, start) in enumerate(runs) if start >= offset]  # runs in the answer, not the prompt
        if answered:
            keep = torch.tensor(answered, device=states.device)
            conditions[modality] = ([runs[i][0] for i in answered], states[keep])
    for modality, (indices, condition) in conditions.items():
        head = model.output_heads[modality]
        items = head.generate(condition, **generator_kwargs_for(model, modality, generator_kwargs))
        for index, item in zip(indices, items, strict=True):
            responses[index].outputs.setdefault(modality, []).append(item)


def _save(model: MMLLM, outputs: dict[str, list[Any]], folder: Path, prefix: str) -> dict[str, list[str]]:
    """Each generated item written by its modality's saver as ``folder/{prefix}{modality}-{i}.png`` (or ``.wav`` …)."""
    files: dict[str, list[str]] = {}
    for modality, items in outputs.items():
        for i, item in enumerate(items):
            path = model.output_heads[modality].save(item, folder / f"{prefix}{modality}-{i}")
            files.setdefault(modality, []).append(str(path))
    return files


def generator_kwargs_for(model: MMLLM, modality: str, generator_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``{"image": {...}, "audio": {...}}`` gives each generator its own; other keys go to every generator."""
    if generator_kwargs and set(generator_kwargs) <= set(model.output_heads):
        return dict(generator_kwargs.get(modality, {}))
    return dict(generator_kwargs)


class SignalForcing(LogitsProcessor):
    """Once the LLM emits the first signal token of a modality, the other k - 1 follow in order: the LLM decides
    whether to produce a modality, the rest is forced (a signal token other than the first is never sampled)."""

    def __init__(self, signal_ids: dict[str, list[int]], vocab_size: int) -> None:
        self.next_id = torch.full((vocab_size,), -1, dtype=torch.long)  # token id -> the signal token forced after it
        self.followers = torch.tensor([i for ids in signal_ids.values() for i in ids[1:]], dtype=torch.long)
        for ids in signal_ids.values():
            for current, following in itertools.pairwise(ids):
                self.next_id[current] = following

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        if len(self.followers):
            scores[:, self.followers.to(scores.device)] = float("-inf")
        if input_ids.shape[1] == 0:
            return scores
        forced = self.next_id.to(input_ids.device)[input_ids[:, -1]]  # (B,)
        for row in (forced >= 0).nonzero().flatten().tolist():
            scores[row] = float("-inf")
            scores[row, forced[row]] = 0.0
        return scores
