"""The repository's three modality plugins, installed as a user installs them, behind one LLM with images."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import mmllm_sdk
from mmllm_sdk.cli import main
from mmllm_sdk.registry import get_registry
from mmllm_sdk.testing import caption_loss, check_discovered, check_pt, tiny_clip_vision_config, tiny_spec

PLUGINS = {  # entry point -> (distribution, what it registers)
    "depth": (
        "mmllm-depth",
        {"modalities": ["depth"], "encoders": ["depth/depth-vit"], "datasets": ["depth-synthetic"]},
    ),
    "imu": ("mmllm-imu", {"modalities": ["imu"], "encoders": ["imu/imu-patch"], "datasets": ["imu-synthetic"]}),
    "pointcloud": (
        "mmllm-pointcloud",
        {"modalities": ["pointcloud"], "encoders": ["pointcloud/point-bert"], "datasets": ["pointcloud-synthetic"]},
    ),
}
ENCODERS = {  # modality -> (encoder spec, its data source and params)
    "image": (
        {"name": "hf-clip-vision", "params": {"config": tiny_clip_vision_config()}},
        ("synthetic-shapes", {"task": "captions", "image_size": 32}),
    ),
    "depth": (
        {"name": "depth-vit", "params": {"config": tiny_clip_vision_config()}},
        ("depth-synthetic", {"size": 32}),
    ),
    "imu": (
        {"name": "imu-patch", "params": {"sample_rate": 100, "window": 128, "dim": 32, "layers": 1}, "trainable": True},
        ("imu-synthetic", {"sample_rate": 100}),
    ),
    "pointcloud": (
        {
            "name": "point-bert",
            "params": {"num_groups": 8, "group_size": 8, "dim": 32, "layers": 1, "use_rgb": True},
            "trainable": True,
        },
        ("pointcloud-synthetic", {"num_points": 64}),
    ),
}
NUM_EXAMPLES = 8


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_each_plugin_is_installed_and_discovered_through_its_entry_point(name):
    distribution, registers = PLUGINS[name]
    row = check_discovered(name, distribution=distribution, registers=registers)
    assert row["version"] == "0.1.0"


@pytest.fixture
def four_modality_spec(tokenizer_dir):
    encoders = {modality: encoder for modality, (encoder, _) in ENCODERS.items()}
    return tiny_spec(tokenizer_dir, encoders=encoders, initializer_range=0.2)


@pytest.fixture
def four_modality_captions(tmp_path):
    """Examples whose user turn holds an image, a depth map, an IMU recording and a point cloud; the answer
    is the four captions, each data source's own."""
    registry = get_registry()
    reports = {
        modality: registry.get("datasets", source).build(
            {**params, "out_dir": str(tmp_path / modality), "num_examples": NUM_EXAMPLES}
        )
        for modality, (_, (source, params)) in ENCODERS.items()
    }
    examples = []
    for index in range(NUM_EXAMPLES):
        parts, captions = [], []
        for report in reports.values():
            user, answer = report.examples[index]["messages"]
            parts += [part for part in user["content"] if part["type"] != "text"]
            captions.append(answer["content"][0]["text"])
        examples.append(
            {
                "messages": [
                    {"role": "user", "content": [*parts, {"type": "text", "text": "Describe the inputs."}]},
                    {"role": "assistant", "content": " ".join(captions)},
                ]
            }
        )
    path = tmp_path / "four.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path, examples


def test_image_depth_imu_and_pointcloud_inputs_run_forward_behind_one_llm(four_modality_spec, four_modality_captions):
    model = mmllm_sdk.build_model(four_modality_spec, progress=False)
    assert {path: model.sources[path].plugin for path in model.sources if path.endswith("encoder")} == {
        "inputs.image.encoder": "mmllm_sdk.default_plugins.encoders",
        "inputs.depth.encoder": "depth",
        "inputs.imu.encoder": "imu",
        "inputs.pointcloud.encoder": "pointcloud",
    }
    _, examples = four_modality_captions
    batch = model.processor([e["messages"] for e in examples[:2]])
    placeholders = {m: (batch["input_ids"] == model.placeholder_ids[m]).sum().item() for m in ENCODERS}
    tokens = {m: 2 * model.input_projectors[m].num_tokens for m in ENCODERS}
    assert placeholders == tokens  # every item expanded to its projector's token count
    output = model(**batch)
    assert torch.isfinite(output.loss)


def test_pt_on_the_four_modalities_lowers_the_caption_loss(tmp_path, four_modality_spec, four_modality_captions):
    path, examples = four_modality_captions
    trainable = ["inputs.*.projector", "inputs.imu.encoder", "inputs.pointcloud.encoder"]  # the random encoders
    check = check_pt(four_modality_spec, path, tmp_path / "run", trainable=trainable, steps=16)
    saved = json.loads((tmp_path / "run" / "mmllm.json").read_text())
    encoders = {path: c["distribution"] for path, c in saved["components"].items() if path.endswith(".encoder")}
    assert encoders == {
        "inputs.image.encoder": "mmllm-sdk",
        "inputs.depth.encoder": "mmllm-depth",
        "inputs.imu.encoder": "mmllm-imu",
        "inputs.pointcloud.encoder": "mmllm-pointcloud",
    }
    reloaded = mmllm_sdk.MMLLM.from_pretrained(tmp_path / "run")  # the plugins' trained encoders come back too
    assert caption_loss(reloaded, examples) == pytest.approx(check.loss_after, abs=1e-5)


@pytest.mark.parametrize(
    ("modality", "categories"),
    [
        ("depth", {"box", "sphere", "cylinder"}),
        ("imu", {"standing still", "walking", "running", "turning on the spot"}),
        ("pointcloud", {"cube", "sphere", "cylinder", "cone", "torus"}),
    ],
)
def test_mmllm_eval_scores_a_plugins_data_source_per_category(tmp_path, tokenizer_dir, modality, categories, capsys):
    encoder, (source, params) = ENCODERS[modality]
    spec = tiny_spec(tokenizer_dir, encoders={modality: encoder})
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(spec))
    held_out = [f"--data-param={key}={value}" for key, value in {**params, "seed": 7, "num_examples": 12}.items()]
    argv = ["eval", str(tmp_path / "model.yaml"), source, *held_out, f"--data-param=out_dir={tmp_path / 'data'}"]
    assert main([*argv, "--max-new-tokens", "2", "--output-dir", str(tmp_path / "ev")]) == 0
    saved = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert saved["score"]["count"] == 12 and set(saved["categories"]) <= categories and len(saved["categories"]) > 1
