"""Training data files: messages, LLaVA, caption and preference records read into one checked shape."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmllm_sdk.components.modality import DIRECTORY, ModalitySpec
from mmllm_sdk.data.messages import LLAVA_ROLES, SOURCE_KEYS
from mmllm_sdk.errors import DataError, InputError

FILE_SUFFIXES = (".jsonl", ".json")  # one record per line; one JSON list of records
ROLES = tuple(dict.fromkeys(LLAVA_ROLES.values()))  # the roles of Hugging Face chat messages
ANSWER_ROLE = "assistant"  # the role whose turns carry the loss
CONVERSATION, PREFERENCE = "conversation", "preference"  # the kinds of example a call returns
FORMAT_KINDS = {"messages": CONVERSATION, "llava": CONVERSATION, "captions": CONVERSATION, "preference": PREFERENCE}
FORMAT_SHAPES = {
    "messages": '{"messages": [{"role": "user", "content": [{"type": "image", "path": "a.jpg"}, ...]}, ...]}',
    "llava": '{"image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\\n..."}, ...]}',
    "captions": '{"image": "a.jpg", "text": "a caption"}',
    "preference": '{"prompt": "..." or [messages], "chosen": "...", "rejected": "..."}',
}
PREFERENCE_KEYS = ("prompt", "chosen", "rejected")
CAPTION_KEY = "text"
URL_PREFIXES = ("http://", "https://")
WORDS_TO_TOKENS = 1.3  # sub-word tokens per whitespace-separated word, roughly, in English text
SHOWN_REASONS = 3  # skipped records quoted when no record at all could be read
SHOWN_FILES = 3  # file names a summary lists before it only counts them
JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


class _Invalid(Exception):
    """One record cannot be used; the message is the reason, without the record's file:line."""


@dataclass
class DataReport:
    """The examples read from data files, the records skipped and why, and what kind of examples they are."""

    examples: list[dict[str, Any]]  # each with "messages" (or "prompt", "chosen", "rejected") and "source"
    skipped: list[tuple[str, str]]  # (source "file:line", reason), with skip_invalid only
    kind: str  # "conversation" (pt, sft) or "preference" (dpo)
    files: list[str] = field(default_factory=list)  # the data files, as given
    formats: dict[str, int] = field(default_factory=dict)  # examples read per record format

    def summary(self) -> str:
        """One line: how many examples came from which files, and how many records were skipped."""
        shown = ", ".join(self.files) if len(self.files) <= SHOWN_FILES else f"{len(self.files)} files"
        line = f"read {_count(len(self.examples), f'{self.kind} example')} from {shown}"
        if self.skipped:
            line += f"; skipped {_count(len(self.skipped), 'malformed record')} (skip_invalid)"
        return line

    def media_counts(self) -> dict[str, int]:
        """How many media items of each modality the examples hold."""
        counts = Counter(part["type"] for example in self.examples for part in content_parts(example) if "path" in part)
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        """What was read, as plain data (without the examples themselves)."""
        return {
            "summary": self.summary(),
            "kind": self.kind,
            "files": list(self.files),
            "examples": len(self.examples),
            "formats": dict(self.formats),
            "media": self.media_counts(),
            "skipped": [{"source": source, "reason": reason} for source, reason in self.skipped],
        }

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """:meth:`to_dict` as JSON text, also written to ``path`` when given (e.g. next to a training run)."""
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


def caption_example(modality: str, path: str | os.PathLike[str], caption: str, source: str) -> dict[str, Any]:
    """A PT example in the SDK's message format: a user turn holding one file of ``modality``, then its caption.

    What a data source (``register_datasets``) returns for X-text pairs, as the ``captions``
    record format reads ``{"image": "a.png", "text": "a caption"}``.
    """
    return {
        "messages": [
            {"role": "user", "content": [{"type": modality, "path": str(path)}]},
            {"role": ANSWER_ROLE, "content": [_text(caption)]},
        ],
        "source": source,
    }


def caption_report(examples: Sequence[dict[str, Any]], folder: str | os.PathLike[str]) -> DataReport:
    """Examples made by :func:`caption_example` from the files in ``folder``, as a data source's DataReport."""
    return DataReport(
        examples=list(examples), skipped=[], kind=CONVERSATION, files=[str(folder)], formats={"messages": len(examples)}
    )


