"""The pointcloud modality: PLY (ascii and binary) and .npy loaders, normalize, and every bad input's message."""

import numpy as np
import pytest
from conftest import ply_bytes, vertex_element
from mmllm_sdk.errors import InputError
from mmllm_sdk.testing import check_modality

from mmllm_pointcloud import PointCloud, load_npy, ply, read_ply, to_pointcloud, write_ply

FORMATS = ("ascii", "binary_little_endian", "binary_big_endian")
FACES = ("face", [("list", "uchar", "int", "vertex_indices"), ("uchar", "flags")], [((0, 1, 2), 1), ((1, 2, 3, 0), 2)])
TRIANGLES = ("face", [("list", "uchar", "uint", "vertex_indices")], [((0, 1, 2),), ((1, 2, 3),), ((2, 3, 0),)])
EDGES = ("edge", [("int", "vertex1"), ("int", "vertex2")], [(0, 1), (1, 2)])


def write(path, data):
    path.write_bytes(data)
    return path


@pytest.fixture
def good_files(tmp_path, cloud):
    files = [write_ply(tmp_path / f"{name}.ply", cloud, name) for name in FORMATS]
    files.append(
        write(tmp_path / "faces.ply", ply_bytes("binary_little_endian", [FACES, vertex_element(cloud), EDGES]))
    )
    np.save(tmp_path / "xyz.npy", cloud.xyz)
    np.save(tmp_path / "xyzrgb.npy", np.concatenate([cloud.xyz, cloud.rgb], axis=1))
    return [*files, tmp_path / "xyz.npy", tmp_path / "xyzrgb.npy"]


def test_the_modality_loads_ply_and_npy_files_and_refuses_empty_and_garbage_ones(good_files, cloud):
    items = check_modality("pointcloud", good_files)
    assert all(isinstance(item, PointCloud) for item in items)
    assert items[-2].rgb is None and np.array_equal(items[-2].xyz, cloud.xyz)
    assert items[-1] == cloud


def test_ascii_and_both_binary_ply_of_one_cloud_load_to_the_same_arrays(tmp_path, cloud):
    loaded = [
        read_ply(write(tmp_path / f"{f}.ply", ply_bytes(f, [vertex_element(cloud, extra=False)]))) for f in FORMATS
    ]
    for item in loaded:
        assert item.xyz.dtype == np.float32 and item.rgb.dtype == np.float32
        assert np.array_equal(item.xyz, cloud.xyz)
        assert np.array_equal(item.rgb, cloud.rgb)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("faces", [FACES, TRIANGLES], ids=["mixed-lists", "triangles"])
def test_a_ply_with_faces_before_and_after_the_vertices_loads_the_vertices(tmp_path, cloud, format, faces):
    for layout in (
        [faces, vertex_element(cloud)],
        [vertex_element(cloud), faces],
        [faces, EDGES, vertex_element(cloud), faces],
    ):
        item = read_ply(write(tmp_path / "mesh.ply", ply_bytes(format, layout)))
        assert item == cloud


def test_equal_length_lists_after_a_scalar_are_skipped_in_one_step(cloud):
    faces = (
        "face",
        [("int", "material"), ("list", "uchar", "int", "vertex_indices")],
        [(7, (0, 1, 2)), (8, (1, 2, 3))],
    )
    data = ply_bytes("binary_big_endian", [faces, vertex_element(cloud)])
    header = ply._parse_header(data, "test")
    assert ply._fixed_row_dtype(data, header.size, header.elements[0], ">").itemsize == 4 + 1 + 3 * 4


def test_float_colours_in_a_ply_are_kept(tmp_path, cloud):
    props = [("float", "x"), ("float", "y"), ("float", "z"), ("float", "red"), ("float", "green"), ("float", "blue")]
    rows = [(*map(float, p), *map(float, c)) for p, c in zip(cloud.xyz, cloud.rgb, strict=True)]
    item = read_ply(write(tmp_path / "float.ply", ply_bytes("binary_big_endian", [("vertex", props, rows)])))
    assert np.array_equal(item.rgb, cloud.rgb)


def test_npy_colours_of_0_to_255_are_divided_by_255(tmp_path, cloud):
    np.save(tmp_path / "bytes.npy", np.concatenate([cloud.xyz, cloud.rgb * 255], axis=1))
    np.save(tmp_path / "ints.npy", np.concatenate([np.zeros((4, 3)), np.full((4, 3), 255)], axis=1).astype(np.int64))
    assert np.allclose(load_npy(tmp_path / "bytes.npy").rgb, cloud.rgb, atol=1e-6)
    assert np.array_equal(load_npy(tmp_path / "ints.npy").rgb, np.ones((4, 3), np.float32))


def test_normalize_takes_a_pointcloud_or_an_n3_or_n6_array(cloud):
    assert to_pointcloud(cloud) is cloud
    assert to_pointcloud(cloud.xyz.tolist()) == PointCloud(cloud.xyz)
    assert to_pointcloud(np.concatenate([cloud.xyz, cloud.rgb], axis=1)) == cloud
    with pytest.raises(InputError, match=r"\(N, 3\) array of x, y, z or an \(N, 6\)"):
        to_pointcloud(np.zeros((5, 4)))
    with pytest.raises(InputError, match="got str"):
        to_pointcloud("points.ply")


