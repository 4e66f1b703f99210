"""Offline test session for mmllm-imu: tiny tokenizer, tiny LLM spec, IMU sample files."""

from __future__ import annotations

import numpy as np
import pytest
from mmllm_sdk.testing import configure_test_environment

configure_test_environment()  # offline, a temporary MMLLM_CACHE, float32 for dtype: auto

TINY_IMU = {"sample_rate": 100, "rate": 50, "window": 64, "patch": 8, "dim": 32, "layers": 1, "heads": 4}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from mmllm_sdk.testing import tiny_tokenizer

    return tiny_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tiny")


@pytest.fixture
def walk():
    """1.2 s of a 2 Hz walk at 100 Hz, in m/s² and rad/s: (120, 6)."""
    t = np.arange(120) / 100
    values = np.zeros((120, 6), dtype=np.float32)
    values[:, 2] = 9.81 + 2.5 * np.sin(2 * np.pi * 2 * t)
    values[:, 3] = 0.5 * np.cos(2 * np.pi * t)
    return values


@pytest.fixture
def imu_files(tmp_path, walk):
    """The same walk as .npy, as CSV with a header, and a shorter one as CSV without a header."""
    npy, csv, bare = tmp_path / "walk.npy", tmp_path / "walk.csv", tmp_path / "short.csv"
    np.save(npy, walk)
    csv.write_text("ax,ay,az,gx,gy,gz\n" + "".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in walk))
    bare.write_text("".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in walk[:50] * 0.5))
    return [npy, csv, bare]


@pytest.fixture
def imu_spec(tokenizer_dir):
    """make(projector="mlp", **encoder_params): a tiny LLM with sharp random logits and an imu input."""
    from mmllm_sdk.testing import tiny_spec

    def make(projector="mlp", **encoder_params):
        encoder = {"name": "imu-patch", "params": {**TINY_IMU, **encoder_params}}
        return tiny_spec(tokenizer_dir, projector=projector, encoders={"imu": encoder}, initializer_range=0.2)

    return make