def read_examples(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    format: str = "auto",
    modalities: Mapping[str, ModalitySpec] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    skip_invalid: bool = False,
) -> DataReport:
    """Read and check every record of ``.jsonl`` / ``.json`` data files.

    ``format`` is ``"messages"``, ``"llava"``, ``"captions"``, ``"preference"`` or ``"auto"``
    (decided per record by its keys). ``modalities`` maps the modality names the data may
    use to their specs (default: every registered modality). Relative media paths are
    read from ``base_dir`` (LLaVA's ``image_folder``), by default the data file's folder,
    and come back absolute. A malformed record raises :class:`DataError` naming its
    ``file:line``, or with ``skip_invalid`` is left out and listed in ``skipped``.
    """
    if format != "auto" and format not in FORMAT_KINDS:
        raise InputError(f"format={format!r} is not a data format; use one of: auto, {', '.join(FORMAT_KINDS)}.")
    files = _file_labels(paths)
    if base_dir is not None and not _absolute(base_dir).is_dir():
        raise InputError(
            f"base_dir={os.fspath(base_dir)!r} is not a folder; give the folder that relative media paths start from."
        )
    reader = _RecordReader(_modality_specs(modalities))
    report = DataReport(examples=[], skipped=[], kind=CONVERSATION, files=files)
    first_of_kind: dict[str, str] = {}
    for label in files:
        path = Path(label)
        _check_file(path, label)
        reader.folder = _absolute(base_dir) if base_dir is not None else _absolute(path).parent
        for source, record in _records(path, label):
            try:
                if isinstance(record, _Invalid):
                    raise record
                name, example = reader.read(record, format)
            except _Invalid as reason:
                if not skip_invalid:
                    raise DataError(f"{source}: {reason}") from None
                report.skipped.append((source, str(reason)))
                continue
            _check_kind(FORMAT_KINDS[name], source, first_of_kind)
            report.examples.append({**example, "source": source})
            report.formats[name] = report.formats.get(name, 0) + 1
    if not report.examples:
        reasons = "; ".join(f"{source}: {reason}" for source, reason in report.skipped[:SHOWN_REASONS])
        raise DataError(
            f"No record of {', '.join(files)} could be used ({_count(len(report.skipped), 'malformed record')}); "
            f"fix the records, first: {reasons}"
        )
    report.kind = next(iter(first_of_kind))
    return report


def estimate_length(example: Mapping[str, Any], tokens_per_item: Mapping[str, int]) -> int:
    """A cheap token count of an example for length-grouped batching, without a tokenizer.

    Words of text count ``WORDS_TO_TOKENS`` tokens each; a media item counts the LLM
    positions its projector gives (``tokens_per_item[modality]``). A preference pair
    counts its prompt and the longer of its two answers.
    """
    if "messages" in example:
        return _estimate(example["messages"], tokens_per_item)
    if all(key in example for key in PREFERENCE_KEYS):
        answers = (_estimate(example[key], tokens_per_item) for key in PREFERENCE_KEYS[1:])
        return _estimate(example["prompt"], tokens_per_item) + max(answers)
    raise InputError(
        f"estimate_length() takes an example from read_examples() (with 'messages', or 'prompt', 'chosen' and "
        f"'rejected'); got one with keys {sorted(example)}."
    )


# files -----------------------------------------------------------------------------------------


def _file_labels(paths: Any) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, Sequence) or not paths:
        raise InputError(f"read_examples() takes a data file path or a non-empty list of them; got {paths!r:.200}.")
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise InputError(f"A data file path must be a string or a path; got {type(path).__name__}.")
    return [os.fspath(path) for path in paths]


def _check_file(path: Path, label: str) -> None:
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DataError(
            f"{label}: A data file must be .jsonl (one JSON record per line) or .json (a JSON list of records); "
            f"got suffix {path.suffix or '(none)'!r}. Convert it, or rename it if it already is one of these."
        )
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DataError(
            f"{label}: The data file {what}; check the path (relative paths are read from {os.getcwd()!r})."
        )
    if path.stat().st_size == 0:
        raise DataError(f"{label}: The data file is empty (0 bytes); write records into it or leave it out.")


def _records(path: Path, label: str) -> Iterator[tuple[str, Any]]:
    """(source, record) for each record; a record that is not JSON comes as an :class:`_Invalid`."""
    found = 0
    if path.suffix.lower() == ".jsonl":
        records = _jsonl_records(path, label)
    else:
        records = _json_records(path, label)
    for source, record in records:
        found += 1
        yield source, record
    if not found:
        raise DataError(f"{label}: The data file holds no records, only blank lines; write records into it.")


