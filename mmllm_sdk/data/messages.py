"""The one parser of conversations: Hugging Face chat messages and LLaVA records -> typed examples."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from mmllm_sdk.data.examples import Conversation, MediaPart, Message, OutputPart, Part, TextPart

LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
ROLES = tuple(dict.fromkeys(LLAVA_ROLES.values()))  # the roles of Hugging Face chat messages
ANSWER_ROLE = "assistant"  # the role whose turns carry the loss, and whose modality parts are outputs
TEXT_SLOT = "{text}"  # where a text-conditioned output's signal template takes the part's text
SOURCE_KEYS = ("path", "url")  # besides the modality's own key: {"type": "image", "image": ...}
CAPTION_KEYS = ("caption", "text")  # what an output part shows, or the text it is made from
MESSAGE_SHAPE = "{'role': 'user', 'content': '...'}"
JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


class RecordError(Exception):
    """A conversation or record that cannot be used, and why; ``plain`` words it for one passed in memory."""

    def __init__(self, reason: str, plain: str | None = None) -> None:
        super().__init__(reason)
        self.plain = plain or reason


class PlaceholderCountError(RecordError):
    """The text holds another number of a modality's placeholders than the record gives items."""

    def __init__(self, where: str, modality: str, placeholder: str, found: int, given: int) -> None:
        super().__init__(
            f"The text of '{where}' holds {found} {placeholder} placeholder(s) but the record gives {given} "
            f"{modality} file(s) under {modality!r}; each {modality} file needs exactly one {placeholder} in the "
            f"text, in order (or use {{'type': '{modality}', 'path': ...}} parts)."
        )
        self.modality, self.found, self.given = modality, found, given


