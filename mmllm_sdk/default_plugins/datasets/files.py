"""The ``files`` data source: ``.jsonl`` / ``.json`` data files of messages, LLaVA, caption, preference and
unpaired records read into typed, checked examples. A recipe's ``data.train: a.jsonl`` comes through it.

The core reads a data source's example dicts (:class:`~mmllm_sdk.data.formats.RecordReader`); this source adds
what belongs to files: the caption records, a wanted ``format=``, reading the files (:mod:`.records`),
``skip_invalid`` and one kind of example per call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from mmllm_sdk.components.modality import ModalitySpec
from mmllm_sdk.data.examples import Conversation, MediaPart, Message, TextPart
from mmllm_sdk.data.formats import (
    ANSWER_ROLE,
    CONVERSATION,
    PREFERENCE,
    RECORD_SHAPES,
    UNPAIRED,
    DataReport,
    RecordReader,
    counted,
)
from mmllm_sdk.data.messages import RecordError, json_type
from mmllm_sdk.default_plugins.datasets.records import file_labels, read_records
from mmllm_sdk.errors import DataError, InputError
from mmllm_sdk.registry import get_registry
from mmllm_sdk.validation import StrictModel, validate

DATASET_NAME = "files"
FORMAT_KINDS = {
    "messages": CONVERSATION,
    "llava": CONVERSATION,
    "captions": CONVERSATION,
    "preference": PREFERENCE,
    "unpaired": UNPAIRED,
}
FORMAT_SHAPES = {
    "messages": RECORD_SHAPES["messages"],
    "llava": RECORD_SHAPES["llava"],
    "captions": '{"image": "a.jpg", "text": "a caption"}',
    "preference": RECORD_SHAPES["preference"],
    "unpaired": RECORD_SHAPES["unpaired"],
}
CAPTION_KEY = "text"
SHOWN_REASONS = 3  # skipped records quoted when no record at all could be read
MAX_CHOICES, MAX_LABEL_CHARS = 64, 1_000  # a record's options for loglik-choice, and the length of one (or a category)


class Params(StrictModel):
    """Params of the ``files`` data source, as a recipe's ``data:`` block gives them."""

    paths: str | list[str]  # .jsonl or .json files
    format: Literal["auto", "messages", "llava", "captions", "preference", "unpaired"] = "auto"
    base_dir: str | None = None  # media paths are relative to this; default: each file's folder
    skip_invalid: bool = False  # skip malformed records (listed in the report) instead of stopping
    modalities: list[str] | None = None  # the registered modalities records may use; default: all
    category_field: str = "category"  # the record key whose text groups items for scores per category
    choices_field: str = "choices"  # the record key listing an item's options (the loglik-choice metric)
    metric: str | None = None  # the metric mmllm eval scores these files with unless told another


def build_files_dataset(params: Params | dict[str, Any]) -> DataReport:
    """The ``files`` data source's factory: :func:`read_examples` with ``params``, modalities named."""
    if not isinstance(params, Params):
        params = validate(Params, params, where=f"{DATASET_NAME}.params")
    modalities = None
    if params.modalities is not None:
        where = f"{DATASET_NAME}.params.modalities"
        modalities = {name: get_registry().modality(name, where=where) for name in params.modalities}
    report = read_examples(
        params.paths,
        format=params.format,
        modalities=modalities,
        base_dir=params.base_dir,
        skip_invalid=params.skip_invalid,
        category_field=params.category_field,
        choices_field=params.choices_field,
    )
    report.metric = params.metric
    return report


build_files_dataset.Params = Params  # type: ignore[attr-defined]


def read_examples(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    format: str = "auto",
    modalities: Mapping[str, ModalitySpec] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    skip_invalid: bool = False,
    category_field: str = "category",
    choices_field: str = "choices",
) -> DataReport:
    """Read and check every record of ``.jsonl`` / ``.json`` data files into typed examples.

    ``format``: one of :data:`FORMAT_KINDS` or ``"auto"`` (per record, by its keys); ``modalities``: default every
    registered one; relative media paths start at ``base_dir`` (default: the data file's folder). A malformed record
    raises :class:`DataError` naming its ``file:line``, or with ``skip_invalid`` is listed in ``skipped``. A record's
    ``category_field`` (text) and ``choices_field`` (a list of options) go into the report's ``categories`` and
    ``choices`` for ``mmllm eval``, when any record has them.
    """
    if format != "auto" and format not in FORMAT_KINDS:
        raise InputError(f"format={format!r} is not a data format; use one of: auto, {', '.join(FORMAT_KINDS)}.")
    files = file_labels(paths)
    folder = Path(os.path.abspath(os.path.expanduser(base_dir))) if base_dir is not None else None
    if folder is not None and not folder.is_dir():
        raise InputError(
            f"base_dir={os.fspath(base_dir)!r} is not a folder; give the folder that relative media paths start from."
        )
    reader = FileRecordReader(_modality_specs(modalities), format)
    report = DataReport(examples=[], skipped=[], kind=CONVERSATION, files=files)
    first_of_kind: dict[str, str] = {}
    categories: list[str | None] = []
    choices: list[list[str] | None] = []
    for label in files:
        reader.folder = folder or Path(os.path.abspath(label)).parent
        for source, record in read_records(label):
            try:
                if isinstance(record, RecordError):
                    raise record
                name, example = reader.read(record, source)
                category, options = _item_fields(record, category_field, choices_field)
            except RecordError as reason:
                if not skip_invalid:
                    raise DataError(f"{source}: {reason}") from None
                report.skipped.append((source, str(reason)))
                continue
            _check_kind(FORMAT_KINDS[name], source, first_of_kind)
            report.examples.append(example)
            categories.append(category)
            choices.append(options)
            report.formats[name] = report.formats.get(name, 0) + 1
    if not report.examples:
        reasons = "; ".join(f"{source}: {reason}" for source, reason in report.skipped[:SHOWN_REASONS])
        raise DataError(
            f"No record of {', '.join(files)} could be used ({counted(len(report.skipped), 'malformed record')}); "
            f"fix the records, first: {reasons}"
        )
    report.kind = next(iter(first_of_kind))
    if any(category is not None for category in categories):
        report.categories = [UNCATEGORISED if category is None else category for category in categories]
    if any(options is not None for options in choices):
        report.choices = choices
    return report


