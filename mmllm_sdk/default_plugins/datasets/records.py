"""The ``files`` data source's data files: ``.jsonl`` (one JSON record per line) and ``.json`` (one JSON list of
records), read record by record."""

from __future__ import annotations

import itertools
import json
import os
import stat
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from mmllm_sdk.data.messages import RecordError, json_type
from mmllm_sdk.errors import DataError, InputError
from mmllm_sdk.files import MAX_DEPTH, check_depth

FILE_SUFFIXES = (".jsonl", ".json")
MAX_LINE_BYTES = 16 << 20  # a .jsonl record (one line) holds at most this many bytes; module constants, for tests
MAX_JSON_BYTES = 2 << 30  # a .json data file is parsed whole: at most this many bytes (a larger one: use .jsonl)


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
    """(``file:line`` or ``file[index]``, record) for each record of a data file; bad JSON comes as a RecordError.
    Only a regular file is read (a FIFO or a device is refused, never opened for a blocking read), and in bounds:
    a ``.jsonl`` line of at most :data:`MAX_LINE_BYTES`, a ``.json`` file of at most :data:`MAX_JSON_BYTES`."""
    suffix = os.path.splitext(label)[1].lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(
            f"{label}: A data file must be .jsonl (one JSON record per line) or .json (a JSON list of records); "
            f"got suffix {suffix or '(none)'!r}. Convert it, or rename it if it already is one of these."
        )
    found = 0
    with _open(label) as handle:
        for source, record in _jsonl_records(handle, label) if suffix == ".jsonl" else _json_records(handle, label):
            found += 1
            yield source, record
    if not found:
        raise DataError(f"{label}: The data file holds no records, only blank lines; write records into it.")


def _open(label: str) -> BinaryIO:
    """The data file opened for reading, if it is a non-empty regular file; else a DataError that says what it is."""
    try:  # without blocking: opening a FIFO would wait for a writer
        handle = os.open(label, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, ValueError) as exc:
        found = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be opened ({exc})"
        raise DataError(
            f"{label}: The data file {found}; check the path (relative paths are read from {os.getcwd()!r})."
        ) from None
    info = os.fstat(handle)
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        os.close(handle)
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device"
        if stat.S_ISREG(info.st_mode):
            raise DataError(f"{label}: The data file is empty (0 bytes); write records into it or leave it out.")
        raise DataError(f"{label}: The data file is {kind}, not a regular file; give a .jsonl or .json file.")
    return os.fdopen(handle, "rb")


def _parse(text: str, what: str) -> Any:
    """JSON text as data nested at most files.MAX_DEPTH deep; a RecordError if it is not (JSONDecodeError: invalid)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise RecordError(f"{what} nests lists and mappings more than {MAX_DEPTH} levels deep; flatten it.") from None
    except ValueError as exc:  # a number of thousands of digits
        raise RecordError(f"{what} holds JSON the SDK does not read ({exc}).") from None
    check_depth(data, what, error=RecordError)
    return data


def _jsonl_records(handle: BinaryIO, label: str) -> Iterator[tuple[str, Any]]:
    offset = 0  # where the line starts in the file
    for number in itertools.count(1):
        raw = handle.readline(MAX_LINE_BYTES + 1)  # bytes: a line that is not UTF-8 is one bad record, not a bad file
        if not raw:
            return
        start, offset = offset, offset + len(raw)
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # the rest of the line, skipped in bounded reads
                raw = handle.readline(MAX_LINE_BYTES)
                offset += len(raw)
            reason = f"The line is over {MAX_LINE_BYTES:,} bytes; a record holds text and media paths, not the media."
            yield f"{label}:{number}", RecordError(reason)
        elif (record := _jsonl_record(raw, start)) is not None:
            yield f"{label}:{number}", record


def _jsonl_record(raw: bytes, start: int) -> Any:
    """A line's record, a RecordError saying why it is none, or None for a blank line (``start``: its file offset)."""
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")  # no byte-order mark, no newline
    except UnicodeDecodeError as exc:
        return RecordError(
            f"The line is not UTF-8 text ({exc.reason} at byte {start + exc.start:,} of the file, {exc.start} of the "
            "line); save the file as UTF-8."
        )
    if not text.strip():
        return None
    try:
        return _parse(text, "The line")
    except RecordError as exc:
        return exc
    except json.JSONDecodeError as exc:
        return RecordError(
            f"The line is not valid JSON ({exc.msg} at column {exc.colno}); each line of a .jsonl file holds one "
            "whole JSON object."
        )


def _json_records(handle: BinaryIO, label: str) -> Iterator[tuple[str, Any]]:
    data = handle.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise DataError(
            f"{label}: The data file is over {MAX_JSON_BYTES:,} bytes, the most a .json file read whole may hold; "
            "write the records one per line into a .jsonl file."
        )
    try:
        data = _parse(data.decode("utf-8-sig"), "The data file")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{label}: The data file is not UTF-8 text ({exc.reason} at byte {exc.start:,}); save it as UTF-8."
        ) from None
    except RecordError as exc:
        raise DataError(f"{label}: {exc}") from None
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