# bad PLY files ------------------------------------------------------------------------------------------------------


def expect(tmp_path, cloud, name, data, fragment):
    """check_modality with one good file and a bad one whose InputError holds ``fragment`` and names the file."""
    path = write(tmp_path / name, data)
    good = write_ply(tmp_path / "good.ply", cloud)
    check_modality("pointcloud", [good], {path: fragment})
    check_modality("pointcloud", [good], {path: str(path)})  # every message names the file


def test_a_file_that_is_not_a_ply_is_refused(tmp_path, cloud):
    expect(tmp_path, cloud, "text.ply", b"solid cube\nfacet normal 0 0 1\n", "is not a PLY file")


def test_an_unknown_ply_format_is_refused(tmp_path, cloud):
    data = ply_bytes("binary_little_endian", [vertex_element(cloud)]).replace(b"binary_little_endian", b"binary_middle")
    expect(tmp_path, cloud, "format.ply", data, "is not a known PLY format")


def test_a_ply_with_no_vertex_element_is_refused(tmp_path, cloud):
    expect(
        tmp_path, cloud, "faces-only.ply", ply_bytes("ascii", [FACES]), "a PLY with no vertices (no 'vertex' element)"
    )


def test_a_ply_with_zero_vertices_is_refused(tmp_path, cloud):
    empty = ("vertex", [("float", "x"), ("float", "y"), ("float", "z")], [])
    expect(
        tmp_path, cloud, "zero.ply", ply_bytes("binary_little_endian", [empty]), "a PLY with no vertices (0 vertices)"
    )


def test_a_ply_without_z_is_refused(tmp_path, cloud):
    flat = ("vertex", [("float", "x"), ("float", "y")], [(1.0, 2.0)])
    expect(tmp_path, cloud, "flat.ply", ply_bytes("ascii", [flat]), "has no z property")


@pytest.mark.parametrize("faces_first", [False, True])
def test_a_truncated_binary_ply_is_refused(tmp_path, cloud, faces_first):
    layout = [FACES, vertex_element(cloud)] if faces_first else [vertex_element(cloud, extra=False)]
    data = ply_bytes("binary_little_endian", layout)
    expect(tmp_path, cloud, "cut.ply", data[:-5], "is truncated: the header promises 40 'vertex' rows")


def test_a_binary_ply_cut_inside_a_face_element_is_refused(tmp_path, cloud):
    data = ply_bytes("binary_big_endian", [FACES, vertex_element(cloud)])
    cut = data.index(b"end_header\n") + len(b"end_header\n") + 9  # inside the second face
    expect(tmp_path, cloud, "cut-face.ply", data[:cut], "is truncated: the header promises 2 'face' rows")


def test_a_truncated_ascii_ply_is_refused(tmp_path, cloud):
    data = ply_bytes("ascii", [vertex_element(cloud, extra=False)])
    lines = data.splitlines(keepends=True)
    expect(tmp_path, cloud, "cut-ascii.ply", b"".join(lines[:-3]), "is truncated: the header promises 40 'vertex' rows")


def test_a_ply_with_non_finite_coordinates_is_refused(tmp_path, cloud):
    props = [("float", "x"), ("float", "y"), ("float", "z")]
    data = ply_bytes("binary_little_endian", [("vertex", props, [(0.0, 1.0, 2.0), (float("nan"), 0.0, 0.0)])])
    expect(tmp_path, cloud, "nan.ply", data, "1 point(s) with non-finite coordinates")


def test_a_ply_with_only_some_colour_channels_is_refused(tmp_path, cloud):
    props = [("float", "x"), ("float", "y"), ("float", "z"), ("uchar", "red")]
    expect(tmp_path, cloud, "red.ply", ply_bytes("ascii", [("vertex", props, [(0.0, 1.0, 2.0, 9)])]), "not all of red")


# bad .npy files ----------------------------------------------------------------------------------------------------


def expect_npy(tmp_path, cloud, array, fragment):
    np.save(tmp_path / "bad.npy", array)
    good = write_ply(tmp_path / "good.ply", cloud)
    check_modality("pointcloud", [good], {tmp_path / "bad.npy": fragment})
    with pytest.raises(InputError, match=r"bad\.npy"):
        load_npy(tmp_path / "bad.npy")


def test_an_npy_of_another_shape_is_refused(tmp_path, cloud):
    expect_npy(tmp_path, cloud, np.zeros((10, 4), np.float32), "got shape (10, 4)")


def test_an_npy_of_strings_is_refused(tmp_path, cloud):
    expect_npy(tmp_path, cloud, np.array([["a", "b", "c"]]), "not numbers")


def test_an_npy_with_no_points_is_refused(tmp_path, cloud):
    expect_npy(tmp_path, cloud, np.zeros((0, 3), np.float32), "has no points (N == 0)")


def test_an_npy_with_non_finite_points_is_refused(tmp_path, cloud):
    expect_npy(tmp_path, cloud, np.array([[0, 0, 0], [np.inf, 1, 2]], np.float32), "non-finite coordinates")


def test_an_npy_with_colours_above_255_is_refused(tmp_path, cloud):
    expect_npy(tmp_path, cloud, np.array([[0, 0, 0, 300, 0, 0]], np.float32), "rgb values must be finite and in [0, 1]")