class MessageParser:
    """Parses and checks conversations into typed messages; a modality part in an assistant turn is an output.
    ``placeholders``: modality -> placeholder text; ``modalities``: the part types allowed besides text (None: any);
    ``media(modality, source, where)`` checks a source and returns it; ``roles``: those allowed (None: any)."""

    def __init__(
        self,
        placeholders: Mapping[str, str] | None = None,
        modalities: Collection[str] | None = None,
        media: Callable[[str, Any, str], Any] | None = None,
        roles: Sequence[str] | None = ROLES,
    ) -> None:
        self.placeholders = dict(placeholders or {})
        self.modalities = modalities
        self.media = media or (lambda modality, source, where: source)
        self.roles = roles
        self.placeholder_modality = {placeholder: name for name, placeholder in self.placeholders.items()}
        longest_first = sorted(self.placeholder_modality, key=len, reverse=True)
        self.pattern = re.compile(f"({'|'.join(map(re.escape, longest_first))})") if longest_first else None

    def conversation(self, value: Any) -> Conversation:
        """A list of messages, a LLaVA record, or an example dict ``{"messages": [...], "source": ...}``."""
        record = value if isinstance(value, Mapping) else {"messages": value}
        if not isinstance(value, (Mapping, list, tuple)) or not {"messages", "conversations"} & set(record):
            got = f"a dict with keys {sorted(map(str, value))}" if isinstance(value, Mapping) else type(value).__name__
            raise RecordError(
                f"A conversation must be a list of messages or a LLaVA record with 'conversations'; got {got}."
            )
        where = "conversations" if "conversations" in record else "messages"
        messages = self.llava(record[where]) if where == "conversations" else self.messages(record[where], where)
        expanded = self.expand(messages, self.record_items(record), where)
        return Conversation(tuple(expanded), str(record.get("source", "")))

    def messages(self, value: Any, where: str, roles: Sequence[str] | None = None) -> list[Message]:
        roles = roles or self.roles
        require_list(value, where, MESSAGE_SHAPE)
        messages = []
        for index, message in enumerate(value):
            at = f"{where}[{index}]"
            plain = f"Message {index} must be a dict with 'role' and 'content'; got {message!r:.200}."
            if not isinstance(message, Mapping):
                raise RecordError(f"{at} is a JSON {json_type(message)}, not a message like {MESSAGE_SHAPE}.", plain)
            missing = [key for key in ("role", "content") if key not in message]
            if missing:
                keys = " or ".join(repr(k) for k in missing)
                raise RecordError(f"{at} has no {keys}; a message looks like {MESSAGE_SHAPE}.", plain)
            if roles is not None and message["role"] not in roles:
                expected = repr(roles[0]) if len(roles) == 1 else "one of: " + ", ".join(repr(r) for r in roles)
                raise RecordError(f"{at} has role {message['role']!r}; expected {expected}.")
            role = str(message["role"])
            messages.append(Message(role, tuple(self.content(message["content"], f"{at}.content", role))))
        return messages

    def content(self, content: Any, at: str, role: str) -> list[Part]:
        if isinstance(content, str):
            return [TextPart(content)]
        if not isinstance(content, (list, tuple)):
            raise RecordError(f"{at} must be a string or a list of parts; got a JSON {json_type(content)}.")
        parts: list[Part] = []
        for index, part in enumerate(content):
            where = f"{at}[{index}]"
            if not isinstance(part, Mapping):
                raise RecordError(
                    f"{where} is a JSON {json_type(part)}, not a part like {{'type': 'text', 'text': '...'}}."
                )
            kind = part.get("type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise RecordError(f"{where} is a text part without a 'text' string; got {dict(part)!r:.200}.")
                parts.append(TextPart(part["text"]))
                continue
            if not isinstance(kind, str) or (self.modalities is not None and kind not in self.modalities):
                known = ", ".join(["text", *(self.modalities or [])])
                raise RecordError(
                    f"{where} has type {kind!r}; a content part's type is one of: {known} (text, or a registered "
                    "modality). Install the plugin of another modality to use it."
                )
            source = next((part[key] for key in (kind, *SOURCE_KEYS) if part.get(key) is not None), None)
            caption = next((part[k] for k in CAPTION_KEYS if isinstance(part.get(k), str) and part[k].strip()), None)
            if role == ANSWER_ROLE and (source is not None or caption is not None):
                parts.append(OutputPart(kind, caption, None if source is None else self.media(kind, source, where)))
            elif source is not None:
                parts.append(MediaPart(kind, self.media(kind, source, where)))
            else:
                raise RecordError(
                    f"{where} has no path; give the {kind} part one: {{'type': '{kind}', 'path': 'file'}} "
                    f"(or, for an output the assistant generates, a caption: {{'type': '{kind}', 'caption': '...'}}).",
                    f"the {kind} part {dict(part)!r:.200} says where nothing is; give it 'path' (a file) or '{kind}' "
                    "(a file path or an in-memory object).",
                )
        return parts

    def llava(self, turns: Any) -> list[Message]:
        """LLaVA's ``conversations``: ``{"from": "human" | "gpt", "value": text}`` turns."""
        require_list(turns, "conversations", "{'from': 'human', 'value': '...'}")
        messages = []
        for index, turn in enumerate(turns):
            at = f"conversations[{index}]"
            if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
                raise RecordError(f"{at} must be an object with 'from' and 'value'; got {turn!r:.200}.")
            role = LLAVA_ROLES.get(str(turn["from"]).lower())
            if role is None:
                raise RecordError(f"{at} comes 'from' {turn['from']!r}; expected one of {', '.join(LLAVA_ROLES)}.")
            if not isinstance(turn["value"], str):
                raise RecordError(f"{at}: 'value' must be a string; got a JSON {json_type(turn['value'])}.")
            messages.append(Message(role, (TextPart(turn["value"]),)))
        return messages

    def record_items(self, record: Mapping[str, Any]) -> dict[str, list[MediaPart]]:
        """LLaVA-style items at the record's top level: ``{"image": "a.jpg"}`` or ``{"image": ["a.jpg", ...]}``."""
        items = {}
        for modality in (name for name in self.placeholders if record.get(name) is not None):
            many = isinstance(record[modality], list)
            values = record[modality] if many else [record[modality]]
            wheres = [f"{modality}[{i}]" if many else modality for i in range(len(values))]
            items[modality] = [
                MediaPart(modality, self.media(modality, v, w)) for v, w in zip(values, wheres, strict=True)
            ]
        return items

    def matches(self, text: str) -> list[str]:  # the placeholders in ``text``
        return self.pattern.findall(text) if self.pattern is not None else []

    def expand(self, messages: list[Message], items: Mapping[str, list[MediaPart]] | None, where: str) -> list[Message]:
        """Replace each placeholder in the text (``<image>``) with the record's next item of its modality, as a part;
        ``items`` is None where placeholders do not belong (the answers of a preference pair)."""
        found = [p for m in messages for part in m.parts if isinstance(part, TextPart) for p in self.matches(part.text)]
        if items is None and found:
            raise RecordError(
                f"The text of '{where}' holds {', '.join(sorted(set(found)))}; placeholders belong in the prompt, "
                "next to the record's media. Remove them from the answer."
            )
        items = items or {}
        counts = Counter(self.placeholder_modality[placeholder] for placeholder in found)
        for modality, placeholder in self.placeholders.items():
            given = len(items.get(modality, []))
            if counts[modality] != given:
                raise PlaceholderCountError(where, modality, placeholder, counts[modality], given)
        if not counts:
            return messages
        queues = {modality: iter(parts) for modality, parts in items.items()}
        result = []
        for message in messages:
            parts: list[Part] = []
            for part in message.parts:
                pieces = self.pattern.split(part.text) if isinstance(part, TextPart) else []  # text, placeholder, ...
                if len(pieces) < 2:
                    parts.append(part)
                    continue
                # "<image>\nWhat is it?" -> [image part, "What is it?"]: parts are rendered joined by newlines, so
                # one newline next to a placeholder belongs to the join, not to the text
                for index, piece in enumerate(pieces):
                    if index % 2:
                        parts.append(next(queues[self.placeholder_modality[piece]]))
                        continue
                    piece = piece.removeprefix("\n") if index else piece
                    piece = piece.removesuffix("\n") if index < len(pieces) - 1 else piece
                    parts.extend([TextPart(piece)] if piece else [])
            result.append(Message(message.role, tuple(parts)))
        return result


def require_list(value: Any, where: str, shape: str) -> None:
    if not isinstance(value, (list, tuple)):
        raise RecordError(f"'{where}' must be a list of messages like {shape}; got a JSON {json_type(value)}.")
    if not value:
        raise RecordError(
            f"The conversation '{where}' is empty; give it at least one message like {shape}.",
            f"The conversation is empty; pass at least one message like {MESSAGE_SHAPE}.",
        )


def json_type(value: Any) -> str:
    return "null" if value is None else JSON_TYPES.get(type(value), type(value).__name__)