def _jsonl_records(path: Path, label: str) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as handle:  # bytes: a line that is not UTF-8 is one bad record, not a bad file
        for number, raw in enumerate(handle, start=1):
            source = f"{label}:{number}"
            try:
                text = raw.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")  # no byte-order mark, no newline
            except UnicodeDecodeError as exc:
                yield source, _Invalid(f"The line is not UTF-8 text ({exc.reason} at byte {exc.start}).")
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                record = _Invalid(
                    f"The line is not valid JSON ({exc.msg} at column {exc.colno}); each line of a .jsonl file "
                    "holds one whole JSON object."
                )
            yield source, record


def _json_records(path: Path, label: str) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{label}: The data file is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{label}:{exc.lineno}: The data file is not valid JSON ({exc.msg} at column {exc.colno}); a .json "
            "data file holds one JSON list of records (with one record per line, name it .jsonl)."
        ) from None
    if not isinstance(data, list):
        raise DataError(
            f"{label}: The data file holds a JSON {_json_type(data)}; a .json data file holds a JSON list of "
            "records, like LLaVA's llava_instruct_150k.json."
        )
    for index, record in enumerate(data):
        yield f"{label}[{index}]", record


def _check_kind(kind: str, source: str, first_of_kind: dict[str, str]) -> None:
    first_of_kind.setdefault(kind, source)
    if len(first_of_kind) > 1:
        other = next(k for k in first_of_kind if k != kind)
        raise DataError(
            f"{source}: This record is a {kind} example, but {first_of_kind[other]} is a {other} example; "
            "conversations (for pt and sft) and preference pairs (for dpo) cannot be mixed in one call. "
            "Keep them in separate files and read them separately."
        )


# records ---------------------------------------------------------------------------------------


