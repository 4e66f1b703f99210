"""An offline test session: no model hub, a temporary cache, a tiny real tokenizer and a tiny random LLM."""

from __future__ import annotations

import pytest
from mmllm_sdk.testing import configure_test_environment

configure_test_environment()

TINY_ENCODER = {"window": 32, "patch": 8, "dim": 32, "layers": 1, "heads": 4}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from mmllm_sdk.testing import tiny_tokenizer

    return tiny_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tiny")


@pytest.fixture
def model_spec(tokenizer_dir):
    """make(projector="mlp"): a tiny LLM (sharp random logits) with a {{ cookiecutter.modality }} input."""
    from mmllm_sdk.testing import tiny_spec

    def make(projector="mlp", **encoder_params):
        encoder = {"name": "{{ cookiecutter.encoder_name }}", "params": {**TINY_ENCODER, **encoder_params}}
        modality = "{{ cookiecutter.modality }}"
        return tiny_spec(tokenizer_dir, projector=projector, encoders={modality: encoder}, initializer_range=0.2)

    return make
