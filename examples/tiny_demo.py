"""A half-minute tour on a tiny random model: spec -> validate -> build -> chat -> save -> export.

    python examples/tiny_demo.py            # (make tour) works in a new temporary folder
    python examples/tiny_demo.py WORK_DIR   # or in WORK_DIR

The weights are random (nothing is downloaded), so the answers are noise; what the tour
shows is the pipeline, offline and in seconds:

1. a model spec (a tiny CLIP vision tower, an ``mlp`` projector, a tiny Llama) written as YAML;
2. ``mmllm validate``: components, token budget and parameter counts, before any weight loads;
3. ``build_model``, the processor's batch for one conversation about ``examples/inputs/red-circle.png``,
   and the model's loss on the answer;
4. ``save_pretrained`` and ``MMLLM.from_pretrained``;
5. ``mmllm chat`` on the checkpoint;
6. ``mmllm export CKPT --format hf-llava OUT``, loaded back with transformers'
   ``LlavaForConditionalGeneration``, whose logits on the same batch equal the SDK model's.

The export takes an image-only LLaVA-shaped model (a CLIP tower, a linear or 2-layer mlp
projector, a Llama-like LLM), so the tour's model has one input, ``image``. Real weights:
``mmllm demo`` trains a frozen SmolLM2-135M and EfficientNet-Lite0 to see (docs/demo.md),
and ``examples/real_weights.py`` writes that model's spec for ``mmllm validate`` and ``mmllm chat``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from mmllm_sdk import MMLLM, build_model, load_spec
from mmllm_sdk.testing import tiny_spec, tiny_tokenizer

IMAGE = Path(__file__).resolve().parent / "inputs" / "red-circle.png"
QUESTION = "What is in this image?"
MATCH_TOLERANCE = 1e-4  # largest |ours - LLaVA's| logit difference that counts as the same (float32 round-off)


def mmllm(*args: str) -> None:
    """Run ``mmllm ARGS`` as a user would, showing the command; stop the tour if it fails."""
    print(f"\n$ mmllm {shlex.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "mmllm_sdk.cli", *args])
    if done.returncode != 0:
        raise SystemExit(f"`mmllm {' '.join(args)}` failed (exit status {done.returncode}); its message is above.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The SDK's pipeline on a tiny random model, in seconds.")
    parser.add_argument(
        "work_dir", nargs="?", help="where the spec, checkpoint and export go (default: a new temp dir)"
    )
    args = parser.parse_args(argv)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="mmllm-tour-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in ("checkpoint", "llava"):
        if (work / name).exists():
            raise SystemExit(f"{work / name} already exists; give an empty or new WORK_DIR.")

    spec = tiny_spec(tiny_tokenizer(work / "tokenizer"), inputs=("image",))
    # float32 throughout, so that the export's logits can be compared exactly: the default, dtype: auto, is
    # bfloat16 on CPUs that compute it natively, and the exported LLaVA would then hold bfloat16 weights
    spec["llm"]["params"]["dtype"] = "float32"
    spec["inputs"]["image"]["encoder"]["params"]["dtype"] = "float32"
    spec_path = work / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    print(f"Wrote {spec_path}: a tiny CLIP vision tower -> mlp -> a tiny Llama, random weights")
    mmllm("validate", str(spec_path))

    model = build_model(load_spec(spec_path), progress=False).eval()
    conversation = [
        {"role": "user", "content": [{"type": "image", "path": str(IMAGE)}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": "A red circle."},
    ]
    batch = model.processor([conversation])
    with torch.no_grad():
        ours = model(**batch)
    print(
        f"\nprocessor: input_ids {tuple(batch['input_ids'].shape)}, pixel_values "
        f"{tuple(batch['image']['pixel_values'].shape)}; loss on the answer {ours.loss.item():.3f}"
    )

    checkpoint = work / "checkpoint"
    model.save_pretrained(checkpoint)
    print(f"saved {checkpoint}: {sorted(p.name for p in checkpoint.iterdir())}")
    MMLLM.from_pretrained(checkpoint, progress=False)
    print("loaded it back with MMLLM.from_pretrained")

    mmllm("chat", str(checkpoint), "--input", f"image={IMAGE}", QUESTION, "--max-new-tokens", "8")
    print("(random weights: the answer is noise until the projector is trained)")

    llava_dir = work / "llava"
    mmllm("export", str(checkpoint), "--format", "hf-llava", str(llava_dir))
    from transformers import LlavaForConditionalGeneration

    llava = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    with torch.no_grad():
        theirs = llava(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["image"]["pixel_values"],
        )
    difference = (ours.logits - theirs.logits).abs().max().item()
    verdict = "match" if difference < MATCH_TOLERANCE else "DIFFER"
    print(
        f"\nLlavaForConditionalGeneration.from_pretrained({str(llava_dir)!r}) on the same batch:\n"
        f"logits {tuple(theirs.logits.shape)}, largest difference from the SDK model's {difference:.1e}: {verdict}"
    )
    if verdict != "match":
        raise SystemExit(f"The exported model's logits differ from the SDK model's by {difference:.1e}.")
    print(f"\nEverything is in {work}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
