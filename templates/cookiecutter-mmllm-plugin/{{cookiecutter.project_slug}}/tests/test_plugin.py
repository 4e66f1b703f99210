"""{{ cookiecutter.project_slug }} against the SDK's conformance kit: discovery, loaders, encoder, projectors, PT."""

from __future__ import annotations

import mmllm_sdk
import numpy as np
import pytest
import torch
from conftest import TINY_ENCODER
from mmllm_sdk.testing import check_discovered, check_encoder, check_modality, check_pt

MODALITY = "{{ cookiecutter.modality }}"


@pytest.fixture
def signals(tmp_path):
    """The same signal as .npy and as .csv, and a shorter one."""
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(20, {{ cookiecutter.channels }})).astype(np.float32)
    npy, csv, short = tmp_path / "a.npy", tmp_path / "a.csv", tmp_path / "short.npy"
    np.save(npy, signal)
    csv.write_text("".join(",".join(f"{v:.7f}" for v in row) + "\n" for row in signal))
    np.save(short, signal[:5] * 2)
    return [npy, csv, short]


def test_the_plugin_is_discovered_through_its_entry_point():
    check_discovered(
        MODALITY,
        distribution="{{ cookiecutter.project_slug }}",
        registers={
            "modalities": [MODALITY],
            "encoders": [f"{MODALITY}/{{ cookiecutter.encoder_name }}"],
            "datasets": ["{{ cookiecutter.dataset_name }}"],
        },
    )


def test_the_modality_conforms(signals):
    npy, csv, _ = check_modality(MODALITY, signals)
    np.testing.assert_allclose(csv, npy, atol=1e-6)


def test_a_signal_with_nan_values_is_refused(tmp_path, signals):
    bad = tmp_path / "nan.npy"
    np.save(bad, np.full((4, {{ cookiecutter.channels }}), np.nan, dtype=np.float32))
    check_modality(MODALITY, signals[:1], bad_files={bad: "NaN or infinite values"})


def test_the_encoder_conforms(signals):
    items = check_modality(MODALITY, signals)
    encoder = check_encoder(MODALITY, "{{ cookiecutter.encoder_name }}", TINY_ENCODER, items)
    assert (encoder.num_tokens, encoder.output_dim) == (4, 32)


@pytest.mark.parametrize("projector", ["linear", "mlp", "qformer", "resampler", "pool"])
def test_the_modality_works_with_every_builtin_projector(model_spec, projector):
    model = mmllm_sdk.build_model(model_spec(projector), progress=False)
    signal = np.zeros((10, {{ cookiecutter.channels }}), dtype=np.float32)
    conversation = [
        {"role": "user", "content": [{"type": MODALITY, MODALITY: signal}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A flat signal."},
    ]
    assert torch.isfinite(model(**model.processor([conversation])).loss)


def test_pt_on_the_example_dataset_lowers_the_caption_loss(tmp_path, model_spec):
    params = {"out_dir": str(tmp_path / "data"), "num_examples": 8, "length": 32}
    data = {"dataset": "{{ cookiecutter.dataset_name }}", "params": params}
    # the encoder starts from random weights: it trains with the projector; the LLM must stay frozen
    trainable = [f"inputs.{MODALITY}.projector", f"inputs.{MODALITY}.encoder"]
    check = check_pt(model_spec(), data, tmp_path / "run", trainable=trainable)
    assert check.loss_after < check.loss_before
