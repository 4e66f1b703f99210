"""The feature cache: item keys, safe reads and writes, and skipping the encoder on a hit (fingerprints: test_fingerprint.py)."""

from __future__ import annotations

import logging
import os
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from mmllm_sdk.default_plugins.encoders import CLIPVisionEncoder
from mmllm_sdk.default_plugins.modalities import IMAGE
from mmllm_sdk.default_plugins.recipes.feature_cache import (
    FeatureCache,
    encoder_fingerprint,
    fill_cache,
)
from mmllm_sdk.errors import InputError
from mmllm_sdk.testing import tiny_clip_vision_config

CLIP = "hf-clip-vision"
FP_A, FP_B = "a" * 64, "b" * 64  # fingerprints for tests of the cache alone


def clip_entry(**params) -> dict:
    return {"name": CLIP, "params": {"config": tiny_clip_vision_config(), **params}}


def write_image(path, seed: int, size: tuple[int, int] = (40, 48)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def cache(tmp_path):
    return FeatureCache(tmp_path / "cache")


@pytest.fixture
def key(tmp_path, cache):
    return cache.item_key(FP_A, write_image(tmp_path / "item.png", 0))


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


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_paths_that_are_not_regular_files_get_no_key_and_do_not_hang(tmp_path, cache):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")  # reading it would never end
    folder = tmp_path / "frames"
    folder.mkdir()
    write_image(folder / "0.png", 0)
    keys = {}
    worker = threading.Thread(
        target=lambda: keys.update({p: cache.item_key(FP_A, p) for p in (fifo, zero, folder)}), daemon=True
    )
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "item_key() blocked on a FIFO or a device"
    assert keys[fifo] is None and keys[zero] is None
    os.mkfifo(folder / "1.png")  # in a folder only the regular files count
    assert keys[folder] is not None and cache.item_key(FP_A, folder) == keys[folder]


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
    with caplog.at_level(logging.WARNING, logger="mmllm_sdk.default_plugins.recipes.feature_cache"):
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
    with caplog.at_level(logging.WARNING, logger="mmllm_sdk.default_plugins.recipes.feature_cache"):
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
    with caplog.at_level(logging.WARNING, logger="mmllm_sdk.default_plugins.recipes.feature_cache"):
        assert cache.get(key_2) is None
        assert cache.get(key_1, shape=(4, 3)) is None
        cache.put(key_1, torch.ones(3, 4))
        assert cache.get(key_1, dtype=torch.float16) is None
    assert "written for item" in caplog.text and "shape (4, 3) was expected" in caplog.text
    assert cache.stats.invalid == 3


def test_pickled_file_is_never_unpickled(cache, key, caplog):
    cache.path(key).parent.mkdir(parents=True)
    torch.save({"features": torch.ones(3, 4)}, cache.path(key))
    with caplog.at_level(logging.WARNING, logger="mmllm_sdk.default_plugins.recipes.feature_cache"):
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
    with caplog.at_level(logging.WARNING, logger="mmllm_sdk.default_plugins.recipes.feature_cache"):
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
