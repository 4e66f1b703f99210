"""Training data: a data source's example dicts (messages, LLaVA and preference records) read into typed, checked
examples, and the report a data source returns. Reading data files is the built-in ``files`` data source."""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmllm_sdk.components.modality import DIRECTORY, ModalitySpec
from mmllm_sdk.data.examples import Conversation, Example, LabelledAnswer, Message, PreferencePair
from mmllm_sdk.data.messages import ANSWER_ROLE, MessageParser, RecordError, json_type
from mmllm_sdk.errors import DataError
from mmllm_sdk.files import atomic_write

# the kinds of example a data source returns: conversations (pt, sft), preference pairs (dpo …), unpaired answers (kto)
CONVERSATION, PREFERENCE, UNPAIRED = "conversation", "preference", "unpaired"
RECORD_SHAPES = {  # the record formats of a data source's example dicts
    "messages": '{"messages": [{"role": "user", "content": [{"type": "image", "path": "a.jpg"}, ...]}, ...]}',
    "llava": '{"image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\\n..."}, ...]}',
    "preference": '{"prompt": "..." or [messages], "chosen": "...", "rejected": "..."}',
    "unpaired": '{"prompt": "..." or [messages], "completion": "...", "label": true or false}',
}
PREFERENCE_KEYS = ("prompt", "chosen", "rejected")
UNPAIRED_KEYS = ("prompt", "completion", "label")
RECORD_MARKERS = {  # a "prompt" alone marks no format: it starts a preference pair and an unpaired answer alike
    "messages": ("messages",),
    "llava": ("conversations",),
    "preference": PREFERENCE_KEYS[1:],
    "unpaired": UNPAIRED_KEYS[1:],
}
URL_PREFIXES = ("http://", "https://")
SHOWN_FILES = 3  # file names a summary lists before it only counts them


@dataclass
class DataReport:
    """The examples read from data files, the records skipped and why, and what kind of examples they are."""

    examples: list[Any]  # typed examples (a data source may give dicts in the message format)
    skipped: list[tuple[str, str]]  # (source "file:line", reason), with skip_invalid only
    kind: str  # "conversation" (pt, sft), "preference" (dpo, simpo, orpo) or "unpaired" (kto)
    files: list[str] = field(default_factory=list)  # the data files, as given
    formats: dict[str, int] = field(default_factory=dict)  # examples read per record format
    categories: list[str] | None = None  # per example, what groups it for scores per category (colour, shape …)
    metric: str | None = None  # the metric ``mmllm eval`` scores this data with unless told another
    choices: list[list[str] | None] | None = None  # per example, its options (for a metric that picks among them)

    def summary(self) -> str:
        shown = ", ".join(self.files) if len(self.files) <= SHOWN_FILES else f"{len(self.files)} files"
        line = f"read {counted(len(self.examples), f'{self.kind} example')} from {shown}"
        if self.skipped:
            line += f"; skipped {counted(len(self.skipped), 'malformed record')} (skip_invalid)"
        return line

    def media_counts(self) -> dict[str, int]:
        parts = (part for example in self.examples for part in as_example(example).parts())
        counts = Counter(part.modality for part in parts if getattr(part, "source", None) is not None)
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
            atomic_write(path, text)
        return text


def caption_example(modality: str, path: str | os.PathLike[str], caption: str, source: str) -> dict[str, Any]:
    """A PT example in the message format, as a data source returns X-text pairs: one file, then its caption."""
    question = {"role": "user", "content": [{"type": modality, "path": str(path)}]}
    answer = {"role": ANSWER_ROLE, "content": [{"type": "text", "text": caption}]}
    return {"messages": [question, answer], "source": source}


def caption_report(examples: Sequence[dict[str, Any]], folder: str | os.PathLike[str]) -> DataReport:
    """Examples made by :func:`caption_example` from the files in ``folder``, as a data source's DataReport."""
    return DataReport(
        examples=list(examples), skipped=[], kind=CONVERSATION, files=[str(folder)], formats={"messages": len(examples)}
    )


