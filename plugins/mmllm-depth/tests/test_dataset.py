"""depth-synthetic: deterministic 16-bit scenes with captions, and a PT run on them lowers the caption loss."""

import json
import math

import numpy as np
import pytest
from mmllm_sdk.data.formats import CONVERSATION
from mmllm_sdk.errors import SpecError
from mmllm_sdk.testing import check_modality, check_pt, tiny_spec
from samples import tiny_encoder_params

from mmllm_depth.dataset import DepthScene, build_depth_dataset, draw_scene


def image_path(example):
    return example["messages"][0]["content"][0]["path"]


def caption(example):
    return example["messages"][1]["content"][0]["text"]


def test_the_dataset_writes_16bit_millimetre_pngs_with_captions(tmp_path):
    report = build_depth_dataset({"out_dir": str(tmp_path / "a"), "num_examples": 6, "seed": 3})
    assert report.kind == CONVERSATION and report.formats == {"messages": 6} and report.skipped == []
    assert report.files == [str(tmp_path / "a")] and report.media_counts() == {"depth": 6}
    assert [e["source"] for e in report.examples] == [f"depth-synthetic:{i}" for i in range(6)]
    items = check_modality("depth", [image_path(e) for e in report.examples])
    for index, (example, item) in enumerate(zip(report.examples, items, strict=True)):
        scene = draw_scene(3, index)
        assert caption(example) == scene.caption()
        assert item.integer and item.shape == (32, 32)
        valid = item.values[item.values > 0]
        assert valid.max() == scene.wall * 1000  # the wall, in millimetres
        assert abs(valid.min() - scene.distance * 1000) <= 10  # the object's front (pixel centres miss it by < 1 cm)
        assert 0 < np.count_nonzero(item.values == 0) < 0.1 * item.values.size  # a few missing pixels


def test_the_dataset_is_deterministic(tmp_path):
    first = build_depth_dataset({"out_dir": str(tmp_path / "a"), "num_examples": 4, "size": 24})
    second = build_depth_dataset({"out_dir": str(tmp_path / "b"), "num_examples": 4, "size": 24})
    assert [caption(e) for e in first.examples] == [caption(e) for e in second.examples]
    for a, b in zip(first.examples, second.examples, strict=True):
        with open(image_path(a), "rb") as x, open(image_path(b), "rb") as y:
            assert x.read() == y.read()
    other_seed = build_depth_dataset({"out_dir": str(tmp_path / "c"), "num_examples": 4, "seed": 1, "size": 24})
    assert [caption(e) for e in other_seed.examples] != [caption(e) for e in first.examples]


def test_captions_state_shape_distance_position_and_wall():
    sphere = DepthScene(shape="sphere", distance=1.5, position="left", wall=4.0)
    assert sphere.caption() == "A sphere 1.5 metres away, on the left, in front of a wall 4 metres away."
    box = DepthScene(shape="box", distance=1.0, position="centre", wall=3.0)
    assert box.caption() == "A box 1 metre away, in the centre, in front of a wall 3 metres away."
    scenes = {draw_scene(0, index) for index in range(60)}
    assert {scene.shape for scene in scenes} == {"box", "sphere", "cylinder"}
    assert {scene.position for scene in scenes} == {"left", "centre", "right"}
    assert all(scene.distance < scene.wall for scene in scenes)


def test_bad_dataset_params_are_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="num_examples"):
        build_depth_dataset({"out_dir": str(tmp_path), "num_examples": 0})
    with pytest.raises(SpecError, match="is not a known field"):
        build_depth_dataset({"out_dir": str(tmp_path), "image_size": 32})


def test_pt_on_the_dataset_lowers_the_caption_loss(tmp_path, tokenizer_dir):
    encoder = {"name": "depth-vit", "params": tiny_encoder_params()}  # frozen: PT trains the projector only
    spec = tiny_spec(tokenizer_dir, encoders={"depth": encoder}, initializer_range=0.2)
    data = {"dataset": "depth-synthetic", "params": {"out_dir": str(tmp_path / "data"), "num_examples": 8}}
    check = check_pt(spec, data, tmp_path / "run")
    assert math.isfinite(check.loss_after)
    saved = json.loads((tmp_path / "run" / "mmllm.json").read_text())
    assert saved["components"]["inputs.depth.encoder"]["distribution"] == "mmllm-depth"
