"""Shared fixtures: an offline test environment, a tiny tokenizer, sample clouds and a PLY byte builder."""

from mmllm_sdk.testing import configure_test_environment

configure_test_environment()

import struct  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from mmllm_sdk.testing import tiny_tokenizer  # noqa: E402

from mmllm_pointcloud import PointCloud  # noqa: E402

TINY = {"num_groups": 8, "group_size": 8, "dim": 32, "layers": 1, "heads": 4}  # the tiny encoder of every test
STRUCT = {"char": "b", "uchar": "B", "short": "h", "ushort": "H", "int": "i", "uint": "I", "float": "f", "double": "d"}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tiny")


@pytest.fixture
def cloud():
    """40 coloured points: a noisy blob, with colours exact in 8 bits."""
    rng = np.random.default_rng(7)
    xyz = rng.normal(size=(40, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(40, 3)).astype(np.float32) / 255
    return PointCloud(xyz, rgb)


def ply_bytes(format: str, elements: list[tuple[str, list[tuple[str, ...]], list[tuple]]]) -> bytes:
    """A PLY file's bytes. Each element is (name, properties, rows); a property is (TYPE, NAME) or
    ("list", COUNT_TYPE, ITEM_TYPE, NAME); a row holds one value per property (a sequence for a list)."""
    header = ["ply", f"format {format} 1.0", "comment made by the tests", "obj_info nothing"]
    for name, properties, rows in elements:
        header.append(f"element {name} {len(rows)}")
        header += [f"property {' '.join(p)}" for p in properties]
    header.append("end_header")
    body = b""
    order = "<" if format == "binary_little_endian" else ">"
    for _, properties, rows in elements:
        for row in rows:
            if format == "ascii":
                words = []
                for prop, value in zip(properties, row, strict=True):
                    words += [str(len(value)), *map(str, value)] if prop[0] == "list" else [str(value)]
                body += (" ".join(words) + "\n").encode()
                continue
            for prop, value in zip(properties, row, strict=True):
                if prop[0] == "list":
                    body += struct.pack(order + STRUCT[prop[1]], len(value))
                    body += struct.pack(order + STRUCT[prop[2]] * len(value), *value)
                else:
                    body += struct.pack(order + STRUCT[prop[0]], value)
    return ("\n".join(header) + "\n").encode() + body


def vertex_element(cloud: PointCloud, extra: bool = True) -> tuple[str, list[tuple[str, ...]], list[tuple]]:
    """The cloud as a PLY vertex element: float x y z, uchar colours and (with ``extra``) properties to skip."""
    props = [("float", "x"), ("float", "y"), ("float", "z")]
    colours = np.round(cloud.rgb * 255).astype(int)
    rows = [tuple(float(v) for v in point) for point in cloud.xyz]
    if extra:
        props = [("double", "time"), *props, ("short", "label")]
        rows = [(0.5 * i, *row, -i) for i, row in enumerate(rows)]
    props += [("uchar", "red"), ("uchar", "green"), ("uchar", "blue")]
    rows = [(*row, *map(int, colours[i])) for i, row in enumerate(rows)]
    if extra:
        props.append(("list", "uchar", "int", "neighbours"))
        rows = [(*row, tuple(range(i, i + i % 3))) for i, row in enumerate(rows)]  # lists of 0, 1 or 2 ints
    return ("vertex", props, rows)
