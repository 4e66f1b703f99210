"""SignalVocabulary: the signal tokens (<img_0> … <img_{k-1}>) an LLM emits to produce a modality."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SignalVocabulary:
    """``num_tokens`` signal tokens named ``<{prefix}_{i}>`` for one output modality.

    The runtime adds them to the tokenizer and checks that no two vocabularies (and no
    existing token) collide; their last hidden states are S_X.
    """

    modality: str
    num_tokens: int
    prefix: str

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"A signal vocabulary needs at least one token; got num_tokens={self.num_tokens}.")

    @property
    def tokens(self) -> list[str]:
        return [f"<{self.prefix}_{i}>" for i in range(self.num_tokens)]