UNCATEGORISED = "(none)"  # the category of a record without one, among records that have one


def _item_fields(record: Any, category_field: str, choices_field: str) -> tuple[str | None, list[str] | None]:
    """A record's category (text) and options (a list of distinct texts), each None when the record has none."""
    if not isinstance(record, Mapping):
        return None, None
    category, options = record.get(category_field), record.get(choices_field)
    if category is not None and not (isinstance(category, str) and 0 < len(category.strip()) <= MAX_LABEL_CHARS):
        got = f"{len(category):,} characters" if isinstance(category, str) else f"a JSON {json_type(category)}"
        raise RecordError(
            f"'{category_field}' groups items for scores per category and must be text of 1 to "
            f"{MAX_LABEL_CHARS:,} characters; got {got}."
        )
    if options is None:
        return category, None
    if (
        not isinstance(options, list)
        or not 2 <= len(options) <= MAX_CHOICES
        or not all(isinstance(o, str) and 0 < len(o.strip()) <= MAX_LABEL_CHARS for o in options)
        or len(set(options)) != len(options)
    ):
        got = f"a list of {len(options)}" if isinstance(options, list) else f"a JSON {json_type(options)}"
        raise RecordError(
            f"'{choices_field}' lists an item's options and must be a list of 2 to {MAX_CHOICES} different texts "
            f'(each 1 to {MAX_LABEL_CHARS:,} characters), e.g. ["red", "green", "blue"]; got {got}.'
        )
    return category, list(options)


class FileRecordReader(RecordReader):
    """The core's record reader plus caption records (``{"image": path, "text": caption}``) and a wanted format
    (``"auto"``: each record's keys say which)."""

    shapes = FORMAT_SHAPES

    def __init__(self, specs: Mapping[str, ModalitySpec], wanted: str = "auto") -> None:
        super().__init__(specs)
        self.wanted = wanted

    def found(self, record: Mapping[str, Any]) -> list[str]:
        return super().found(record) or (["captions"] if CAPTION_KEY in record else [])

    def detect(self, record: Mapping[str, Any]) -> str:
        wanted = self.wanted
        if wanted != "auto" and not self.found(record):
            raise RecordError(
                f"The record has keys {sorted(record)}; a {wanted} record looks like {FORMAT_SHAPES[wanted]}."
            )
        name = super().detect(record)
        if wanted not in ("auto", name):
            raise RecordError(
                f"The record is a {name} record, but format={wanted!r} was asked for, which looks like "
                f"{FORMAT_SHAPES[wanted]}. Pass format='auto' to read files that mix formats."
            )
        return name

    def conversation(self, name: str, record: Mapping[str, Any], source: str) -> Conversation:
        return self._caption(record, source) if name == "captions" else super().conversation(name, record, source)

    def _caption(self, record: Mapping[str, Any], source: str) -> Conversation:
        keys = [name for name in self.specs if name in record]
        if len(keys) != 1:
            found = f"several ({', '.join(keys)}). Write one record per item" if keys else "none"
            raise RecordError(
                f"A caption record pairs 'text' with exactly one modality key ({', '.join(self.specs) or 'none'}), "
                f"e.g. {FORMAT_SHAPES['captions']}; this one has {found}."
            )
        modality, caption = keys[0], record[CAPTION_KEY]
        if not isinstance(caption, str) or not caption.strip():
            got = repr(caption) if isinstance(caption, str) else f"a JSON {json_type(caption)}"
            raise RecordError(
                f"The caption 'text' must be non-empty text; got {got}. Give the caption or leave the record out."
            )
        placeholders = sorted(set(self.parser.matches(caption)))
        if placeholders:
            raise RecordError(
                f"The caption holds {', '.join(placeholders)}; a caption record's 'text' is the caption alone (the "
                f"{modality} comes before it by itself). Remove the placeholder."
            )
        item = MediaPart(modality, self._media(modality, record[modality], modality))
        return Conversation((Message("user", (item,)), Message(ANSWER_ROLE, (TextPart(caption),))), source)


def _modality_specs(modalities: Mapping[str, ModalitySpec] | None) -> dict[str, ModalitySpec]:
    if modalities is None:
        return {entry.name: entry.value for entry in get_registry().entries("modalities")}
    if not isinstance(modalities, Mapping):
        raise InputError(f"modalities must map modality names to ModalitySpecs; got {type(modalities).__name__}.")
    for name, spec in modalities.items():
        if not isinstance(spec, ModalitySpec):
            raise InputError(f"modalities[{name!r}] must be a ModalitySpec; got {type(spec).__name__}.")
    return dict(modalities)


def _check_kind(kind: str, source: str, first_of_kind: dict[str, str]) -> None:
    first_of_kind.setdefault(kind, source)
    if len(first_of_kind) > 1:
        other = next(k for k in first_of_kind if k != kind)
        raise DataError(
            f"{source}: This record is a {kind} example, but {first_of_kind[other]} is a {other} example; "
            "conversations (for pt and sft) and preference pairs (for dpo) cannot be mixed in one call. "
            "Keep them in separate files and read them separately."
        )
