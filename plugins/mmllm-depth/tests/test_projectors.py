"""depth-vit feeds every built-in input projector: a tiny model's loss on a depth caption is finite."""

import math

import pytest
from mmllm_sdk import build_model
from mmllm_sdk.testing import tiny_spec
from samples import tiny_encoder_params


@pytest.mark.parametrize("projector", ["linear", "mlp", "qformer", "resampler", "pool"])
def test_depth_vit_works_with_every_builtin_projector(tokenizer_dir, depth_files, projector):
    encoder = {"name": "depth-vit", "params": tiny_encoder_params()}
    spec = tiny_spec(tokenizer_dir, projector=projector, encoders={"depth": encoder})
    model = build_model(spec, progress=False)
    conversation = [
        {
            "role": "user",
            "content": [{"type": "depth", "path": str(depth_files["png"])}, {"type": "text", "text": "How far?"}],
        },
        {"role": "assistant", "content": "A box 1.2 metres away, in front of a wall 3.5 metres away."},
    ]
    batch = model.processor([conversation])
    assert batch["depth"]["depth_values"].shape == (1, 1, 32, 32)
    assert math.isfinite(model(**batch).loss.item())