def as_example(example: Any, modalities: Mapping[str, ModalitySpec] | None = None) -> Example:
    """A typed example: ``example`` itself, or a dict in the message format (``{"messages": [...], "source": ...}``
    or a preference pair's keys, as a data source may give) read as a record is; ``modalities`` checks its parts."""
    if isinstance(example, (Conversation, PreferencePair, LabelledAnswer)):
        return example
    source = str(example.get("source", "")) if isinstance(example, Mapping) else ""
    try:
        return RecordReader(modalities).read(example, source)[1]
    except RecordError as reason:
        raise DataError(f"{source or 'an example'}: {reason}") from None


class RecordReader:
    """A data source's example dicts into typed examples through one :class:`MessageParser`: message-format records
    (LLaVA ones too) and preference pairs, told apart by ``markers``. ``specs`` None: any modality, sources as
    given; else only those modalities, their media files checked (relative paths start at ``folder``). The ``files``
    data source subclasses it for its file formats."""

    markers = RECORD_MARKERS  # the keys that tell each format
    shapes = RECORD_SHAPES  # what each format looks like, for error messages

    def __init__(self, specs: Mapping[str, ModalitySpec] | None) -> None:
        self.specs = dict(specs or {})
        self.folder = Path.cwd()
        placeholders = {name: spec.placeholder for name, spec in self.specs.items()}
        self.parser = MessageParser(placeholders, self.specs, self._media) if specs is not None else MessageParser()

    def read(self, record: Any, source: str) -> tuple[str, Example]:
        """(the record's format, its typed example); a record that cannot be used raises :class:`RecordError`."""
        if not isinstance(record, Mapping):
            raise RecordError(
                f"The record is a JSON {json_type(record)}, not an object; each record is an object such as "
                f"{self.shapes['messages']}."
            )
        name = self.detect(record)
        if name == "preference":
            return name, self._preference(record, source)
        if name == "unpaired":
            return name, self._unpaired(record, source)
        example = self.conversation(name, record, source)
        if not any(message.role == ANSWER_ROLE for message in example.messages):
            raise RecordError(
                "The conversation has no assistant message, so training has nothing to learn from it; add the answer "
                "({'role': 'assistant', ...}, or 'from': 'gpt' in LLaVA records) or leave the record out."
            )
        return name, Conversation(example.messages, source)

    def found(self, record: Mapping[str, Any]) -> list[str]:
        """The formats whose marker keys the record has."""
        return [name for name, keys in self.markers.items() if any(key in record for key in keys)]

    def detect(self, record: Mapping[str, Any]) -> str:
        found = self.found(record)
        if len(found) > 1:
            raise RecordError(
                f"The record has the keys of several formats ({' and '.join(found)}; keys {sorted(record)}); give "
                "each record the keys of one format."
            )
        if not found and "prompt" in record:
            raise RecordError(
                f"The record has a 'prompt' but keys {sorted(record)}: a preference pair also needs 'chosen' and "
                f"'rejected' ({self.shapes['preference']}), an unpaired answer 'completion' and 'label' "
                f"({RECORD_SHAPES['unpaired']})."
            )
        if not found:
            shapes = "; ".join(f"{name}: {shape}" for name, shape in self.shapes.items())
            raise RecordError(
                f"The record has keys {sorted(record)}, which fit no data format. The formats are {shapes}."
            )
        return found[0]

    def conversation(self, name: str, record: Mapping[str, Any], source: str) -> Conversation:
        """A conversation record of format ``name`` (``messages`` or ``llava`` here) as a typed conversation."""
        return self.parser.conversation(record)

    def _preference(self, record: Mapping[str, Any], source: str) -> PreferencePair:
        self._require(record, "preference", PREFERENCE_KEYS)
        prompt = self._prompt(record, "the two answers reply to")
        answers = {
            key: self._answer(record[key], key, "a preference pair needs two non-empty answers")
            for key in PREFERENCE_KEYS[1:]
        }
        if answers["chosen"] == answers["rejected"]:
            raise RecordError("'chosen' and 'rejected' are the same; a preference pair needs two different answers.")
        return PreferencePair(prompt, answers["chosen"], answers["rejected"], source)

    def _unpaired(self, record: Mapping[str, Any], source: str) -> LabelledAnswer:
        self._require(record, "unpaired", UNPAIRED_KEYS)
        label = record["label"]
        if not isinstance(label, bool):
            raise RecordError(
                f"'label' is the JSON {json_type(label)} {json.dumps(label)}; it is true (a desirable answer) or "
                "false (an undesirable one), a JSON boolean."
            )
        prompt = self._prompt(record, "the answer replies to")
        return LabelledAnswer(
            prompt, self._answer(record["completion"], "completion", "it needs a non-empty answer"), label, source
        )

    def _require(self, record: Mapping[str, Any], name: str, keys: tuple[str, ...]) -> None:
        missing = [key for key in keys if key not in record]
        if missing:
            needed = ", ".join(repr(key) for key in keys[:-1]) + f" and {keys[-1]!r}"
            raise RecordError(
                f"The {name} record has no {' or '.join(repr(k) for k in missing)}; it needs {needed}, e.g. "
                f"{self.shapes.get(name, RECORD_SHAPES[name])}."
            )

    def _prompt(self, record: Mapping[str, Any], replied: str) -> tuple[Message, ...]:
        """A preference or unpaired record's 'prompt' (text or messages), its media items expanded."""
        prompt = record["prompt"]
        if isinstance(prompt, str) and not prompt.strip():
            raise RecordError(f"The 'prompt' is empty; give the question {replied}.")
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        messages = self.parser.messages(prompt, "prompt")
        return tuple(self.parser.expand(messages, self.parser.record_items(record), "prompt"))

    def _answer(self, value: Any, key: str, when_empty: str) -> tuple[Message, ...]:
        """An answer: a string, one assistant message or a list of them; ``when_empty`` ends the empty one's error."""
        if isinstance(value, str) and not value.strip():
            raise RecordError(f"'{key}' is empty; {when_empty}.")
        value = [{"role": ANSWER_ROLE, "content": value}] if isinstance(value, str) else value
        answer = self.parser.messages([value] if isinstance(value, Mapping) else value, key, roles=(ANSWER_ROLE,))
        return tuple(self.parser.expand(answer, None, key))

    def _media(self, modality: str, source: Any, where: str) -> str:  # the absolute path of a file a loader reads
        if not isinstance(source, str) or not source:
            got = repr(source) if isinstance(source, str) else f"a JSON {json_type(source)}"
            raise RecordError(f"{where}: the {modality} path must be non-empty text; got {got}.")
        if source.startswith(URL_PREFIXES):
            raise RecordError(
                f"{where}: the {modality} {source!r} is a URL; training data reads local files (each is read every "
                "epoch). Download it and give its path."
            )
        path = os.path.normpath(os.path.join(self.folder, os.path.expanduser(source)))
        spec = self.specs[modality]
        try:
            mode = os.stat(path).st_mode
        except (OSError, ValueError):  # ValueError: a NUL in the path
            raise RecordError(
                f"{where}: the {modality} file {source!r} does not exist (looked for {path!r}; relative paths are read "
                f"from {str(self.folder)!r}). Pass base_dir= the folder that holds the media, or fix the path."
            ) from None
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # reading a FIFO or a device would block or never end
            raise RecordError(f"{where}: the {modality} file {source!r} is a FIFO or a device, not a regular file.")
        if stat.S_ISDIR(mode) and DIRECTORY not in spec.loaders:
            raise RecordError(f"{where}: {path!r} is a folder; {modality} inputs are files ({spec._suffixes()}).")
        suffix = os.path.splitext(path)[1].lower()
        if not stat.S_ISDIR(mode) and suffix not in spec.loaders:
            raise RecordError(
                f"{where}: the {modality} file {source!r} has suffix {suffix or '(none)'!r}, which no loader reads; "
                f"supported: {spec._suffixes()}. Convert it, or register a loader in a plugin."
            )
        return path


def counted(number: int, noun: str) -> str:
    """``3 examples``, ``1 example``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
