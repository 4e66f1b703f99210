"""The point-bert encoder: the conformance kit, its grouping (FPS, kNN), invariances and its errors."""

import itertools

import numpy as np
import pytest
import torch
from conftest import TINY
from mmllm_sdk.errors import DimensionError, InputError, SpecError
from mmllm_sdk.testing import check_encoder

from mmllm_pointcloud import PointCloud
from mmllm_pointcloud.encoder import PointBertEncoder, farthest_point_sampling, group_cloud, normalize_points


@pytest.fixture
def clouds(cloud):
    rng = np.random.default_rng(3)
    small = PointCloud(rng.uniform(size=(5, 3)).astype(np.float32), rng.uniform(size=(5, 3)).astype(np.float32))
    return [cloud, small, PointCloud(cloud.xyz * 3 + 1, cloud.rgb[::-1].copy())]


def encode(encoder, items):
    with torch.no_grad():
        return encoder.eval()(**encoder.preprocess(items))


@pytest.mark.parametrize("use_rgb", [False, True])
def test_point_bert_passes_the_encoder_conformance_kit(clouds, use_rgb):
    encoder = check_encoder("pointcloud", "point-bert", {**TINY, "use_rgb": use_rgb}, clouds)
    assert (encoder.num_tokens, encoder.output_dim) == (8, 32)
    assert encoder.preprocess(clouds)["point_groups"].shape == (3, 8, 8, 6 if use_rgb else 3)


def test_farthest_point_sampling_picks_the_8_corners_of_a_cube_first():
    corners = np.array(list(itertools.product([0.0, 1.0], repeat=3)))
    inside = np.random.default_rng(0).uniform(0.3, 0.7, size=(200, 3))
    points = normalize_points(np.concatenate([inside[:100], corners, inside[100:]]))
    chosen = farthest_point_sampling(points, 8)
    assert sorted(chosen.tolist()) == list(range(100, 108))


def test_groups_are_the_nearest_points_relative_to_their_centre():
    xyz = np.random.default_rng(1).normal(size=(50, 3))
    groups, centres = group_cloud(xyz, None, num_groups=4, group_size=6)
    assert groups.shape == (4, 6, 3) and centres.shape == (4, 3)
    points = normalize_points(xyz)
    for group, centre in zip(groups, centres, strict=True):
        distances = np.linalg.norm(points - centre, axis=1)
        assert np.allclose(np.sort(np.linalg.norm(group, axis=1)), np.sort(distances)[:6])
    assert np.allclose(np.linalg.norm(points, axis=1).max(), 1.0)  # scaled to the unit sphere


def test_a_cloud_with_fewer_points_than_a_group_repeats_neighbours():
    groups, _ = group_cloud(np.eye(3), None, num_groups=2, group_size=7)
    assert groups.shape == (2, 7, 3)
    assert len({tuple(np.round(p, 6)) for p in groups[0]}) == 3


def test_features_do_not_change_when_the_points_are_shuffled(cloud):
    encoder = PointBertEncoder({**TINY, "use_rgb": True})
    order = np.random.default_rng(5).permutation(len(cloud))
    shuffled = PointCloud(cloud.xyz[order], cloud.rgb[order])
    assert torch.allclose(encode(encoder, [cloud]), encode(encoder, [shuffled]), atol=1e-5)


def test_features_do_not_change_under_a_translation(cloud):
    encoder = PointBertEncoder(TINY)
    moved = PointCloud(cloud.xyz + np.float32([10.0, -4.0, 2.5]), cloud.rgb)
    assert torch.allclose(encode(encoder, [cloud]), encode(encoder, [moved]), atol=1e-4)


def test_colours_are_ignored_without_use_rgb_and_used_with_it(cloud):
    grey = PointCloud(cloud.xyz, np.full_like(cloud.rgb, 0.5))
    plain = PointBertEncoder(TINY)
    assert torch.equal(encode(plain, [cloud]), encode(plain, [grey]))
    assert torch.equal(encode(plain, [cloud]), encode(plain, [PointCloud(cloud.xyz)]))
    coloured = PointBertEncoder({**TINY, "use_rgb": True})
    assert not torch.allclose(encode(coloured, [cloud]), encode(coloured, [grey]))


def test_a_cloud_without_colours_is_refused_with_use_rgb(cloud):
    encoder = PointBertEncoder({**TINY, "use_rgb": True})
    with pytest.raises(InputError, match="item 1 has no colours, but use_rgb is true"):
        encoder.preprocess([cloud, PointCloud(cloud.xyz)])


def test_preprocess_refuses_items_that_are_not_point_clouds(cloud):
    with pytest.raises(InputError, match="encoder 'point-bert': item 0 is a ndarray"):
        PointBertEncoder(TINY).preprocess([cloud.xyz])


def test_a_large_cloud_is_subsampled_to_max_points_the_same_way_every_time():
    xyz = np.random.default_rng(2).normal(size=(3000, 3)).astype(np.float32)
    encoder = PointBertEncoder({**TINY, "max_points": 1000})
    first, second = encoder.preprocess([PointCloud(xyz)]), encoder.preprocess([PointCloud(xyz.copy())])
    assert torch.equal(first["point_groups"], second["point_groups"])
    assert not torch.equal(
        first["point_centers"], PointBertEncoder(TINY).preprocess([PointCloud(xyz)])["point_centers"]
    )


def test_dim_must_be_a_multiple_of_heads():
    with pytest.raises(DimensionError, match="dim 30 is not a multiple of heads 4"):
        PointBertEncoder({**TINY, "dim": 30})


def test_max_points_below_num_groups_is_refused():
    with pytest.raises(SpecError, match="max_points is 4, fewer than num_groups 8"):
        PointBertEncoder({**TINY, "max_points": 4})


def test_an_unknown_param_is_refused():
    with pytest.raises(SpecError, match=r"point-bert\.params\.groups: is not a known field"):
        PointBertEncoder({"groups": 8})
