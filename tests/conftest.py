"""Shared fixtures: a tiny real tokenizer and tiny model specs (no network, seconds to build)."""

from __future__ import annotations

import pytest

from mmllm_sdk.testing import configure_test_environment

# offline, a temporary MMLLM_CACHE, float32 for dtype: auto
configure_test_environment()


@pytest.fixture
def plugin():
    """``plugin(obj, name)`` registers a plugin object for one test; it is always removed afterwards."""
    from mmllm_sdk.plugins import register_plugin, unregister_plugin

    names = []

    def add(obj, name):
        register_plugin(obj, name)
        names.append(name)

    yield add
    for name in names:
        unregister_plugin(name)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from mmllm_sdk.testing import tiny_tokenizer

    return tiny_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tiny")


@pytest.fixture
def image_spec(tokenizer_dir):
    from mmllm_sdk.testing import tiny_spec

    return tiny_spec(tokenizer_dir, inputs=("image",))


@pytest.fixture
def image_model(image_spec):
    from mmllm_sdk import build_model

    return build_model(image_spec, progress=False)


@pytest.fixture
def image_file(tmp_path):
    """A small RGB PNG with some structure (a gradient), so features are not constant."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:40, 0:48]
    array = np.stack([x * 5, y * 6, (x + y) * 3], axis=-1).astype(np.uint8)
    path = tmp_path / "gradient.png"
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def wav_file(tmp_path):
    """A 0.25 s, 16 kHz, 16-bit mono WAV of a 440 Hz tone."""
    import wave

    import numpy as np

    t = np.arange(4000) / 16000.0
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(samples.tobytes())
    return path


@pytest.fixture
def drawing_model(tokenizer_dir):
    """make(modality): a tiny any-to-any model whose LLM always starts its answer with that output modality's first
    signal token (a sequence bias in its generation config), so that every answer carries a generated item."""
    import mmllm_sdk
    from mmllm_sdk.testing import tiny_audioldm_config, tiny_sd_config, tiny_spec

    def make(modality):
        generators = {
            "image": {"name": "diffusers-sd", "params": {"config": tiny_sd_config(), "num_inference_steps": 2}},
            "audio": {
                "name": "diffusers-audioldm",
                "params": {"config": tiny_audioldm_config(), "num_inference_steps": 2},
            },
        }
        spec = tiny_spec(tokenizer_dir, initializer_range=0.2)
        spec["outputs"] = {
            modality: {"signal_tokens": 2, "output_projector": {"name": "mlp"}, "generator": generators[modality]}
        }
        model = mmllm_sdk.build_model(spec, progress=False)
        model.llm.model.generation_config.sequence_bias = {(model.signal_ids[modality][0],): 100.0}
        return model

    return make
