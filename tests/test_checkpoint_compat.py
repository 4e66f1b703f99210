"""A checkpoint written by mmllm-sdk 0.1 (before the model was split into modeling, generation and build) still loads.

``tests/fixtures/checkpoint-v0.1`` was written by ``tests/fixtures/make_checkpoint_v0_1.py`` on that
version: a tiny any-to-any model (image in, image out) with LoRA adapters, trained signal rows and
both projectors, plus the logits it gave for one conversation.
"""

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from mmllm_sdk import MMLLM

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint-v0.1"
EXAMPLES = Path(__file__).parents[1] / "examples"


def test_a_checkpoint_of_version_0_1_loads_and_gives_the_same_logits(tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(FIXTURE, folder)
    manifest = json.loads((folder / "mmllm.json").read_text())
    # the frozen base it references (a tokenizer folder) lives in this clone, not where the fixture was written
    manifest["spec"]["llm"]["params"]["tokenizer"] = str(EXAMPLES / "tiny-tokenizer")
    (folder / "mmllm.json").write_text(json.dumps(manifest))
    expected = load_file(str(folder / "expected.safetensors"))

    model = MMLLM.from_pretrained(folder, progress=False).eval()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(EXAMPLES / "inputs/red-circle.png")},
                {"type": "text", "text": "What is it?"},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "A red circle."}, {"type": "image", "caption": "a red circle"}],
        },
    ]
    batch = model.processor([messages])
    with torch.no_grad():
        logits = model(**batch).logits

    assert torch.equal(batch["input_ids"], expected["input_ids"])
    torch.testing.assert_close(logits[:, -8:], expected["logits"], rtol=1e-5, atol=1e-5)
