"""The processor: conversations -> input_ids, attention_mask, labels and each modality's encoder inputs."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmllm_sdk.components.encoder import ModalityEncoder
from mmllm_sdk.components.llm import LLMBackbone
from mmllm_sdk.components.modality import ModalitySpec, preprocess
from mmllm_sdk.data.examples import FEATURES_KEY, Conversation, MediaPart, TextPart
from mmllm_sdk.data.messages import ROLES, TEXT_SLOT, MessageParser, PlaceholderCountError, RecordError
from mmllm_sdk.errors import InputError, PlaceholderMismatchError

IGNORE_INDEX = -100  # the label of positions that carry no loss (torch's cross-entropy default)
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_CHARS_PER_TOKEN = 32  # no tokenizer averages more: text over the LLM's positions × this is refused untokenized


@dataclass(frozen=True)
class ModalityInput:
    """What the processor needs of one input modality of a model."""

    spec: ModalitySpec
    encoder: ModalityEncoder
    placeholder_id: int  # the placeholder's token id
    num_tokens: int  # M: LLM positions per item (the projector's token count)


@dataclass
class EncodedConversation:
    input_ids: list[int]
    labels: list[int]
    items: dict[str, list[MediaPart]]  # modality -> its input items, in text order


class MMLLMProcessor:
    """Turns chat conversations into a batch ``MMLLM.forward`` takes: the chat template renders them, each placeholder
    becomes ``num_tokens`` copies of its token id, and labels are ``IGNORE_INDEX`` except on assistant turns."""

    def __init__(
        self, llm: LLMBackbone, inputs: Mapping[str, ModalityInput], signals: Mapping[str, str] | None = None
    ) -> None:
        self.llm = llm
        self.inputs = dict(inputs)
        self.signals = dict(signals or {})  # output modality -> its signal tokens' text, "<img_0><img_1>…"
        placeholders = {name: value.spec.placeholder for name, value in self.inputs.items()}
        self.parser = MessageParser(placeholders, roles=None)  # roles are checked in _texts, typed conversations' too

    @property
    def tokenizer(self) -> Any:
        return self.llm.tokenizer

    def __call__(
        self,
        conversations: Sequence[Any],
        *,
        add_generation_prompt: bool = False,
        max_length: int | None = None,
        padding_side: str | None = None,
        train_on: str = "assistant",
    ) -> dict[str, Any]:
        """A batch from a list of conversations (each a list of messages, a LLaVA record or a :class:`Conversation`).

        With ``add_generation_prompt`` it ends where the answer would start, is padded left and has no ``labels``;
        else labels cover every assistant turn or, with ``train_on="last_assistant"``, the last one. A sequence longer
        than ``max_length`` is an error, never cut.
        """
        if isinstance(conversations, (str, Mapping)) or not isinstance(conversations, Sequence):
            raise InputError("processor() takes a list of conversations; wrap a single conversation in a list.")
        if not conversations:
            raise InputError("processor() got an empty list of conversations; pass at least one.")
        if isinstance(conversations[0], Mapping) and "role" in conversations[0]:
            raise InputError(
                "processor() takes a list of conversations, and this looks like one conversation (a list of messages); "
                "wrap it in another list: processor([messages])."
            )
        encoded = [self.encode(c, add_generation_prompt, index, train_on) for index, c in enumerate(conversations)]
        longest = max(len(e.input_ids) for e in encoded)
        if max_length is not None and longest > max_length:
            raise InputError(
                f"A conversation takes {longest} tokens (placeholders expanded), more than max_length={max_length}; "
                "shorten it, use a projector with fewer tokens, or raise max_length."
            )
        side = padding_side or ("left" if add_generation_prompt else "right")
        batch = self._pad(encoded, longest, side, with_labels=not add_generation_prompt)
        for modality in self.inputs:
            items = [item for e in encoded for item in e.items[modality]]
            if items:
                batch[modality] = self.modality_inputs(modality, items)
        return batch

    def modality_inputs(self, modality: str, items: Sequence[MediaPart]) -> dict[str, Any]:
        """The encoder's inputs for items of one modality: their cached features when every item carries them, else
        each source loaded, then preprocessed as a batch."""
        if all(item.features is not None for item in items):
            return {FEATURES_KEY: torch.stack([item.features for item in items])}  # (items, N, D)
        value, sources = self.inputs[modality], [item.source for item in items]
        return preprocess(value.encoder, modality, [value.spec.load(source) for source in sources], sources)

    def parse(self, conversation: Any, index: int = 0) -> Conversation:
        """One conversation as a typed :class:`Conversation` (parsed and checked when it is raw messages)."""
        if isinstance(conversation, Conversation):
            return conversation
        try:
            return self.parser.conversation(conversation)
        except PlaceholderCountError as error:
            raise PlaceholderMismatchError(self._mismatch(index, error.modality, error.found, error.given)) from None
        except RecordError as error:
            raise InputError(f"Conversation {index}: {error.plain}") from None

    def encode(
        self, conversation: Any, add_generation_prompt: bool = False, index: int = 0, train_on: str = "assistant"
    ) -> EncodedConversation:
        """One conversation: token ids with expanded placeholders, labels, and where its items come from."""
        if train_on not in ("assistant", "last_assistant"):
            raise InputError(f"train_on must be 'assistant' or 'last_assistant'; got {train_on!r}.")
        conversation = self.parse(conversation, index)
        where = f"Conversation {index}" + (f" ({conversation.source})" if conversation.source else "")
        messages, items = self._texts(conversation, where)
        limit, chars = self.llm.max_positions, sum(len(message["content"]) for message in messages)
        if limit is not None and chars > limit * MAX_CHARS_PER_TOKEN:
            raise InputError(
                f"{where} holds {chars:,} characters of text, more than the LLM's {limit:,} positions can hold (at "
                f"most {limit * MAX_CHARS_PER_TOKEN:,}: {MAX_CHARS_PER_TOKEN} a token); shorten it."
            )
        text, spans = self._render(messages, add_generation_prompt)
        if bad := _SURROGATE.search(text):  # the tokenizer cannot take it
            raise InputError(f"{where} holds a lone surrogate ({bad[0]!r}), which is not text; decode it properly.")
        spans = spans[-1:] if train_on == "last_assistant" else spans
        bound = {} if limit is None else {"truncation": True, "max_length": limit + 1}  # one more: too long is seen
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, **bound)
        ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
        id_to_modality = {value.placeholder_id: name for name, value in self.inputs.items()}
        modalities = [id_to_modality.get(token_id) for token_id in ids]
        counts = Counter(modality for modality in modalities if modality is not None)
        if limit is not None:
            self._check_positions(where, len(modalities) - counts.total(), counts, limit)
        input_ids: list[int] = []
        labels: list[int] = []
        for token_id, modality, (start, _end) in zip(ids, modalities, offsets, strict=True):
            repeat = 1 if modality is None else self.inputs[modality].num_tokens  # a placeholder: M positions
            supervised = modality is None and any(lo <= start < hi for lo, hi in spans)
            input_ids += [token_id] * repeat
            labels += [token_id if supervised else IGNORE_INDEX] * repeat
        for modality in self.inputs:
            if counts[modality] != len(items[modality]):
                raise PlaceholderMismatchError(self._mismatch(index, modality, counts[modality], len(items[modality])))
        return EncodedConversation(input_ids, labels, items)

    def _check_positions(self, where: str, text: int, counts: Counter[str], limit: int) -> None:
        """Refuse text tokens (counted up to ``limit`` + 1) and expanded placeholders beyond the LLM's positions."""
        length = text + sum(self.inputs[modality].num_tokens * n for modality, n in counts.items())
        if length > limit:
            least = "at least " * (text + counts.total() > limit)
            items = "".join(
                f" + {n} {self.inputs[m].spec.placeholder} × {self.inputs[m].num_tokens}" for m, n in counts.items()
            )
            raise InputError(
                f"{where} takes {least}{length:,} positions ({least}{text:,} text tokens{items}), more than the "
                f"LLM's {limit:,}; shorten it or give it fewer items."
            )

    def _mismatch(self, index: int, modality: str, count: int, given: int) -> str:
        placeholder = self.inputs[modality].spec.placeholder
        return (
            f"Conversation {index} has {count} {placeholder} placeholder(s) but {given} {modality} input(s); "
            f"each {modality} needs exactly one {placeholder} in the text (or one {{'type': '{modality}'}} "
            "content part). Add or remove placeholders or inputs so the counts match."
        )

    def _texts(self, conversation: Conversation, where: str) -> tuple[list[dict[str, str]], dict[str, list[MediaPart]]]:
        """Each message as text (parts joined by newlines; an input as its placeholder, an output as its signal tokens),
        and the input items of each modality in text order. A role the chat template may not know is refused."""
        items: dict[str, list[MediaPart]] = {modality: [] for modality in self.inputs}
        messages = []
        for number, message in enumerate(conversation.messages):
            if message.role not in ROLES:
                raise InputError(
                    f"{where}, message {number} has role {message.role!r}; the roles are {', '.join(map(repr, ROLES))} "
                    "(LLaVA's 'human', 'gpt' mean 'user', 'assistant'); under another, an answer would get no loss."
                )
            pieces = []
            for part in message.parts:
                if isinstance(part, TextPart):
                    pieces.append(part.text)
                elif isinstance(part, MediaPart):
                    if part.modality not in self.inputs:
                        known = ", ".join(["text", *self.inputs])
                        raise InputError(
                            f"{where}, message {number}: a content part of type {part.modality!r} "
                            f"cannot be used by this model; it takes: {known}."
                        )
                    items[part.modality].append(part)
                    pieces.append(self.inputs[part.modality].spec.placeholder)
                elif part.modality in self.signals:  # a text-conditioned output writes its text between the tokens
                    text = part.caption if part.caption is not None else str(part.source or "")
                    pieces.append(self.signals[part.modality].replace(TEXT_SLOT, text))
                else:
                    made = ", ".join(["text", *self.signals])
                    raise InputError(
                        f"{where}, message {number}: the assistant turn has a {part.modality!r} part, "
                        f"but this model generates only: {made}. Add outputs.{part.modality} to the model spec "
                        "(signal tokens, an output projector and a generator), or remove the part."
                    )
            messages.append({"role": message.role, "content": "\n".join(pieces)})
        return messages, items

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
        """The templated text and the character spans of the assistant turns (what labels cover)."""
        text = self.llm.render_chat(messages, add_generation_prompt=add_generation_prompt)
        spans = []
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.llm.render_chat(messages[:turn], add_generation_prompt=True) if turn else ""
            through = self.llm.render_chat(messages[: turn + 1])
            if not (text.startswith(through) and through.startswith(before)):
                raise InputError(
                    "The LLM's chat template renders earlier turns differently once later turns are added, so the "
                    "assistant turns cannot be located for labels; use a template that renders turns in order."
                )
            spans.append((len(before), len(through)))
        return text, spans

    def _pad(self, encoded: list[EncodedConversation], length: int, side: str, with_labels: bool) -> dict[str, Any]:
        if side not in ("left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right'; got {side!r}.")
        shape = (len(encoded), length)
        batch: dict[str, Any] = {
            "input_ids": torch.full(shape, self.tokenizer.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros(shape, dtype=torch.long),
            "labels": torch.full(shape, IGNORE_INDEX, dtype=torch.long),
        }
        for row, e in enumerate(encoded):
            cols = slice(length - len(e.input_ids), length) if side == "left" else slice(0, len(e.input_ids))
            batch["input_ids"][row, cols] = torch.tensor(e.input_ids, dtype=torch.long)
            batch["attention_mask"][row, cols] = 1
            batch["labels"][row, cols] = torch.tensor(e.labels, dtype=torch.long)
        return batch if with_labels else {key: batch[key] for key in ("input_ids", "attention_mask")}

    def decode(self, token_ids: Sequence[int] | torch.Tensor) -> str:
        """Text of generated token ids, without special tokens."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)
