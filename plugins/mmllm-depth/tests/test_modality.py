"""The depth modality: every loader format, in-memory inputs, and one test per bad input."""

import numpy as np
import pytest
from mmllm_sdk.errors import InputError
from mmllm_sdk.testing import check_modality
from PIL import Image
from samples import save_png16, scene_millimetres

from mmllm_depth import DEPTH, PLACEHOLDER, DepthMap


def test_every_loader_format_passes_the_conformance_kit(depth_files):
    items = check_modality("depth", list(depth_files.values()))
    png, metres, uint16, channel = items
    assert DEPTH.placeholder == PLACEHOLDER == "<depth>"
    assert all(isinstance(item, DepthMap) and item.values.dtype == np.float32 for item in items)
    assert png.integer and uint16.integer and not metres.integer and not channel.integer
    np.testing.assert_array_equal(png.values, scene_millimetres().astype(np.float32))  # stored millimetres, unscaled
    np.testing.assert_allclose(metres.values, png.values / 1000.0, rtol=1e-6)
    assert channel.shape == (40, 48)  # (H, W, 1) -> (H, W)


def test_an_8bit_png_is_refused_as_the_wrong_bit_depth(tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(grey)
    colour = tmp_path / "colour.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(colour)
    check_modality(
        "depth",
        [save_png16(tmp_path / "good.png", scene_millimetres())],
        bad_files={grey: "is an 8-bit L (greyscale) PNG", colour: "is an 8-bit RGB PNG"},
    )
    with pytest.raises(InputError) as error:
        DEPTH.load(grey)
    message = str(error.value)
    assert "depth PNGs must be 16-bit single-channel" in message
    assert "millimetres" in message and "Kinect" in message
    assert "numpy.uint16" in message  # how to convert


def test_a_16bit_colour_png_is_refused_for_its_channels(tmp_path):
    path = tmp_path / "rgb16.png"
    # a 16-bit RGB PNG, written by hand: Pillow cannot write 48-bit colour
    import struct
    import zlib

    width, height = 4, 2
    rows = b"".join(b"\x00" + b"\x12\x34" * 3 * width for _ in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )
    with pytest.raises(InputError, match=r"a 16-bit RGB PNG .*depth needs one channel"):
        DEPTH.load(path)


def test_nan_depth_is_refused_with_a_count(tmp_path):
    depth = np.full((6, 6), 2.5, dtype=np.float32)
    depth[0, :3] = np.nan
    depth[1, 1] = np.inf
    path = tmp_path / "nan.npy"
    np.save(path, depth)
    check_modality(
        "depth", [save_png16(tmp_path / "good.png", scene_millimetres())], bad_files={path: "has 4 non-finite"}
    )
    with pytest.raises(InputError, match="Missing depth must be 0"):
        DEPTH.load(path)


def test_negative_depth_is_refused(tmp_path):
    depth = np.full((6, 6), 2.5, dtype=np.float32)
    depth[2, 2] = -1.0
    path = tmp_path / "negative.npy"
    np.save(path, depth)
    with pytest.raises(InputError, match=r"has 1 negative value .*the lowest is -1"):
        DEPTH.load(path)


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((4, 4, 3), dtype=np.float32), "shape (4, 4, 3)"),
        (np.zeros((2, 4, 4), dtype=np.uint16), "shape (2, 4, 4)"),
        (np.zeros((16,), dtype=np.float32), "shape (16,)"),
        (np.zeros((4, 4), dtype=np.int16), "dtype int16"),
        (np.zeros((4, 4), dtype=bool), "dtype bool"),
    ],
    ids=["rgb", "stack", "1d", "signed", "bool"],
)
def test_an_npy_of_the_wrong_shape_or_dtype_is_refused(tmp_path, array, fragment):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(InputError) as error:
        DEPTH.load(path)
    assert fragment in str(error.value) and str(path) in str(error.value)


def test_a_pickled_npy_is_refused(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"depth": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a plain numpy array file"):
        DEPTH.load(path)


def test_a_jpeg_named_png_is_refused(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path, format="JPEG")
    with pytest.raises(InputError, match="holds a JPEG image, not a PNG"):
        DEPTH.load(path)


def test_normalize_takes_arrays_16bit_images_and_depth_maps():
    millimetres = scene_millimetres()
    from_array = DEPTH.load(millimetres)
    from_image = DEPTH.load(Image.fromarray(millimetres))
    from_int_image = DEPTH.load(Image.fromarray(millimetres.astype(np.int32)))  # mode I
    assert from_array == from_image == from_int_image
    assert from_array.integer
    assert DEPTH.load(from_array) == from_array
    floats = DEPTH.load(millimetres.astype(np.float32) / 1000)
    assert not floats.integer


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ([[1.0, 2.0]], "got list"),
        (Image.fromarray(np.zeros((4, 4), dtype=np.uint8)), "is an 8-bit L (greyscale) image"),
        (Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)), "outside 0..65535"),
    ],
    ids=["list", "8bit-image", "int32-out-of-range"],
)
def test_normalize_refuses_what_is_not_a_depth_map(item, fragment):
    with pytest.raises(InputError) as error:
        DEPTH.load(item)
    assert fragment in str(error.value)
