"""A two-minute tour on a tiny random model: spec -> validate -> build -> chat -> save -> export.

The weights are random (nothing is downloaded), so the answers are noise; what the
demo shows is the pipeline. The demo on real pretrained weights arrives with the
real-weights issue; until then point `mmllm chat` at a spec with `model:` ids.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from mmllm_sdk import MMLLM, build_model, load_spec
from mmllm_sdk.testing import tiny_spec, tiny_tokenizer


def run(*args: str) -> None:
    print(f"\n$ mmllm {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "mmllm_sdk.cli", *args], check=True)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mmllm-demo-"))
    spec_path = work / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_spec(tiny_tokenizer(work / "tokenizer"), inputs=("image", "audio"))))
    y, x = np.mgrid[0:64, 0:64]
    Image.fromarray(np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)).save(work / "gradient.png")

    run("validate", str(spec_path))

    model = build_model(load_spec(spec_path))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(work / "gradient.png")},
                {"type": "text", "text": "What is in this image?"},
            ],
        }
    ]
    batch = model.processor([[*messages, {"role": "assistant", "content": "A colour gradient."}]])
    print(
        f"\nprocessor: input_ids {tuple(batch['input_ids'].shape)}, pixel_values {tuple(batch['image']['pixel_values'].shape)}, "
        f"loss {model(**batch).loss.item():.3f}"
    )
    model.save_pretrained(work / "checkpoint")
    print(f"saved {work / 'checkpoint'}: {sorted(p.name for p in (work / 'checkpoint').iterdir())}")
    MMLLM.from_pretrained(work / "checkpoint", progress=False)

    run(
        "chat",
        str(work / "checkpoint"),
        "--input",
        f"image={work / 'gradient.png'}",
        "What is in this image?",
        "--max-new-tokens",
        "8",
    )
    print("(random weights: the answer is noise until the projector is trained)")
    print(f"\nEverything is in {work}.")


if __name__ == "__main__":
    main()
