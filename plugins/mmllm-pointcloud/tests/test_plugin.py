"""The plugin as the SDK sees it: discovery, every built-in projector, the dataset and a PT run on it."""

import math

import mmllm_sdk
import numpy as np
import pytest
from conftest import TINY
from mmllm_sdk.errors import SpecError
from mmllm_sdk.testing import check_discovered, check_pt, tiny_spec

from mmllm_pointcloud import read_ply
from mmllm_pointcloud.dataset import build_pointcloud_dataset


def model_spec(tokenizer_dir, projector, **encoder_params):
    encoder = {"name": "point-bert", "params": {**TINY, **encoder_params}, "trainable": True}
    return tiny_spec(tokenizer_dir, projector=projector, encoders={"pointcloud": encoder}, initializer_range=0.2)


def test_the_plugin_is_discovered_through_its_entry_point():
    check_discovered(
        "pointcloud",
        "mmllm-pointcloud",
        {"modalities": ["pointcloud"], "encoders": ["pointcloud/point-bert"], "datasets": ["pointcloud-synthetic"]},
    )


@pytest.mark.parametrize("projector", ["linear", "mlp", "qformer", "resampler", "pool"])
def test_a_model_with_each_built_in_projector_gives_a_finite_loss(tmp_path, tokenizer_dir, projector):
    # pool keeps 16 tokens by default, so this encoder gives 16 groups
    model = mmllm_sdk.build_model(model_spec(tokenizer_dir, projector, num_groups=16), progress=False)
    path = build_pointcloud_dataset({"out_dir": str(tmp_path), "num_examples": 1, "num_points": 32}).examples[0]
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "pointcloud", "path": path["messages"][0]["content"][0]["path"]},
                {"type": "text", "text": "What is it?"},
            ],
        },
        {"role": "assistant", "content": "A red sphere."},
    ]
    loss = model(**model.processor([conversation])).loss
    assert math.isfinite(loss.item())


def test_the_dataset_writes_the_same_readable_clouds_with_captions_for_a_seed(tmp_path):
    params = {"out_dir": str(tmp_path / "a"), "num_examples": 6, "num_points": 50}
    report = build_pointcloud_dataset(params)
    again = build_pointcloud_dataset({**params, "out_dir": str(tmp_path / "b")})
    other_seed = build_pointcloud_dataset({**params, "out_dir": str(tmp_path / "c"), "seed": 1})
    assert report.kind == "conversation" and report.formats == {"messages": 6} and report.skipped == []
    captions = [e["messages"][1]["content"][0]["text"] for e in report.examples]
    assert captions[:3] == ["A red sphere.", "A green cube.", "A blue cylinder."]
    assert [e["source"] for e in report.examples] == [f"pointcloud-synthetic:{i}" for i in range(6)]
    paths = [e["messages"][0]["content"][0]["path"] for e in report.examples]
    clouds = [read_ply(path) for path in paths]
    assert all(len(c) == 50 and c.rgb is not None for c in clouds)
    assert [open(p, "rb").read() for p in paths] == [
        open(e["messages"][0]["content"][0]["path"], "rb").read() for e in again.examples
    ]
    assert clouds[0] != read_ply(other_seed.examples[0]["messages"][0]["content"][0]["path"])
    assert np.allclose(clouds[0].rgb.mean(axis=0), np.array([220, 38, 38]) / 255, atol=0.03)  # red


@pytest.mark.parametrize(
    ("task", "question", "answers"),
    [
        ("shape", "What solid is this?", ["Sphere.", "Cube.", "Cylinder."]),
        ("colour", "What colour is this?", ["Red.", "Green.", "Blue."]),
    ],
)
def test_the_dataset_asks_a_labelled_question_about_each_cloud(tmp_path, task, question, answers):
    report = build_pointcloud_dataset({"out_dir": str(tmp_path), "num_examples": 3, "num_points": 20, "task": task})
    user, _ = report.examples[0]["messages"]
    assert user["content"][0]["type"] == "pointcloud" and user["content"][1] == {"type": "text", "text": question}
    assert [e["messages"][1]["content"] for e in report.examples] == answers
    assert report.categories == ["sphere", "cube", "cylinder"]


def test_the_dataset_refuses_bad_params(tmp_path):
    with pytest.raises(SpecError, match="num_examples"):
        build_pointcloud_dataset({"out_dir": str(tmp_path), "num_examples": 0})


def test_pt_on_the_synthetic_dataset_lowers_the_caption_loss(tmp_path, tokenizer_dir):
    spec = model_spec(tokenizer_dir, "mlp", use_rgb=True, num_groups=16)  # colours are in the captions
    data = {
        "dataset": "pointcloud-synthetic",
        "params": {"out_dir": str(tmp_path / "data"), "num_examples": 8, "num_points": 64},
    }
    # point-bert has no pretrained weights: it trains with the projector; check_pt also checks the LLM stays frozen
    check = check_pt(
        spec, data, tmp_path / "run", trainable=["inputs.pointcloud.projector", "inputs.pointcloud.encoder"]
    )
    changed = {name.split(".")[0] for name, p in check.result.model.named_parameters() if p.requires_grad}
    assert changed == {"encoders", "input_projectors"}


def test_a_conversation_can_hold_an_in_memory_array(tokenizer_dir, cloud):
    model = mmllm_sdk.build_model(model_spec(tokenizer_dir, "linear"), progress=False)
    array = np.concatenate([cloud.xyz, cloud.rgb], axis=1)
    conversation = [
        {
            "role": "user",
            "content": [{"type": "pointcloud", "pointcloud": array}, {"type": "text", "text": "And this?"}],
        },
        {"role": "assistant", "content": "A blob."},
    ]
    batch = model.processor([conversation])
    assert batch["pointcloud"]["point_groups"].shape == (1, 8, 8, 3)
    assert math.isfinite(model(**batch).loss.item())
