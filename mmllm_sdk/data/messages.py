"""Conversation formats: Hugging Face chat messages with content parts, and LLaVA records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmllm_sdk.errors import InputError

LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
TEXT_SLOT = "{text}"  # where a text-conditioned output's signal template takes the part's text
SOURCE_KEYS = ("path", "url")  # besides the modality's own key: {"type": "image", "image": ...}


@dataclass
class ModalityItem:
    """One non-text input: its modality and where it comes from (a path or an in-memory object)."""

    modality: str
    source: Any


@dataclass
class Conversation:
    """Messages whose content is text with placeholders, and the modality items in text order."""

    messages: list[dict[str, str]]
    items: list[ModalityItem] = field(default_factory=list)
    outputs: list[ModalityItem] = field(default_factory=list)  # output parts of assistant turns, as signal tokens


def normalize_conversation(
    conversation: Any, placeholders: Mapping[str, str], signals: Mapping[str, str] | None = None
) -> Conversation:
    """Read one conversation in either supported format.

    ``placeholders`` maps each modality the model takes to its placeholder text. In the
    Hugging Face format a ``{"type": "image", ...}`` part becomes the placeholder at its
    position (parts are joined with newlines); in a LLaVA record the text already holds
    the placeholders and the record's ``image`` (or ``audio``, ``video`` …) key holds
    one path or a list of them. ``signals`` maps each modality the model generates to its
    signal tokens' text: in an assistant turn, a part of that type becomes those tokens
    (what the LLM learns to emit) and is listed in ``outputs``.
    """
    signals = signals or {}
    if isinstance(conversation, Mapping) and "conversations" in conversation:
        return _from_llava(conversation, placeholders)
    if isinstance(conversation, Mapping):
        raise InputError(
            f"A conversation must be a list of messages or a LLaVA record with 'conversations'; got a dict with keys "
            f"{sorted(conversation)}."
        )
    if not isinstance(conversation, Sequence) or isinstance(conversation, str):
        raise InputError(f"A conversation must be a list of messages; got {type(conversation).__name__}.")
    if not conversation:
        raise InputError(
            "The conversation is empty; pass at least one message like {'role': 'user', 'content': '...'}."
        )
    result = Conversation(messages=[])
    for index, message in enumerate(conversation):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise InputError(f"Message {index} must be a dict with 'role' and 'content'; got {message!r:.200}.")
        if str(message["role"]) == "assistant":
            text = _content_text(message["content"], signals, result.outputs, index, output=True)
        else:
            text = _content_text(message["content"], placeholders, result.items, index)
        result.messages.append({"role": str(message["role"]), "content": text})
    return result


def _content_text(
    content: Any, placeholders: Mapping[str, str], items: list[ModalityItem], index: int, output: bool = False
) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, Sequence):
        raise InputError(
            f"Message {index}: 'content' must be a string or a list of parts; got {type(content).__name__}."
        )
    pieces = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            pieces.append(str(part.get("text", "")))
        elif kind in placeholders and output:  # what the assistant produces: its signal tokens
            source = next((part[k] for k in (kind, *SOURCE_KEYS, "text", "caption") if part.get(k) is not None), None)
            items.append(ModalityItem(kind, source))
            # a text-conditioned output writes its text between the tokens: "<aud_0>{text}<aud_1>"
            pieces.append(placeholders[kind].replace(TEXT_SLOT, str(source or "")))
        elif output and kind is not None:
            made = ", ".join(["text", *placeholders])
            raise InputError(
                f"Message {index}: the assistant turn has a {kind!r} part, but this model generates only: {made}. "
                f"Add outputs.{kind} to the model spec (signal tokens, an output projector and a generator), or "
                "remove the part."
            )
        elif kind in placeholders:
            source = next((part[k] for k in (kind, *SOURCE_KEYS) if part.get(k) is not None), None)
            if source is None:
                raise InputError(
                    f"Message {index}: the {kind} part {dict(part)!r:.200} says where nothing is; give it 'path' "
                    f"(a file) or '{kind}' (a file path or an in-memory object)."
                )
            items.append(ModalityItem(kind, source))
            pieces.append(placeholders[kind])
        else:
            known = ", ".join(["text", *placeholders])
            raise InputError(
                f"Message {index}: a content part of type {kind!r} cannot be used by this model; it takes: {known}."
            )
    return "\n".join(pieces)


def _from_llava(record: Mapping[str, Any], placeholders: Mapping[str, str]) -> Conversation:
    turns = record["conversations"]
    if not isinstance(turns, Sequence) or not turns:
        raise InputError("The LLaVA record's 'conversations' is empty; it needs at least one {'from', 'value'} turn.")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
            raise InputError(f"LLaVA turn {index} must have 'from' and 'value'; got {turn!r:.200}.")
        role = LLAVA_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise InputError(
                f"LLaVA turn {index} comes 'from' {turn['from']!r}; expected one of {', '.join(LLAVA_ROLES)}."
            )
        messages.append({"role": role, "content": str(turn["value"])})
    items = []
    for modality in placeholders:
        sources = record.get(modality)
        if sources is None:
            continue
        for source in sources if isinstance(sources, list) else [sources]:
            items.append(ModalityItem(modality, source))
    return Conversation(messages, items)
