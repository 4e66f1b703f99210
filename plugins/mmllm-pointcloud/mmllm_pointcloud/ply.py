"""A small PLY reader and writer: the vertex element's x, y, z and optional red, green, blue."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mmllm_sdk.errors import InputError

from mmllm_pointcloud.cloud import COLOUR_SCALE, PointCloud, checked_arrays

FORMATS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}  # format -> numpy byte order
VERSION = "1.0"
TYPES = {  # PLY scalar type -> numpy type (without byte order)
    "char": "i1",
    "uchar": "u1",
    "short": "i2",
    "ushort": "u2",
    "int": "i4",
    "uint": "u4",
    "float": "f4",
    "double": "f8",
    "int8": "i1",
    "uint8": "u1",
    "int16": "i2",
    "uint16": "u2",
    "int32": "i4",
    "uint32": "u4",
    "float32": "f4",
    "float64": "f8",
}
COORDINATES = ("x", "y", "z")
COLOURS = ("red", "green", "blue")
MAX_HEADER_BYTES = 1 << 20  # a header longer than this is not a PLY header


@dataclass
class Property:
    """One ``property`` line: a scalar, or a list with a count type and an item type."""

    name: str
    dtype: str  # numpy type of the value (of each item for a list)
    count_dtype: str | None = None  # numpy type of a list's count; None for a scalar


@dataclass
class Element:
    """One ``element NAME COUNT`` line and its properties."""

    name: str
    count: int
    properties: list[Property] = field(default_factory=list)

    @property
    def has_lists(self) -> bool:
        return any(p.count_dtype is not None for p in self.properties)


@dataclass
class Header:
    """A parsed PLY header; ``size`` is its length in bytes, up to and including the ``end_header`` line."""

    format: str
    elements: list[Element]
    size: int


def _header_lines(data: bytes, what: str) -> tuple[list[str], int]:
    """The header's lines (after 'ply') and the offset of the first byte after the 'end_header' line."""
    lines, start = [], 0
    while start < min(len(data), MAX_HEADER_BYTES):
        newline = data.find(b"\n", start)
        if newline < 0:
            break
        try:
            line = data[start:newline].decode("ascii").rstrip("\r")
        except UnicodeDecodeError:
            raise InputError(
                f"{what}: the PLY header holds a byte that is not ASCII (line {len(lines) + 1}); the file is corrupt."
            ) from None
        start = newline + 1
        if line.strip() == "end_header":
            return lines, start
        lines.append(line)
    raise InputError(f"{what}: the PLY header has no 'end_header' line; the file is truncated or not a PLY.")


