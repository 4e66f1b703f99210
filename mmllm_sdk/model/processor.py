"""The processor: conversations -> input_ids, attention_mask, labels and each modality's encoder inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmllm_sdk.components.encoder import ModalityEncoder
from mmllm_sdk.components.llm import LLMBackbone
from mmllm_sdk.components.modality import ModalitySpec
from mmllm_sdk.data.feature_cache import FEATURES_KEY, FeatureCache
from mmllm_sdk.data.messages import Conversation, normalize_conversation
from mmllm_sdk.errors import InputError, PlaceholderMismatchError

IGNORE_INDEX = -100  # the label of positions that carry no loss (torch's cross-entropy default)


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
    sources: dict[str, list[Any]]  # modality -> where each item comes from (path, URL or object), in text order


class MMLLMProcessor:
    """Turns chat conversations into a batch ``MMLLM.forward`` takes.

    The LLM's chat template renders the conversation; each modality placeholder becomes
    ``num_tokens`` copies of its token id (one per projected feature); labels are
    ``IGNORE_INDEX`` except on assistant turns (their text and end-of-turn marker).
    """

    def __init__(
        self, llm: LLMBackbone, inputs: Mapping[str, ModalityInput], signals: Mapping[str, str] | None = None
    ) -> None:
        self.llm = llm
        self.inputs = dict(inputs)
        self.signals = dict(signals or {})  # output modality -> its signal tokens' text, "<img_0><img_1>…"
        self.feature_cache: FeatureCache | None = None
        self.cache_fingerprints: dict[str, str] = {}  # modality -> fingerprint of its (frozen) encoder

    def use_feature_cache(self, cache: FeatureCache | None, fingerprints: Mapping[str, str] | None = None) -> None:
        """Read frozen encoders' features from ``cache`` for these modalities (``None``: stop).

        When every item of a modality in a batch is cached, the batch carries the features
        (``FEATURES_KEY``) instead of encoder inputs: no file is decoded, no encoder runs.
        """
        self.feature_cache = cache
        self.cache_fingerprints = dict(fingerprints or {}) if cache is not None else {}

    @property
    def tokenizer(self) -> Any:
        return self.llm.tokenizer

    @property
    def placeholders(self) -> dict[str, str]:
        return {name: value.spec.placeholder for name, value in self.inputs.items()}

    def __call__(
        self,
        conversations: Sequence[Any],
        *,
        add_generation_prompt: bool = False,
        max_length: int | None = None,
        padding_side: str | None = None,
        train_on: str = "assistant",
    ) -> dict[str, Any]:
        """A batch from a list of conversations (each a list of messages, or a LLaVA record).

        With ``add_generation_prompt`` the batch ends where the assistant's answer would
        start, is padded on the left and has no ``labels``; otherwise it is padded on the
        right and carries labels: on every assistant turn (``train_on="assistant"``) or only
        on the last one (``"last_assistant"``, as preference training scores one answer).
        A sequence longer than ``max_length`` is an error, not a silent cut (a cut could
        drop a placeholder or the answer).
        """
        if isinstance(conversations, (str, Mapping)) or not isinstance(conversations, Sequence):
            raise InputError("processor() takes a list of conversations; wrap a single conversation in a list.")
        if not conversations:
            raise InputError("processor() got an empty list of conversations; pass at least one.")
        if conversations and isinstance(conversations[0], Mapping) and "role" in conversations[0]:
            raise InputError(
                "processor() takes a list of conversations, and this looks like one conversation (a list of messages); "
                "wrap it in another list: processor([messages])."
            )
        encoded = [
            self.encode(conversation, add_generation_prompt, index, train_on)
            for index, conversation in enumerate(conversations)
        ]
        longest = max(len(e.input_ids) for e in encoded)
        if max_length is not None and longest > max_length:
            raise InputError(
                f"A conversation takes {longest} tokens (placeholders expanded), more than max_length={max_length}; "
                "shorten it, use a projector with fewer tokens, or raise max_length."
            )
        side = padding_side or ("left" if add_generation_prompt else "right")
        batch = self._pad(encoded, longest, side, with_labels=not add_generation_prompt)
        for modality in self.inputs:
            sources = [source for e in encoded for source in e.sources[modality]]
            if sources:
                batch[modality] = self.modality_inputs(modality, sources)
        return batch

    def modality_inputs(self, modality: str, sources: list[Any]) -> dict[str, Any]:
        """The encoder's inputs for items of one modality: cached features when every item has them,
        else each source loaded, then preprocessed as a batch."""
        value = self.inputs[modality]
        fingerprint = self.cache_fingerprints.get(modality)
        if self.feature_cache is not None and fingerprint is not None:
            keys = [self.feature_cache.item_key(fingerprint, source) for source in sources]
            if all(key is not None for key in keys):
                found = self.feature_cache.get_many(keys, shape=(value.encoder.num_tokens, value.encoder.output_dim))
                if all(features is not None for features in found):
                    return {FEATURES_KEY: torch.stack(found)}  # (items, N, D)
        return value.encoder.preprocess([value.spec.load(source) for source in sources])

    def encode(
        self, conversation: Any, add_generation_prompt: bool = False, index: int = 0, train_on: str = "assistant"
    ) -> EncodedConversation:
        """One conversation: token ids with expanded placeholders, labels, and where its items come from."""
        if train_on not in ("assistant", "last_assistant"):
            raise InputError(f"train_on must be 'assistant' or 'last_assistant'; got {train_on!r}.")
        normalized = normalize_conversation(conversation, self.placeholders, self.signals)
        text, spans = self._render(normalized, add_generation_prompt)
        if train_on == "last_assistant":
            spans = spans[-1:]
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        sources = self._sources(normalized, index)
        id_to_modality = {value.placeholder_id: name for name, value in self.inputs.items()}
        counts = dict.fromkeys(self.inputs, 0)
        input_ids: list[int] = []
        labels: list[int] = []
        for token_id, (start, _end) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True):
            modality = id_to_modality.get(token_id)
            if modality is not None:
                counts[modality] += 1
                repeat = self.inputs[modality].num_tokens
                input_ids.extend([token_id] * repeat)
                labels.extend([IGNORE_INDEX] * repeat)
                continue
            input_ids.append(token_id)
            supervised = any(lo <= start < hi for lo, hi in spans)
            labels.append(token_id if supervised else IGNORE_INDEX)
        for modality, count in counts.items():
            given = len(sources[modality])
            if count != given:
                placeholder = self.inputs[modality].spec.placeholder
                raise PlaceholderMismatchError(
                    f"Conversation {index} has {count} {placeholder} placeholder(s) but {given} {modality} input(s); "
                    f"each {modality} needs exactly one {placeholder} in the text (or one {{'type': '{modality}'}} "
                    "content part). Add or remove placeholders or inputs so the counts match."
                )
        return EncodedConversation(input_ids, labels, sources)

    def _render(self, conversation: Conversation, add_generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
        """The templated text and the character spans of the assistant turns (what labels cover)."""
        messages = conversation.messages
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

    def _sources(self, conversation: Conversation, index: int) -> dict[str, list[Any]]:
        sources: dict[str, list[Any]] = {modality: [] for modality in self.inputs}
        for item in conversation.items:
            if item.modality not in self.inputs:
                raise InputError(
                    f"Conversation {index} has a {item.modality} input, but this model takes only "
                    f"{', '.join(self.inputs) or 'text'}."
                )
            sources[item.modality].append(item.source)
        return sources

    def _pad(self, encoded: list[EncodedConversation], length: int, side: str, with_labels: bool) -> dict[str, Any]:
        if side not in ("left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right'; got {side!r}.")
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), length), dtype=torch.long)
        labels = torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long)
        for row, e in enumerate(encoded):
            n = len(e.input_ids)
            cols = slice(length - n, length) if side == "left" else slice(0, n)
            ids[row, cols] = torch.tensor(e.input_ids, dtype=torch.long)
            mask[row, cols] = 1
            labels[row, cols] = torch.tensor(e.labels, dtype=torch.long)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if with_labels:
            batch["labels"] = labels
        return batch

    def decode(self, token_ids: Sequence[int] | torch.Tensor) -> str:
        """Text of generated token ids, without special tokens."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)
