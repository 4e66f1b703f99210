"""Shared fixtures: the test environment, a tiny tokenizer and one sample file per depth format."""

from mmllm_sdk.testing import configure_test_environment

configure_test_environment()  # offline, a temporary MMLLM_CACHE, float32 for dtype: auto

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from samples import save_png16, scene_millimetres  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from mmllm_sdk.testing import tiny_tokenizer

    return tiny_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tiny")


@pytest.fixture
def depth_files(tmp_path):
    """One good file per loader format: 16-bit PNG (mm), float32 .npy (m), uint16 .npy (mm), (H, W, 1) float .npy."""
    millimetres = scene_millimetres()
    png = save_png16(tmp_path / "scene.png", millimetres)
    metres = tmp_path / "scene_m.npy"
    np.save(metres, millimetres.astype(np.float32) / 1000.0)
    uint16 = tmp_path / "scene_mm.npy"
    np.save(uint16, scene_millimetres(24, 24, near=800, far=5000))
    channel = tmp_path / "scene_hw1.npy"
    np.save(channel, (millimetres[:, :, None].astype(np.float64) / 1000.0)[::-1].copy())
    return {"png": png, "npy_m": metres, "npy_mm": uint16, "npy_hw1": channel}