def _parse_header(data: bytes, what: str) -> Header:
    if not (data.startswith(b"ply\n") or data.startswith(b"ply\r\n")):
        raise InputError(f"{what} is not a PLY file: it does not start with the line 'ply'. Re-export it as PLY.")
    lines, size = _header_lines(data, what)
    format_name: str | None = None
    elements: list[Element] = []
    for number, line in enumerate(lines[1:], start=2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        keyword = words[0]
        if keyword == "format":
            if len(words) != 3 or words[1] not in FORMATS or words[2] != VERSION:
                raise InputError(
                    f"{what}: header line {number} {line.strip()!r} is not a known PLY format; "
                    f"use 'format ascii|binary_little_endian|binary_big_endian {VERSION}'."
                )
            format_name = words[1]
        elif keyword == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise InputError(f"{what}: header line {number} {line.strip()!r} is not 'element NAME COUNT'.")
            elements.append(Element(words[1], int(words[2])))
        elif keyword == "property":
            if not elements:
                raise InputError(f"{what}: header line {number} declares a property before any element.")
            elements[-1].properties.append(_parse_property(words, line, number, what))
        else:
            raise InputError(
                f"{what}: header line {number} {line.strip()!r} starts with an unknown keyword {keyword!r}; "
                "a PLY header has format, element, property, comment and obj_info lines."
            )
    if format_name is None:
        raise InputError(f"{what}: the PLY header has no 'format' line; the file is corrupt.")
    return Header(format_name, elements, size)


def _parse_property(words: list[str], line: str, number: int, what: str) -> Property:
    if len(words) == 3 and words[1] in TYPES:
        return Property(words[2], TYPES[words[1]])
    if len(words) == 5 and words[1] == "list" and words[2] in TYPES and words[3] in TYPES:
        if TYPES[words[2]].startswith("f"):
            raise InputError(f"{what}: header line {number} {line.strip()!r} has a float list count type.")
        return Property(words[4], TYPES[words[3]], TYPES[words[2]])
    raise InputError(
        f"{what}: header line {number} {line.strip()!r} is not 'property TYPE NAME' or "
        f"'property list COUNT_TYPE ITEM_TYPE NAME' with types among {', '.join(TYPES)}."
    )


def _truncated(what: str, element: Element, detail: str) -> InputError:
    return InputError(
        f"{what} is truncated: the header promises {element.count} {element.name!r} rows, but {detail}. "
        "Re-export or re-download the file."
    )


# binary -----------------------------------------------------------------------------------------


def _walk_binary(
    data: bytes, offset: int, element: Element, order: str, what: str, wanted: tuple[str, ...] = ()
) -> tuple[int, dict[str, np.ndarray]]:
    """Step over ``element``'s rows one by one (needed when it has list properties).

    Returns the offset after the element and, for each name in ``wanted``, its values.
    """
    values = {name: np.empty(element.count, dtype=np.float64) for name in wanted}
    steps = []  # per property: (scalar size, count dtype, item size, wanted name or None)
    for prop in element.properties:
        if prop.count_dtype is None:
            steps.append((np.dtype(prop.dtype).itemsize, None, 0, prop.name if prop.name in values else None))
        else:
            steps.append((0, np.dtype(order + prop.count_dtype), np.dtype(prop.dtype).itemsize, None))
    types = {p.name: np.dtype(order + p.dtype) for p in element.properties if p.name in values}
    for row in range(element.count):
        for size, count_dtype, item_size, name in steps:
            if count_dtype is not None:
                end = offset + count_dtype.itemsize
                if end > len(data):
                    raise _truncated(what, element, f"the data ends in row {row}")
                count = int(np.frombuffer(data, count_dtype, 1, offset)[0])
                if count < 0:
                    raise InputError(f"{what}: row {row} of {element.name!r} has a negative list length {count}.")
                offset = end + count * item_size
            else:
                if name is not None and offset + size <= len(data):
                    values[name][row] = np.frombuffer(data, types[name], 1, offset)[0]
                offset += size
            if offset > len(data):
                raise _truncated(what, element, f"the data ends in row {row}")
    return offset, values


def _skip_binary(data: bytes, offset: int, element: Element, order: str, what: str) -> int:
    """The offset after ``element``; fast when every row has the same size."""
    if not element.has_lists:
        end = offset + element.count * _row_dtype(element, order).itemsize
        if end > len(data):
            raise _truncated(what, element, f"only {len(data) - offset} bytes of data follow the header")
        return end
    # Try the common case (every list as long as in the first row: triangles) with numpy, check it, else walk.
    fixed = _fixed_row_dtype(data, offset, element, order)
    if fixed is not None and offset + element.count * fixed.itemsize <= len(data):
        rows = np.frombuffer(data, fixed, element.count, offset)
        if all((rows[f"n{i}"] == rows[f"n{i}"][0]).all() for i, p in enumerate(element.properties) if p.count_dtype):
            return offset + element.count * fixed.itemsize
    return _walk_binary(data, offset, element, order, what)[0]


def _row_dtype(element: Element, order: str) -> np.dtype:
    return np.dtype([(f"p{i}", order + p.dtype) for i, p in enumerate(element.properties)])


def _fixed_row_dtype(data: bytes, offset: int, element: Element, order: str) -> np.dtype | None:
    """The row layout if every list had the length it has in the first row, or None when that cannot be read."""
    fields = []
    for i, prop in enumerate(element.properties):
        if prop.count_dtype is None:
            fields.append((f"p{i}", order + prop.dtype))
            offset += np.dtype(prop.dtype).itemsize
            continue
        count_dtype = np.dtype(order + prop.count_dtype)
        if offset + count_dtype.itemsize > len(data) or element.count == 0:
            return None
        count = int(np.frombuffer(data, count_dtype, 1, offset)[0])
        if count < 0:
            return None
        fields.append((f"n{i}", count_dtype))
        if count:
            fields.append((f"p{i}", order + prop.dtype, (count,)))
        offset += count_dtype.itemsize + count * np.dtype(prop.dtype).itemsize
    return np.dtype(fields)


def _read_binary_vertices(data: bytes, offset: int, element: Element, order: str, what: str) -> dict[str, np.ndarray]:
    wanted = tuple(p.name for p in element.properties if p.name in COORDINATES + COLOURS and p.count_dtype is None)
    if element.has_lists:
        return _walk_binary(data, offset, element, order, what, wanted)[1]
    row = _row_dtype(element, order)
    if offset + element.count * row.itemsize > len(data):
        raise _truncated(
            what,
            element,
            f"only {len(data) - offset} of the {element.count * row.itemsize} bytes they take follow the header",
        )
    rows = np.frombuffer(data, row, element.count, offset)
    names = {p.name: f"p{i}" for i, p in enumerate(element.properties)}
    return {name: rows[names[name]] for name in wanted}


# ascii ------------------------------------------------------------------------------------------


def _read_ascii(data: bytes, header: Header, what: str) -> dict[str, np.ndarray]:
    tokens = data[header.size :].split()
    position = 0
    for element in header.elements:
        if not element.has_lists:  # fixed-width rows: read or skip them at once
            width = len(element.properties)
            end = position + element.count * width
            if end > len(tokens):
                raise _truncated(what, element, f"only {(len(tokens) - position) // max(width, 1)} full rows follow")
            if element.name == "vertex":
                table = _ascii_numbers(tokens[position:end], what, element).reshape(element.count, width)
                return {p.name: table[:, i] for i, p in enumerate(element.properties)}
            position = end
            continue
        scalars = [p.name for p in element.properties if p.count_dtype is None]
        values = {name: np.empty(element.count) for name in scalars} if element.name == "vertex" else {}
        for row in range(element.count):
            for prop in element.properties:
                if position >= len(tokens):
                    raise _truncated(what, element, f"the data ends in row {row}")
                if prop.count_dtype is None:
                    if prop.name in values:
                        values[prop.name][row] = _ascii_numbers(tokens[position : position + 1], what, element)[0]
                    position += 1
                    continue
                count = _ascii_numbers(tokens[position : position + 1], what, element)[0]
                if count < 0 or count != int(count):
                    raise InputError(f"{what}: row {row} of {element.name!r} has a list length {count}.")
                position += 1 + int(count)
        if position > len(tokens):
            raise _truncated(what, element, "the data ends inside its last row")
        if element.name == "vertex":
            return values
    raise AssertionError("unreachable: the caller checked that there is a vertex element")


def _ascii_numbers(tokens: list[bytes], what: str, element: Element) -> np.ndarray:
    try:
        return np.array(tokens).astype(np.float64)
    except ValueError as exc:
        raise InputError(f"{what}: the {element.name!r} data holds a value that is not a number ({exc}).") from None


# reading ----------------------------------------------------------------------------------------


def read_ply(path: str | os.PathLike[str]) -> PointCloud:
    """Read the ``vertex`` element of a PLY file (ascii or binary) as a :class:`PointCloud`.

    x, y, z are required; red, green, blue are optional (integers are divided by 255,
    floats kept). Every other property, and every other element, is skipped.
    """
    path = Path(path)
    what = f"The pointcloud file {str(path)!r}"
    data = path.read_bytes()
    header = _parse_header(data, what)
    vertex = next((e for e in header.elements if e.name == "vertex"), None)
    if vertex is None or vertex.count == 0:
        found = "0 vertices" if vertex is not None else "no 'vertex' element"
        raise InputError(f"{what} is a PLY with no vertices ({found}); a point cloud needs at least one point.")
    names = [p.name for p in vertex.properties]
    missing = [name for name in COORDINATES if name not in names]
    if missing:
        raise InputError(
            f"{what}: the PLY vertex element has no {', '.join(missing)} propert{'y' if len(missing) == 1 else 'ies'} "
            f"(it has: {', '.join(names) or 'none'}); a point cloud needs x, y and z."
        )
    colours = [name for name in COLOURS if name in names]
    if colours and len(colours) != len(COLOURS):
        raise InputError(
            f"{what}: the PLY vertex element has {', '.join(colours)} but not all of red, green, blue; "
            "give all three colour channels or none."
        )
    if header.format == "ascii":
        values = _read_ascii(data, header, what)
    else:
        order = FORMATS[header.format]
        offset = header.size
        for element in header.elements:
            if element is vertex:
                break
            offset = _skip_binary(data, offset, element, order, what)
        values = _read_binary_vertices(data, offset, vertex, order, what)
    xyz = np.stack([values[name] for name in COORDINATES], axis=1)
    rgb = None
    if colours:
        rgb = np.stack([values[name] for name in COLOURS], axis=1).astype(np.float64)
        if np.dtype(next(p for p in vertex.properties if p.name == "red").dtype).kind != "f":
            rgb = rgb / COLOUR_SCALE
    xyz, rgb = checked_arrays(xyz, rgb, what)
    return PointCloud(xyz, rgb)


# writing ----------------------------------------------------------------------------------------


def write_ply(path: str | os.PathLike[str], cloud: PointCloud, format: str = "binary_little_endian") -> Path:
    """Write ``cloud`` as a PLY file: float x, y, z and, with colours, uchar red, green, blue.

    ``format`` is ``ascii``, ``binary_little_endian`` or ``binary_big_endian``. The file is
    written next to its target and renamed, so a reader never sees half of it.
    """
    if format not in FORMATS:
        raise InputError(f"write_ply: format {format!r} is not one of {', '.join(FORMATS)}.")
    path = Path(path)
    colours = None if cloud.rgb is None else np.round(cloud.rgb * COLOUR_SCALE).astype(np.uint8)
    lines = ["ply", f"format {format} {VERSION}", "comment written by mmllm-pointcloud", f"element vertex {len(cloud)}"]
    lines += [f"property float {name}" for name in COORDINATES]
    if colours is not None:
        lines += [f"property uchar {name}" for name in COLOURS]
    lines.append("end_header")
    header = ("\n".join(lines) + "\n").encode("ascii")
    if format == "ascii":
        rows = []
        for index, point in enumerate(cloud.xyz):
            row = " ".join(repr(float(value)) for value in point)
            if colours is not None:
                row += " " + " ".join(str(int(value)) for value in colours[index])
            rows.append(row)
        body = ("\n".join(rows) + "\n").encode("ascii")
    else:
        order = FORMATS[format]
        fields = [(name, order + "f4") for name in COORDINATES]
        if colours is not None:
            fields += [(name, "u1") for name in COLOURS]
        table = np.empty(len(cloud), dtype=fields)
        for i, name in enumerate(COORDINATES):
            table[name] = cloud.xyz[:, i]
        if colours is not None:
            for i, name in enumerate(COLOURS):
                table[name] = colours[:, i]
        body = table.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "wb") as file:
        file.write(header + body)
    os.replace(staging, path)
    return path
