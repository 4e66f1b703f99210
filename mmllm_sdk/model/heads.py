"""Output heads: one per output modality, the way from the LLM's signal tokens to a generated item.

An :class:`EmbeddingHead` projects the signal states S_X through its output projector to H_X, its generator's
conditioning; a :class:`TextHead` hands its generator the text the LLM wrote between its two signal tokens. Heads are
plain objects over the model's modules, so parameter names, and checkpoints, do not depend on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mmllm_sdk.components.modality import ModalitySpec
from mmllm_sdk.components.output_projector import ConditionSpec, OutputProjector
from mmllm_sdk.data.messages import TEXT_SLOT
from mmllm_sdk.dtypes import to_module
from mmllm_sdk.errors import InputError
from mmllm_sdk.files import atomic_write

TEXT_SIGNAL_TOKENS = 2  # a text-conditioned output: <x_0> opens the text, <x_1> closes it


class OutputHead:
    """One output modality of a model: its signal tokens, its generator and (conditioned on embeddings) its projector."""

    def __init__(
        self, spec: ModalitySpec, signal_tokens: list[str], signal_ids: list[int], generator: Any, projector: Any = None
    ) -> None:
        self.spec, self.modality = spec, spec.name
        self.signal_tokens = list(signal_tokens)  # <img_0> … <img_{k-1}>
        self.signal_ids = list(signal_ids)  # their token ids, in order
        self.generator = generator  # a ModalityGenerator, or a TextConditionedGenerator for a TextHead
        self.projector: OutputProjector | None = projector  # an EmbeddingHead's output projector; None for text

    @property
    def template(self) -> str:
        """How an output part is written in an assistant turn (what the LLM learns to emit)."""
        return "".join(self.signal_tokens)

    def save(self, item: Any, stem: Path) -> Path:
        """Write one generated item at ``stem`` plus the modality's suffix, whole or not at all."""
        if self.spec.saver is None:
            raise InputError(
                f"The {self.modality} modality has no saver, so its generated items cannot be written to files; "
                "give its ModalitySpec saver=(suffix, save), or use Response.outputs without output_dir."
            )
        suffix, save = self.spec.saver
        return atomic_write(stem.with_suffix(suffix), lambda path: save(item, path))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.modality!r}, k={len(self.signal_ids)}, {type(self.generator).__name__})"


class EmbeddingHead(OutputHead):
    """A generator conditioned on embeddings: S_X (n, k, D_llm) -> output projector -> H_X -> generator."""

    @property
    def condition_spec(self) -> ConditionSpec:
        """The conditioning the generator takes (and the output projector produces)."""
        return self.generator.condition_spec

    def project(self, signal_states: torch.Tensor) -> torch.Tensor:
        """H_X of signal states (n, k, D_llm): (n, num_tokens, dim), in the projector's device and dtype."""
        return self.projector(to_module(signal_states, self.projector))

    def generate(self, signal_states: torch.Tensor, **generator_kwargs: Any) -> list[Any]:
        """Generated items from the signal states of n complete runs (n, k, D_llm)."""
        return self.generator.generate(self.project(signal_states), **generator_kwargs)

    def find_runs(self, token_ids: Sequence[int]) -> list[int]:
        """Where complete runs of this head's k signal tokens (in order) start in ``token_ids``."""
        k, ids = len(self.signal_ids), list(token_ids)
        return [i for i in range(len(ids) - k + 1) if ids[i : i + k] == self.signal_ids]


class TextHead(OutputHead):
    """A generator conditioned on text: the LLM writes it between the opening and the closing signal token."""

    condition_spec = None

    @property
    def template(self) -> str:
        return f"{self.signal_tokens[0]}{TEXT_SLOT}{self.signal_tokens[1]}"

    def texts(self, token_ids: Sequence[int], decode: Callable[[list[int]], str]) -> list[str]:
        """The texts of one generated row: what stands between each opening token and its closing one (or the end)."""
        opening, closing = self.signal_ids
        row, texts, start = list(token_ids), [], 0
        while opening in row[start:]:
            begin = row.index(opening, start) + 1
            end = row.index(closing, begin) if closing in row[begin:] else len(row)
            texts.append(decode(row[begin:end]).strip())
            start = end
        return texts

    def generate(self, texts: list[str], **generator_kwargs: Any) -> list[Any]:
        return self.generator.generate_from_text(texts, **generator_kwargs)
