"""The ``files`` data source's data files: ``.jsonl`` (one JSON record per line) and ``.json`` (one JSON list of
records), read record by record."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mmllm_sdk.data.messages import RecordError, json_type
from mmllm_sdk.errors import DataError, InputError

FILE_SUFFIXES = (".jsonl", ".json")


def file_labels(paths: Any) -> list[str]:
    """The data file paths as given, as strings (one path or a non-empty list of them)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, Sequence) or not paths:
        raise InputError(f"read_examples() takes a data file path or a non-empty list of them; got {paths!r:.200}.")
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise InputError(f"A data file path must be a string or a path; got {type(path).__name__}.")
    return [os.fspath(path) for path in paths]


def read_records(label: str) -> Iterator[tuple[str, Any]]:
    """(``file:line`` or ``file[index]``, record) for each record of a data file; bad JSON comes as a RecordError."""
    path = Path(label)
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
    found = 0
    records = _jsonl_records(path, label) if path.suffix.lower() == ".jsonl" else _json_records(path, label)
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
                yield source, RecordError(f"The line is not UTF-8 text ({exc.reason} at byte {exc.start}).")
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                record = RecordError(
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
            f"{label}: The data file holds a JSON {json_type(data)}; a .json data file holds a JSON list of "
            "records, like LLaVA's llava_instruct_150k.json."
        )
    for index, record in enumerate(data):
        yield f"{label}[{index}]", record
