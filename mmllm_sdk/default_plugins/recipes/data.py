"""Reading a run's data: data files through the built-in ``files`` data source, or a registered data source, checked
against the model's modalities (``mmllm train``, ``mmllm eval`` and ``mmllm probe`` read it the same way); an example's
prompt and reference answer (what ``mmllm eval`` scores against and ``grpo`` rewards with)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mmllm_sdk.data.examples import Conversation, LabelledAnswer, Message, PreferencePair, TextPart
from mmllm_sdk.data.formats import DataReport, as_example
from mmllm_sdk.data.messages import ANSWER_ROLE
from mmllm_sdk.errors import DataError, InputError, PluginError, SpecError
from mmllm_sdk.registry import get_registry
from mmllm_sdk.training.spec import DatasetSource
from mmllm_sdk.validation import validate

WORDS_TO_TOKENS = 1.3  # sub-word tokens per whitespace-separated word, roughly, in English text


def read_data(
    source: str | list[str] | DatasetSource | dict[str, Any], modalities: dict[str, Any], **file_options: Any
) -> DataReport:
    """Examples from data files (the built-in ``files`` data source reads them, with ``file_options``: ``format``,
    ``base_dir``, ``skip_invalid``) or a registered data source (``{"dataset": name, "params": {…}}``), checked
    against the model's modalities."""
    if isinstance(source, dict):
        source = validate(DatasetSource, source, where="data")
    if not isinstance(source, DatasetSource):
        source = DatasetSource(
            dataset="files", params={"paths": source, **file_options, "modalities": list(modalities)}
        )
    entry = get_registry().get("datasets", source.dataset, where="data: dataset")
    params = source.params
    if (schema := getattr(entry.value, "Params", None)) is not None:
        params = validate(schema, params, where=f"data.{source.dataset}.params").model_dump()
    report = entry.build(params)
    if not isinstance(report, DataReport):
        raise PluginError(
            f"Plugin {entry.plugin!r}: the {entry.label} returned a {type(report).__name__}, not a DataReport."
        )
    for modality in report.media_counts():
        if modality not in modalities:
            raise SpecError(
                f"data: dataset {source.dataset!r} gives {modality} inputs, but the model takes only "
                f"{', '.join(modalities) or 'text'}; add an inputs.{modality} entry or pick another data source."
            )
    return report


def prompt_and_reference(example: Any) -> tuple[Conversation, str | None]:
    """An example as a prompt and its reference answer: the messages before the last one, when that is an assistant
    turn, and its text; a preference pair's prompt (and any earlier chosen turns) and chosen answer; an unpaired
    answer's, when it is desirable. The reference is None when there is none: a conversation that ends with another
    role's turn (it is a prompt whole), an undesirable answer, an answer without text."""
    example = as_example(example)
    if isinstance(example, PreferencePair):
        messages = example.prompt + example.chosen
    elif isinstance(example, LabelledAnswer):
        messages = example.prompt + (example.completion if example.desirable else ())
    else:
        messages = example.messages
    if messages[-1].role != ANSWER_ROLE:
        return Conversation(messages, example.source), None
    if len(messages) == 1:
        raise DataError(f"{example.source or 'An example'} has an answer and no prompt before it; give its question.")
    return Conversation(messages[:-1], example.source), messages[-1].text() or None


def estimate_length(example: Any, tokens_per_item: Mapping[str, int]) -> int:
    """A cheap token count for length-grouped batching: ``WORDS_TO_TOKENS`` per word, ``tokens_per_item[modality]``
    per media item; a preference pair counts its prompt and the longer answer."""
    example = as_example(example)
    if isinstance(example, PreferencePair):
        answers = (_estimate(answer, tokens_per_item) for answer in (example.chosen, example.rejected))
        return _estimate(example.prompt, tokens_per_item) + max(answers)
    if isinstance(example, LabelledAnswer):
        return _estimate(example.prompt + example.completion, tokens_per_item)
    return _estimate(example.messages, tokens_per_item)


def _estimate(messages: Sequence[Message], tokens_per_item: Mapping[str, int]) -> int:
    words, media = 0, 0
    for part in (part for message in messages for part in message.parts):
        if isinstance(part, TextPart):
            words += len(part.text.split())
        elif part.modality in tokens_per_item:
            media += tokens_per_item[part.modality]
        else:
            raise InputError(
                f"estimate_length() has no token count for {part.modality!r} items; pass tokens_per_item="
                f"{{'{part.modality}': n}} with the projector's token count."
            )
    return math.ceil(words * WORDS_TO_TOKENS) + media