class _RecordReader:
    """Checks records and converts them into examples; ``folder`` is where relative media paths are read from."""

    def __init__(self, specs: Mapping[str, ModalitySpec]) -> None:
        self.specs = dict(specs)
        self.folder = Path.cwd()
        self.placeholder_modality = {spec.placeholder: name for name, spec in self.specs.items()}
        longest_first = sorted(self.placeholder_modality, key=len, reverse=True)
        self.placeholder_pattern = re.compile("|".join(re.escape(p) for p in longest_first)) if longest_first else None

    def read(self, record: Any, wanted: str) -> tuple[str, dict[str, Any]]:
        """The record's format and its example (without ``source``)."""
        if not isinstance(record, Mapping):
            raise _Invalid(
                f"The record is a JSON {_json_type(record)}, not an object; each record is an object such as "
                f"{FORMAT_SHAPES['messages']}."
            )
        name = self._detect(record, wanted)
        read = {
            "messages": self._messages_record,
            "llava": self._llava_record,
            "captions": self._caption_record,
            "preference": self._preference_record,
        }[name]
        return name, read(record)

    def _detect(self, record: Mapping[str, Any], wanted: str) -> str:
        markers = {"messages": "messages", "llava": "conversations"}
        found = [name for name, key in markers.items() if key in record]
        if any(key in record for key in PREFERENCE_KEYS):
            found.append("preference")
        if not found and CAPTION_KEY in record:
            found.append("captions")
        if len(found) > 1:
            raise _Invalid(
                f"The record has the keys of several formats ({' and '.join(found)}; keys {sorted(record)}); give "
                "each record the keys of one format."
            )
        if not found:
            if wanted != "auto":
                raise _Invalid(
                    f"The record has keys {sorted(record)}; a {wanted} record looks like {FORMAT_SHAPES[wanted]}."
                )
            shapes = "; ".join(f"{name}: {shape}" for name, shape in FORMAT_SHAPES.items())
            raise _Invalid(f"The record has keys {sorted(record)}, which fit no data format. The formats are {shapes}.")
        if wanted not in ("auto", found[0]):
            raise _Invalid(
                f"The record is a {found[0]} record, but format={wanted!r} was asked for, which looks like "
                f"{FORMAT_SHAPES[wanted]}. Pass format='auto' to read files that mix formats."
            )
        return found[0]

    # the four formats ----------------------------------------------------------------------------

    def _messages_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        messages = self._messages(record["messages"], "messages")
        messages = self._expand(messages, self._record_items(record), "messages")
        _require_answer(messages)
        return {"messages": messages}

    def _llava_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        turns = record["conversations"]
        _require_list(turns, "conversations", "{'from': 'human', 'value': '...'}")
        messages = []
        for index, turn in enumerate(turns):
            at = f"conversations[{index}]"
            if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
                raise _Invalid(f"{at} must be an object with 'from' and 'value'; got {turn!r:.200}.")
            role = LLAVA_ROLES.get(str(turn["from"]).lower())
            if role is None:
                raise _Invalid(f"{at} comes 'from' {turn['from']!r}; expected one of {', '.join(LLAVA_ROLES)}.")
            if not isinstance(turn["value"], str):
                raise _Invalid(f"{at}: 'value' must be a string; got a JSON {_json_type(turn['value'])}.")
            messages.append({"role": role, "content": [_text(turn["value"])]})
        messages = self._expand(messages, self._record_items(record), "conversations")
        _require_answer(messages)
        return {"messages": messages}

    def _caption_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        keys = [name for name in self.specs if name in record]
        if len(keys) != 1:
            found = f"several ({', '.join(keys)}). Write one record per item" if keys else "none"
            raise _Invalid(
                f"A caption record pairs 'text' with exactly one modality key ({', '.join(self.specs) or 'none'}), "
                f"e.g. {FORMAT_SHAPES['captions']}; this one has {found}."
            )
        modality, caption = keys[0], record[CAPTION_KEY]
        if not isinstance(caption, str) or not caption.strip():
            got = repr(caption) if isinstance(caption, str) else f"a JSON {_json_type(caption)}"
            raise _Invalid(
                f"The caption 'text' must be non-empty text; got {got}. Give the caption or leave the record out."
            )
        placeholders = sorted({match.group() for match in self._placeholders(caption)})
        if placeholders:
            raise _Invalid(
                f"The caption holds {', '.join(placeholders)}; a caption record's 'text' is the caption alone (the "
                f"{modality} comes before it by itself). Remove the placeholder."
            )
        item = self._media(modality, record[modality], modality)
        return {"messages": [{"role": "user", "content": [item]}, {"role": ANSWER_ROLE, "content": [_text(caption)]}]}

    def _preference_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        missing = [key for key in PREFERENCE_KEYS if key not in record]
        if missing:
            raise _Invalid(
                f"The preference record has no {' or '.join(repr(k) for k in missing)}; it needs 'prompt', 'chosen' "
                f"and 'rejected', e.g. {FORMAT_SHAPES['preference']}."
            )
        prompt = record["prompt"]
        if isinstance(prompt, str):
            if not prompt.strip():
                raise _Invalid("The 'prompt' is empty; give the question the two answers reply to.")
            prompt_messages = [{"role": "user", "content": [_text(prompt)]}]
        else:
            prompt_messages = self._messages(prompt, "prompt")
        example = {"prompt": self._expand(prompt_messages, self._record_items(record), "prompt")}
        for key in PREFERENCE_KEYS[1:]:
            example[key] = self._expand(self._answer(record[key], key), None, key)
        if example["chosen"] == example["rejected"]:
            raise _Invalid("'chosen' and 'rejected' are the same; a preference pair needs two different answers.")
        return example

    # parts of records --------------------------------------------------------------------------

    def _answer(self, value: Any, key: str) -> list[dict[str, Any]]:
        """chosen / rejected: a string, one assistant message or a list of them."""
        if isinstance(value, str):
            if not value.strip():
                raise _Invalid(f"'{key}' is empty; a preference pair needs two non-empty answers.")
            return [{"role": ANSWER_ROLE, "content": [_text(value)]}]
        if isinstance(value, Mapping):
            return self._messages([value], key, roles=(ANSWER_ROLE,))
        return self._messages(value, key, roles=(ANSWER_ROLE,))

    def _messages(self, value: Any, where: str, roles: Sequence[str] = ROLES) -> list[dict[str, Any]]:
        _require_list(value, where, "{'role': 'user', 'content': '...'}")
        messages = []
        for index, message in enumerate(value):
            at = f"{where}[{index}]"
            if not isinstance(message, Mapping):
                raise _Invalid(
                    f"{at} is a JSON {_json_type(message)}, not a message like {{'role': 'user', 'content': '...'}}."
                )
            missing = [key for key in ("role", "content") if key not in message]
            if missing:
                raise _Invalid(
                    f"{at} has no {' or '.join(repr(k) for k in missing)}; a message looks like "
                    "{'role': 'user', 'content': '...'}."
                )
            if message["role"] not in roles:
                expected = repr(roles[0]) if len(roles) == 1 else "one of: " + ", ".join(repr(r) for r in roles)
                raise _Invalid(f"{at} has role {message['role']!r}; expected {expected}.")
            messages.append({"role": message["role"], "content": self._content(message["content"], f"{at}.content")})
        return messages

    def _content(self, content: Any, at: str) -> list[dict[str, Any]]:
        if isinstance(content, str):
            return [_text(content)]
        if not isinstance(content, list):
            raise _Invalid(f"{at} must be a string or a list of parts; got a JSON {_json_type(content)}.")
        parts = []
        for index, part in enumerate(content):
            where = f"{at}[{index}]"
            if not isinstance(part, Mapping):
                raise _Invalid(
                    f"{where} is a JSON {_json_type(part)}, not a part like {{'type': 'text', 'text': '...'}}."
                )
            kind = part.get("type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise _Invalid(f"{where} is a text part without a 'text' string; got {dict(part)!r:.200}.")
                parts.append(_text(part["text"]))
            elif kind in self.specs:
                source = next((part[key] for key in (kind, *SOURCE_KEYS) if part.get(key) is not None), None)
                caption = part.get("caption", part.get("text"))  # what an output shows, or the text it is made from
                if source is None and isinstance(caption, str) and caption.strip():
                    parts.append({"type": kind, "caption": caption})  # an output the assistant generates
                    continue
                if source is None:
                    raise _Invalid(
                        f"{where} has no path; give the {kind} part one: {{'type': '{kind}', 'path': 'file'}} "
                        f"(or, for an output the assistant generates, a caption: {{'type': '{kind}', 'caption': '...'}})."
                    )
                parts.append(self._media(kind, source, where))
            else:
                raise _Invalid(
                    f"{where} has type {kind!r}; a content part's type is one of: {', '.join(['text', *self.specs])} "
                    "(text, or a registered modality). Install the plugin of another modality to use it."
                )
        return parts

    def _record_items(self, record: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """LLaVA-style media at the record's top level: ``{"image": "a.jpg"}`` or ``{"image": ["a.jpg", ...]}``."""
        items = {}
        for modality in self.specs:
            value = record.get(modality)
            if value is None:
                continue
            if isinstance(value, list):
                items[modality] = [self._media(modality, v, f"{modality}[{i}]") for i, v in enumerate(value)]
            else:
                items[modality] = [self._media(modality, value, modality)]
        return items

    def _media(self, modality: str, source: Any, where: str) -> dict[str, Any]:
        """A media part with its absolute path, after checking that the file exists and can be loaded."""
        if not isinstance(source, str) or not source:
            got = repr(source) if isinstance(source, str) else f"a JSON {_json_type(source)}"
            raise _Invalid(f"{where}: the {modality} path must be non-empty text; got {got}.")
        if source.startswith(URL_PREFIXES):
            raise _Invalid(
                f"{where}: the {modality} {source!r} is a URL; training data reads local files (each is read every "
                "epoch). Download it and give its path."
            )
        path = os.path.normpath(os.path.join(self.folder, os.path.expanduser(source)))
        spec = self.specs[modality]
        try:
            mode = os.stat(path).st_mode
        except OSError:
            raise _Invalid(
                f"{where}: the {modality} file {source!r} does not exist (looked for {path!r}; relative paths are read "
                f"from {str(self.folder)!r}). Pass base_dir= the folder that holds the media, or fix the path."
            ) from None
        if stat.S_ISDIR(mode) and DIRECTORY not in spec.loaders:
            raise _Invalid(f"{where}: {path!r} is a folder; {modality} inputs are files ({_suffixes(spec)}).")
        suffix = os.path.splitext(path)[1].lower()
        if not stat.S_ISDIR(mode) and suffix not in spec.loaders:
            raise _Invalid(
                f"{where}: the {modality} file {source!r} has suffix {suffix or '(none)'!r}, which no loader reads; "
                f"supported: {_suffixes(spec)}. Convert it, or register a loader in a plugin."
            )
        return {"type": modality, "path": path}

    def _placeholders(self, text: str) -> list[re.Match[str]]:
        return list(self.placeholder_pattern.finditer(text)) if self.placeholder_pattern is not None else []

    def _expand(
        self, messages: list[dict[str, Any]], items: Mapping[str, list[dict[str, Any]]] | None, where: str
    ) -> list[dict[str, Any]]:
        """Replace each placeholder in the text (``<image>``) with the record's next item of its modality, as a part.

        ``items`` is None where placeholders do not belong (the answers of a preference pair).
        """
        scanned = [  # per message: each part with the placeholders in its text
            [(part, self._placeholders(part["text"]) if part["type"] == "text" else []) for part in message["content"]]
            for message in messages
        ]
        found = [match.group() for row in scanned for _, matches in row for match in matches]
        if items is None and found:
            raise _Invalid(
                f"The text of '{where}' holds {', '.join(sorted(set(found)))}; placeholders belong in the prompt, "
                "next to the record's media. Remove them from the answer."
            )
        items = items or {}
        counts = Counter(self.placeholder_modality[placeholder] for placeholder in found)
        for modality, spec in self.specs.items():
            given = len(items.get(modality, []))
            if counts[modality] != given:
                raise _Invalid(
                    f"The text of '{where}' holds {counts[modality]} {spec.placeholder} placeholder(s) but the record "
                    f"gives {given} {modality} file(s) under {modality!r}; each {modality} file needs exactly one "
                    f"{spec.placeholder} in the text, in order (or use {{'type': '{modality}', 'path': ...}} parts)."
                )
        if not counts:
            return messages
        queues = {modality: iter(parts) for modality, parts in items.items()}
        return [
            {"role": message["role"], "content": self._split_parts(row, queues)}
            for message, row in zip(messages, scanned, strict=True)
        ]

    def _split_parts(
        self, scanned: list[tuple[dict[str, Any], list[re.Match[str]]]], queues: Mapping[str, Iterator[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        result = []
        for part, matches in scanned:
            if not matches:
                result.append(part)
                continue
            # "<image>\nWhat is it?" -> [image part, "What is it?"]: parts are rendered joined by newlines, so
            # one newline next to a placeholder belongs to the join, not to the text
            text, start = part["text"], 0
            for match in matches:
                before = text[start : match.start()].removesuffix("\n")
                before = before.removeprefix("\n") if start else before
                result.extend([_text(before)] if before else [])
                result.append(next(queues[self.placeholder_modality[match.group()]]))
                start = match.end()
            after = text[start:].removeprefix("\n")
            result.extend([_text(after)] if after else [])
        return result


# helpers ---------------------------------------------------------------------------------------


def _modality_specs(modalities: Mapping[str, ModalitySpec] | None) -> dict[str, ModalitySpec]:
    if modalities is None:
        from mmllm_sdk.registry import get_registry

        return {entry.name: entry.value for entry in get_registry().entries("modalities")}
    if not isinstance(modalities, Mapping):
        raise InputError(f"modalities must map modality names to ModalitySpecs; got {type(modalities).__name__}.")
    for name, spec in modalities.items():
        if not isinstance(spec, ModalitySpec):
            raise InputError(f"modalities[{name!r}] must be a ModalitySpec; got {type(spec).__name__}.")
    return dict(modalities)


def _require_list(value: Any, where: str, shape: str) -> None:
    if not isinstance(value, list):
        raise _Invalid(f"'{where}' must be a list of messages like {shape}; got a JSON {_json_type(value)}.")
    if not value:
        raise _Invalid(f"The conversation '{where}' is empty; give it at least one message like {shape}.")


def _require_answer(messages: list[dict[str, Any]]) -> None:
    if not any(message["role"] == ANSWER_ROLE for message in messages):
        raise _Invalid(
            "The conversation has no assistant message, so training has nothing to learn from it; add the answer "
            "({'role': 'assistant', ...}, or 'from': 'gpt' in LLaVA records) or leave the record out."
        )


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def content_parts(example: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every content part of an example read here (a conversation or a preference pair), in order."""
    for key in ("messages", *PREFERENCE_KEYS):
        for message in example.get(key, []):
            yield from message["content"]


def _estimate(messages: Sequence[Mapping[str, Any]], tokens_per_item: Mapping[str, int]) -> int:
    words, media = 0, 0
    for message in messages:
        content = message["content"]
        for part in [_text(content)] if isinstance(content, str) else content:
            if part["type"] == "text":
                words += len(part["text"].split())
            elif part["type"] in tokens_per_item:
                media += tokens_per_item[part["type"]]
            else:
                raise InputError(
                    f"estimate_length() has no token count for {part['type']!r} items; pass tokens_per_item="
                    f"{{'{part['type']}': n}} with the projector's token count."
                )
    return math.ceil(words * WORDS_TO_TOKENS) + media


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _suffixes(spec: ModalitySpec) -> str:
    return ", ".join(sorted(s for s in spec.loaders if s != DIRECTORY)) or "none registered"


def _json_type(value: Any) -> str:
    return "null" if value is None else JSON_TYPES.get(type(value), type(value).__name__)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
