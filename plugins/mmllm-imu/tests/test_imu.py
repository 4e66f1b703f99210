"""mmllm-imu: discovery, loaders and their errors, the imu-patch encoder, every projector, and PT."""

from __future__ import annotations

import mmllm_sdk
import numpy as np
import pytest
import torch
from conftest import TINY_IMU
from mmllm_sdk.errors import DimensionError, InputError, SpecError
from mmllm_sdk.testing import check_discovered, check_encoder, check_modality, check_pt

from mmllm_imu import load_imu
from mmllm_imu.encoder import IMUPatchEncoder, resample


def test_the_plugin_is_discovered_through_its_entry_point():
    check_discovered(
        "imu",
        distribution="mmllm-imu",
        registers={"modalities": ["imu"], "encoders": ["imu/imu-patch"], "datasets": ["imu-synthetic"]},
    )


def test_the_imu_modality_conforms_and_reads_npy_and_csv_alike(imu_files, walk):
    npy, csv, bare = check_modality("imu", imu_files)
    assert npy.shape == (120, 6) and npy.dtype == np.float32
    np.testing.assert_allclose(csv, npy, atol=1e-5)
    assert bare.shape == (50, 6)


def _good(tmp_path):
    path = tmp_path / "good.npy"
    np.save(path, np.ones((8, 6), dtype=np.float32))
    return path


def test_a_nan_filled_window_is_refused_with_the_rows_named(tmp_path, walk):
    walk[10:14] = np.nan
    path = tmp_path / "dropout.npy"
    np.save(path, walk)
    message = "has 24 NaN or infinite readings in 4 of its 120 samples (rows 10, 11, 12, 13)"
    check_modality("imu", [_good(tmp_path)], bad_files={path: message})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ax,ay,az\n1,2,3\n", r"has the header 'ax,ay,az'; expected 'ax,ay,az,gx,gy,gz'"),
        ("1,2,3,4,5,6\n1,2,3,4,5\n", r"line 2, has 5 columns; every line needs 6"),
        ("1,2,3,4,5,x\n", r"line 1, is not numeric"),
    ],
)
def test_a_malformed_csv_names_the_line_and_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_imu(path)


def test_a_wrong_shaped_array_is_refused(tmp_path):
    path = tmp_path / "three.npy"
    np.save(path, np.zeros((10, 3), dtype=np.float32))
    check_modality("imu", [_good(tmp_path)], bad_files={path: "has shape (10, 3); an IMU recording is a (T, 6) array"})


def test_the_imu_patch_encoder_conforms(walk):
    encoder = check_encoder("imu", "imu-patch", TINY_IMU, [walk, walk[:50] * 0.5, walk[::-1].copy()])
    assert (encoder.num_tokens, encoder.output_dim) == (8, 32)


def test_recordings_are_resampled_to_the_encoder_rate_and_padded_with_a_mask(walk):
    encoder = IMUPatchEncoder(TINY_IMU)  # 100 Hz files, read at 50 Hz, window 64
    batch = encoder.preprocess([walk])
    assert batch["imu_values"].shape == (1, 64, 6)
    assert batch["imu_mask"].tolist() == [
        [True] * 8
    ]  # 120 samples at 100 Hz -> 60 at 50 Hz: 8 patches, the last partial
    az = batch["imu_values"][0, :60, 2]
    assert az.mean().item() == pytest.approx(1.0, abs=0.05)  # m/s² read as g: gravity is 1
    assert torch.all(batch["imu_values"][0, 60:] == 0)


def test_resampling_keeps_the_duration_and_a_slow_signal():
    t = np.arange(200) / 200  # 1 s at 200 Hz of a 2 Hz sine
    values = np.sin(2 * np.pi * 2 * t)[:, None].astype(np.float32)
    out = resample(values, 200, 50)
    assert out.shape == (50, 1)
    np.testing.assert_allclose(out[:, 0], np.sin(2 * np.pi * 2 * np.arange(50) / 50), atol=0.05)


def test_a_recording_longer_than_the_window_is_refused_with_the_durations(walk):
    encoder = IMUPatchEncoder({**TINY_IMU, "window": 32})
    with pytest.raises(InputError, match=r"item 0 lasts 1.20 s \(60 samples at 50 Hz\), more than window=32 samples"):
        encoder.preprocess([walk])


def test_sizes_that_do_not_fit_are_refused_before_any_weight_loads(imu_spec):
    with pytest.raises(DimensionError, match=r"window 60 is not a multiple of patch 8"):
        mmllm_sdk.build_model(imu_spec(window=60), skeleton=True)
    spec = imu_spec()
    del spec["inputs"]["imu"]["encoder"]["params"]["sample_rate"]
    with pytest.raises(SpecError, match=r"inputs.imu.encoder.params.sample_rate: .*required"):
        mmllm_sdk.build_model(spec, skeleton=True)


@pytest.mark.parametrize("projector", ["linear", "mlp", "qformer", "resampler", "pool"])
def test_imu_works_with_every_builtin_projector(imu_spec, projector, walk):
    model = mmllm_sdk.build_model(imu_spec(projector), progress=False)
    conversation = [
        {
            "role": "user",
            "content": [{"type": "imu", "imu": walk}, {"type": "text", "text": "What is the wearer doing?"}],
        },
        {"role": "assistant", "content": "Walking."},
    ]
    loss = model(**model.processor([conversation])).loss
    assert torch.isfinite(loss)


def test_pt_on_the_synthetic_activities_lowers_the_caption_loss(tmp_path, imu_spec):
    data = {"dataset": "imu-synthetic", "params": {"out_dir": str(tmp_path / "imu"), "num_examples": 8}}
    trainable = ["inputs.imu.projector", "inputs.imu.encoder"]  # imu-patch starts from random weights
    check = check_pt(imu_spec(window=128, sample_rate=100), data, tmp_path / "run", trainable=trainable, min_drop=0.6)
    assert len(list((tmp_path / "imu").glob("*.csv"))) == 8
    assert check.loss_after < check.loss_before
