"""Encoder fingerprints for the feature cache: what enters them, and the encoders' cache_identity()."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmllm_sdk
from mmllm_sdk.default_plugins.encoders import CLIPVisionEncoder, VideoFramesEncoder
from mmllm_sdk.default_plugins.recipes.fingerprint import encoder_fingerprint, encoder_identity
from mmllm_sdk.errors import PluginError, SpecError
from mmllm_sdk.testing import tiny_clip_vision_config

CLIP = "hf-clip-vision"


def clip_entry(**params) -> dict:
    return {"name": CLIP, "params": {"config": tiny_clip_vision_config(), **params}}


def clip_fingerprint(seed: int = 0, **params) -> str:
    entry = clip_entry(**params)
    return encoder_fingerprint(CLIPVisionEncoder(entry["params"]), entry, seed)


@pytest.fixture
def saved_clip(tmp_path):
    """A tiny CLIP saved with save_pretrained (weights and image processor), as a ``model:`` folder."""
    torch.manual_seed(0)
    built = CLIPVisionEncoder({"config": tiny_clip_vision_config()})
    folder = tmp_path / "clip"
    built.model.save_pretrained(folder)
    built.image_processor.save_pretrained(folder)
    return folder


def model_fingerprint(folder, seed: int = 0) -> str:
    entry = {"name": CLIP, "params": {"model": str(folder)}}
    return encoder_fingerprint(CLIPVisionEncoder(entry["params"]), entry, seed)


def test_fingerprint_is_stable_across_builds_of_the_same_spec():
    first, second = clip_fingerprint(), clip_fingerprint()
    assert first == second
    assert len(first) == 64 and int(first, 16) >= 0


def test_fingerprint_is_the_same_in_another_process():
    code = (
        "from mmllm_sdk.default_plugins.recipes.feature_cache import encoder_fingerprint\n"
        "from mmllm_sdk.default_plugins.encoders import CLIPVisionEncoder\n"
        "from mmllm_sdk.testing import tiny_clip_vision_config\n"
        "entry = {'name': 'hf-clip-vision', 'params': {'config': tiny_clip_vision_config()}}\n"
        "print(encoder_fingerprint(CLIPVisionEncoder(entry['params']), entry, 0))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == clip_fingerprint()


def test_fingerprint_changes_with_params():
    base = clip_fingerprint()
    assert clip_fingerprint(feature_layer=-1) != base
    assert clip_fingerprint(select="cls_patch") != base
    assert clip_fingerprint(dtype="bfloat16") != base


def test_fingerprint_changes_with_the_seed_of_random_weights_only(saved_clip):
    assert clip_fingerprint(seed=0) != clip_fingerprint(seed=1)
    assert model_fingerprint(saved_clip, seed=0) == model_fingerprint(saved_clip, seed=1)


def test_fingerprint_changes_when_local_weights_change(saved_clip):
    before = model_fingerprint(saved_clip)
    assert model_fingerprint(saved_clip) == before
    weights = saved_clip / "model.safetensors"
    tensors = load_file(weights)
    name = next(n for n in sorted(tensors) if n.endswith("weight"))
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, weights, metadata={"format": "pt"})
    assert model_fingerprint(saved_clip) != before


def test_fingerprint_changes_when_the_image_processor_config_changes(saved_clip):
    before = model_fingerprint(saved_clip)
    config_path = saved_clip / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config["image_mean"] = [0.5, 0.5, 0.5]
    config_path.write_text(json.dumps(config))
    assert model_fingerprint(saved_clip) != before


def test_fingerprint_changes_with_the_sdk_version(monkeypatch):
    before = clip_fingerprint()
    monkeypatch.setattr(mmllm_sdk, "__version__", "999.0.0")
    assert clip_fingerprint() != before


def test_fingerprint_of_video_frames_follows_its_frame_encoder():
    def fingerprint(num_frames: int = 2, **frame_params) -> str:
        frame_encoder = {"name": CLIP, "params": {"config": tiny_clip_vision_config(), **frame_params}}
        entry = {"name": "video-frames", "params": {"frame_encoder": frame_encoder, "num_frames": num_frames}}
        return encoder_fingerprint(VideoFramesEncoder(entry["params"]), entry, 0)

    base = fingerprint()
    assert fingerprint() == base
    assert fingerprint(num_frames=3) != base
    assert fingerprint(feature_layer=-1) != base
    identity = encoder_identity(
        VideoFramesEncoder({"frame_encoder": {"name": CLIP, "params": {"config": tiny_clip_vision_config()}}}),
        {"name": "video-frames", "params": {}},
        0,
    )
    assert "image_processor" in identity["encoder"]["frame_encoder"]["preprocessing"]
    assert identity["seed"] == 0  # the frame encoder's weights are random


class CroppingEncoder(CLIPVisionEncoder):
    """A plugin-style encoder whose features also depend on a setting kept outside its params.

    Its cache_identity() returns only its addition, without super(): the default's entries count all the same.
    """

    crop = 4

    def cache_identity(self) -> dict:
        return {"crop": self.crop}


def test_cache_identity_of_an_encoder_enters_the_fingerprint():
    entry = clip_entry()
    encoder = CroppingEncoder(entry["params"])
    before = encoder_fingerprint(encoder, entry, 0)
    encoder.crop = 8
    assert encoder_fingerprint(encoder, entry, 0) != before
    identity = encoder_identity(encoder, entry, 0)["encoder"]
    assert identity["crop"] == 8
    assert identity["class"].endswith("CroppingEncoder") and "image_processor" in identity["preprocessing"]
    assert "torch.float32" in identity["dtypes"] and identity["num_tokens"] == encoder.num_tokens


def test_default_cache_identity_is_what_the_fingerprint_holds():
    entry = clip_entry()
    encoder = CLIPVisionEncoder(entry["params"])
    own = encoder.cache_identity()
    assert set(own) == {"class", "distribution", "num_tokens", "output_dim", "dtypes", "hub_commits", "preprocessing"}
    assert "mmllm-sdk" in own["distribution"]
    assert encoder_identity(encoder, entry, 0)["encoder"]["class"] == own["class"]


class ListIdentityEncoder(CLIPVisionEncoder):
    def cache_identity(self):
        return ["crop", 4]


def test_cache_identity_that_is_not_a_dict_is_a_plugin_error():
    entry = clip_entry()
    with pytest.raises(
        PluginError, match=r"ListIdentityEncoder\.cache_identity\(\) returned a list; it must return a dict"
    ):
        encoder_fingerprint(ListIdentityEncoder(entry["params"]), entry, 0)


def test_video_frames_identity_follows_its_frame_encoders_identity():
    def video(**frame_params) -> VideoFramesEncoder:
        frame_encoder = {"name": CLIP, "params": {"config": tiny_clip_vision_config(), **frame_params}}
        return VideoFramesEncoder({"frame_encoder": frame_encoder})

    base = video().cache_identity()["frame_encoder"]
    assert base["class"].endswith("CLIPVisionEncoder") and "image_processor" in base["preprocessing"]
    assert video().cache_identity()["frame_encoder"] == base
    assert "torch.bfloat16" in video(dtype="bfloat16").cache_identity()["frame_encoder"]["dtypes"]
    larger = video(config={**tiny_clip_vision_config(), "image_size": 48}).cache_identity()["frame_encoder"]
    assert larger["num_tokens"] != base["num_tokens"] and larger["preprocessing"] != base["preprocessing"]

    encoder, entry = video(), {"name": "video-frames", "params": {}}
    encoder.frame_encoder = CroppingEncoder(clip_entry()["params"])  # a frame encoder with its own identity
    before = encoder_fingerprint(encoder, entry, 0)
    encoder.frame_encoder.crop = 8
    assert encoder.cache_identity()["frame_encoder"]["crop"] == 8
    assert encoder_fingerprint(encoder, entry, 0) != before


def test_trainable_encoder_cannot_be_cached():
    entry = {**clip_entry(), "trainable": True}
    with pytest.raises(SpecError, match="trainable"):
        encoder_fingerprint(CLIPVisionEncoder(entry["params"]), entry, 0)
