"""The feature cache: encoder fingerprints, item keys, safe reads and writes, and skipping the encoder on a hit."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import mmllm_sdk
from mmllm_sdk.data.feature_cache import (
    FeatureCache,
    encoder_fingerprint,
    encoder_identity,
    fill_cache,
)
from mmllm_sdk.default_plugins.encoders import CLIPVisionEncoder, VideoFramesEncoder
from mmllm_sdk.default_plugins.modalities import IMAGE
from mmllm_sdk.errors import InputError, SpecError
from mmllm_sdk.testing import tiny_clip_vision_config

CLIP = "hf-clip-vision"
FP_A, FP_B = "a" * 64, "b" * 64  # fingerprints for tests of the cache alone


def clip_entry(**params) -> dict:
    return {"name": CLIP, "params": {"config": tiny_clip_vision_config(), **params}}


def clip_fingerprint(seed: int = 0, **params) -> str:
    entry = clip_entry(**params)
    return encoder_fingerprint(CLIPVisionEncoder(entry["params"]), entry, seed)


def write_image(path, seed: int, size: tuple[int, int] = (40, 48)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


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


@pytest.fixture
def cache(tmp_path):
    return FeatureCache(tmp_path / "cache")


@pytest.fixture
def key(tmp_path, cache):
    return cache.item_key(FP_A, write_image(tmp_path / "item.png", 0))


# fingerprints -------------------------------------------------------------------------------------


def test_fingerprint_is_stable_across_builds_of_the_same_spec():
    first, second = clip_fingerprint(), clip_fingerprint()
    assert first == second
    assert len(first) == 64 and int(first, 16) >= 0


def test_fingerprint_is_the_same_in_another_process():
    code = (
        "from mmllm_sdk.data.feature_cache import encoder_fingerprint\n"
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
    """A plugin-style encoder whose features also depend on a setting kept outside its params."""

    crop = 4

    def cache_identity(self) -> dict:
        return {"crop": self.crop}


def test_cache_identity_of_an_encoder_enters_the_fingerprint():
    entry = clip_entry()
    encoder = CroppingEncoder(entry["params"])
    before = encoder_fingerprint(encoder, entry, 0)
    encoder.crop = 8
    assert encoder_fingerprint(encoder, entry, 0) != before
    assert encoder_identity(encoder, entry, 0)["encoder"]["cache_identity"] == {"crop": 8}


def test_trainable_encoder_cannot_be_cached():
    entry = {**clip_entry(), "trainable": True}
    with pytest.raises(SpecError, match="trainable"):
        encoder_fingerprint(CLIPVisionEncoder(entry["params"]), entry, 0)


# item keys --------------------------------------------------------------------------------------------


def test_item_keys_follow_file_contents_not_paths(tmp_path, cache):
    first = write_image(tmp_path / "first.png", 0)
    other = write_image(tmp_path / "other.png", 1)
    (tmp_path / "elsewhere").mkdir()
    copy = tmp_path / "elsewhere" / "copy.png"
    shutil.copyfile(first, copy)
    key = cache.item_key(FP_A, str(first))
    assert key is not None and key.startswith(FP_A + "-")
    assert cache.item_key(FP_A, copy) == key
    assert cache.item_key(FP_A, first.as_uri()) == key
    assert cache.item_key(FP_A, other) != key
    assert cache.item_key(FP_B, first) != key


def test_item_key_changes_when_a_file_is_rewritten(tmp_path, cache):
    path = write_image(tmp_path / "item.png", 0)
    before = cache.item_key(FP_A, path)
    write_image(path, 1)
    assert cache.item_key(FP_A, path) != before


def test_frame_folder_keys_follow_names_and_contents(tmp_path, cache):
    def frames(folder, seeds, names=("0.png", "1.png")):
        folder.mkdir()
        for name, seed in zip(names, seeds, strict=True):
            write_image(folder / name, seed)
        return folder

    key = cache.item_key(FP_A, frames(tmp_path / "a", (0, 1)))
    assert key is not None
    assert cache.item_key(FP_A, frames(tmp_path / "same", (0, 1))) == key
    assert cache.item_key(FP_A, frames(tmp_path / "swapped", (1, 0))) != key
    assert cache.item_key(FP_A, frames(tmp_path / "renamed", (0, 1), ("0.png", "2.png"))) != key


def test_in_memory_items_urls_and_missing_files_are_not_cacheable(tmp_path, cache):
    assert cache.item_key(FP_A, Image.new("RGB", (8, 8))) is None
    assert cache.item_key(FP_A, np.zeros((8, 8, 3), dtype=np.uint8)) is None
    assert cache.item_key(FP_A, "https://example.com/cat.png") is None
    assert cache.item_key(FP_A, tmp_path / "absent.png") is None


def test_bad_fingerprints_and_keys_are_refused(cache, tmp_path):
    with pytest.raises(InputError, match="64 lower-case hex digits"):
        cache.item_key("../../etc", write_image(tmp_path / "item.png", 0))
    with pytest.raises(InputError, match="not a feature cache key"):
        cache.get("../escape")


# reads and writes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_put_then_get_is_bitwise_equal(cache, key, dtype):
    features = torch.randn(16, 24, generator=torch.Generator().manual_seed(0)).to(dtype)
    cache.put(key, features)
    loaded = cache.get(key, shape=(16, 24), dtype=dtype)
    assert loaded is not None and loaded.dtype == dtype
    assert torch.equal(loaded.view(torch.uint8), features.view(torch.uint8))
    fingerprint, item = key.split("-")
    assert cache.path(key) == cache.directory / fingerprint / item[:2] / f"{item}.safetensors"
    assert not [p for p in cache.directory.rglob("*") if p.name.endswith(".tmp")]


def test_truncated_file_is_a_warned_miss_and_is_rewritten(cache, key, caplog):
    features = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    cache.put(key, features)
    path = cache.path(key)
    path.write_bytes(path.read_bytes()[:-5])
    with caplog.at_level(logging.WARNING, logger="mmllm_sdk.data.feature_cache"):
        assert cache.get(key) is None
    assert str(path) in caplog.text and "not a whole safetensors file" in caplog.text
    assert cache.stats.invalid == 1 and cache.stats.misses == 1
    cache.put(key, features)
    assert torch.equal(cache.get(key), features)


def test_file_written_under_another_fingerprint_is_not_returned(tmp_path, cache, caplog):
    source = write_image(tmp_path / "item.png", 0)
    key_a, key_b = cache.item_key(FP_A, source), cache.item_key(FP_B, source)
    cache.put(key_a, torch.ones(3, 4))
    cache.path(key_b).parent.mkdir(parents=True)
    shutil.copyfile(cache.path(key_a), cache.path(key_b))
    with caplog.at_level(logging.WARNING, logger="mmllm_sdk.data.feature_cache"):
        assert cache.get(key_b) is None
    assert "written for encoder fingerprint" in caplog.text
    assert not cache.path(key_b).exists()
    assert torch.equal(cache.get(key_a), torch.ones(3, 4))


def test_files_of_other_items_or_other_shapes_are_misses(tmp_path, cache, caplog):
    key_1 = cache.item_key(FP_A, write_image(tmp_path / "one.png", 1))
    key_2 = cache.item_key(FP_A, write_image(tmp_path / "two.png", 2))
    cache.put(key_1, torch.ones(3, 4))
    cache.path(key_2).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cache.path(key_1), cache.path(key_2))
    with caplog.at_level(logging.WARNING, logger="mmllm_sdk.data.feature_cache"):
        assert cache.get(key_2) is None
        assert cache.get(key_1, shape=(4, 3)) is None
        cache.put(key_1, torch.ones(3, 4))
        assert cache.get(key_1, dtype=torch.float16) is None
    assert "written for item" in caplog.text and "shape (4, 3) was expected" in caplog.text
    assert cache.stats.invalid == 3


def test_pickled_file_is_never_unpickled(cache, key, caplog):
    cache.path(key).parent.mkdir(parents=True)
    torch.save({"features": torch.ones(3, 4)}, cache.path(key))
    with caplog.at_level(logging.WARNING, logger="mmllm_sdk.data.feature_cache"):
        assert cache.get(key) is None
    assert cache.stats.invalid == 1


def test_corrupted_bytes_never_give_wrong_features(cache, key):
    features = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    cache.put(key, features)
    good = cache.path(key).read_bytes()
    for position in range(0, len(good), 3):
        damaged = bytearray(good)
        damaged[position] ^= 0x5A
        cache.path(key).parent.mkdir(parents=True, exist_ok=True)
        cache.path(key).write_bytes(bytes(damaged))
        loaded = cache.get(key)
        assert loaded is None or torch.equal(loaded, features), f"byte {position} flipped gave other features"


def test_stats_count_hits_misses_writes_and_uncacheable_items(tmp_path, cache):
    keys = [cache.item_key(FP_A, write_image(tmp_path / f"{i}.png", i)) for i in range(3)]
    assert cache.get_many([*keys, None]) == [None, None, None, None]
    cache.put(keys[0], torch.zeros(2, 2))
    cache.put(keys[1], torch.ones(2, 2))
    found = cache.get_many(keys)
    assert [f is not None for f in found] == [True, True, False]
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.writes, stats.uncacheable) == (2, 4, 2, 1)
    assert "2 hits, 4 misses" in str(stats) and stats.hit_rate == pytest.approx(1 / 3)


def test_clear_removes_cached_features_only(tmp_path, cache, key):
    cache.put(key, torch.ones(2, 2))
    keep = cache.directory / "notes.txt"
    keep.write_text("mine")
    cache.clear(FP_B)
    assert cache.get(key) is not None
    cache.clear()
    assert cache.get(key) is None
    assert keep.read_text() == "mine"


def test_failed_write_is_counted_not_raised(tmp_path, key, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cache = FeatureCache(blocker)
    with caplog.at_level(logging.WARNING, logger="mmllm_sdk.data.feature_cache"):
        cache.put(key, torch.ones(2, 2))
    assert cache.stats.write_errors == 1 and cache.stats.writes == 0
    assert "Could not write" in caplog.text


# encoding through the cache ----------------------------------------------------------------------------


def test_fill_cache_encodes_each_file_once_and_the_features_read_back(tmp_path, cache):
    torch.manual_seed(0)
    entry = clip_entry()
    encoder = CLIPVisionEncoder(entry["params"])
    fingerprint = encoder_fingerprint(encoder, entry, 0)
    files = [write_image(tmp_path / f"{i}.png", i) for i in range(3)]
    sources = [*files, files[0], Image.new("RGB", (32, 32), "red")]  # a repeat, and an uncacheable item
    loaded = []

    def load(source):
        loaded.append(source)
        return IMAGE.load(source)

    assert fill_cache(encoder, cache, fingerprint, sources, load, batch_size=2) == 3
    assert len(loaded) == 3 and cache.stats.writes == 3
    assert encoder.training  # the mode is restored
    expected = encoder.eval()(**encoder.preprocess([IMAGE.load(s) for s in files]))
    keys = [cache.item_key(fingerprint, source) for source in files]
    stored = cache.get_many(keys, shape=(encoder.num_tokens, encoder.output_dim))
    assert torch.allclose(torch.stack(stored), expected, atol=1e-6)

    loaded.clear()
    assert fill_cache(encoder, cache, fingerprint, sources, load) == 0  # a second pass encodes nothing
    assert loaded == []
