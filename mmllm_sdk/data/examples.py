"""Typed examples: what chat messages and every data file's records are parsed into, once (``messages.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

FEATURES_KEY = "encoder_features"  # batch[modality][FEATURES_KEY]: cached F_X (items, N, D) in place of encoder inputs


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class MediaPart:
    """An input item: its source (a path, a URL or an object) and, from a feature cache, its encoder's features."""

    modality: str
    source: Any
    features: Any = field(default=None, compare=False, repr=False)  # a (N, D) tensor, or None


@dataclass(frozen=True)
class OutputPart:
    """An item the assistant generates: its caption (or the text it is made from) and, if given, the item itself."""

    modality: str
    caption: str | None = None
    source: Any = None


Part = TextPart | MediaPart | OutputPart


@dataclass(frozen=True)
class Message:
    role: str
    parts: tuple[Part, ...]

    def text(self) -> str:
        """The message's text parts, joined by spaces and stripped."""
        return " ".join(part.text for part in self.parts if isinstance(part, TextPart)).strip()


def _with_media(messages: tuple[Message, ...], change: Callable[[MediaPart], MediaPart]) -> tuple[Message, ...]:
    return tuple(
        Message(m.role, tuple(change(p) if isinstance(p, MediaPart) else p for p in m.parts)) for m in messages
    )


@dataclass(frozen=True)
class Conversation:
    """Messages in order (labels go on the assistant turns), and where the example was read from."""

    messages: tuple[Message, ...]
    source: str = ""

    def parts(self) -> Iterator[Part]:
        return (part for message in self.messages for part in message.parts)

    def with_media(self, change: Callable[[MediaPart], MediaPart]) -> Conversation:
        """A copy with each input item replaced by ``change(item)`` (e.g. one that carries cached features)."""
        return replace(self, messages=_with_media(self.messages, change))


@dataclass(frozen=True)
class PreferencePair:
    """A prompt and two answers to it, the first preferred (DPO)."""

    prompt: tuple[Message, ...]
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]
    source: str = ""

    def parts(self) -> Iterator[Part]:
        return (part for messages in (self.prompt, self.chosen, self.rejected) for m in messages for part in m.parts)

    def conversations(self) -> tuple[Conversation, Conversation]:
        """The prompt followed by the chosen answer, and by the rejected one."""
        chosen, rejected = self.prompt + self.chosen, self.prompt + self.rejected
        return Conversation(chosen, self.source), Conversation(rejected, self.source)

    def with_media(self, change: Callable[[MediaPart], MediaPart]) -> PreferencePair:
        """A copy with each input item (of the prompt) replaced by ``change(item)``."""
        return replace(self, prompt=_with_media(self.prompt, change))


@dataclass(frozen=True)
class LabelledAnswer:
    """A prompt and one answer to it, labelled desirable or not (KTO's unpaired data)."""

    prompt: tuple[Message, ...]
    completion: tuple[Message, ...]
    desirable: bool
    source: str = ""

    def parts(self) -> Iterator[Part]:
        return (part for messages in (self.prompt, self.completion) for m in messages for part in m.parts)

    def conversations(self) -> tuple[Conversation]:
        """The prompt followed by the answer."""
        return (Conversation(self.prompt + self.completion, self.source),)

    def with_media(self, change: Callable[[MediaPart], MediaPart]) -> LabelledAnswer:
        """A copy with each input item (of the prompt) replaced by ``change(item)``."""
        return replace(self, prompt=_with_media(self.prompt, change))


Example = Conversation | PreferencePair | LabelledAnswer
