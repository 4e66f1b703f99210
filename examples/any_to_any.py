"""Any-to-any on a tiny random model, offline, in about half a minute: align-output -> SFT (LoRA) -> an image out.

    python examples/any_to_any.py            # works in a new temporary folder
    python examples/any_to_any.py WORK_DIR   # or in WORK_DIR (created; existing stage folders are refused)

The walk a user takes with real weights (docs/any-to-any.md), on components small enough
for a laptop CPU:

1. ``model.yaml``: a tiny random Llama (``mmllm_sdk.testing.tiny_spec``) that can *generate*
   images: 4 signal tokens ``<img_0> … <img_3>``, an ``mlp`` output projector, and a tiny
   random Stable Diffusion pipeline (``diffusers-sd`` with ``config: tiny_sd_config()``).
2. ``align.yaml``: the ``align-output`` recipe on a few captions: the output projector learns
   to map the signal tokens' hidden states onto the generator's own conditioning of each caption.
3. ``sft.yaml``: the ``sft`` recipe with LoRA (r = 4), continuing from the aligned checkpoint
   folder (``model: ./align``): the LLM learns to answer "Draw …" with the signal tokens.
4. ``MMLLM.from_pretrained("sft")`` and ``generate(..., output_dir=...)``: the answer's text
   and the PNG the generator made from the signal tokens' hidden states.

Each stage runs as ``mmllm train STAGE.yaml`` in a subprocess, in WORK_DIR, as you would
type it; the YAML files stay there to read. The generator's weights are random, so the
"image" is coloured noise: what the walk shows is that the LLM learned to emit the signal
tokens and that their states reach a generator and come back as a saved image.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

CAPTIONS = [  # what align-output aligns (user: "Show me." -> assistant: an image of the caption)
    "a red circle",
    "a blue square",
    "a green star",
    "a yellow cross",
    "a purple triangle",
    "an orange circle",
    "a red square",
    "a blue star",
]
DRAW = CAPTIONS[:4]  # what SFT teaches to draw on request
QUESTION = "Draw a red circle."
SIGNAL_TOKENS = 4

ALIGN_RECIPE = """\
# Stage 1: output-side alignment (NExT-GPT). Trains the output projector and the signal tokens'
# embedding rows; the LLM and the generator stay frozen.
recipe: align-output
model: ./model.yaml
data:
  train: ./captions.jsonl
training:
  output_dir: ./align
  per_device_train_batch_size: 4
  learning_rate: 1.0e-2
  max_steps: 20
  save_strategy: "no"
  logging_steps: 10
  seed: 0
  use_cpu: true
"""

SFT_RECIPE = """\
# Stage 2: instruction tuning with LoRA, continuing from the aligned checkpoint folder. Trains the
# LoRA adapters and the signal tokens' rows (and the input projector, which these text-only
# conversations do not reach); the aligned output projector is kept as it is.
recipe: sft
model: ./align
peft: {method: lora, r: 4}
data:
  train: ./draw.jsonl
training:
  output_dir: ./sft
  per_device_train_batch_size: 4
  learning_rate: 5.0e-2
  max_steps: 40
  save_strategy: "no"
  logging_steps: 10
  seed: 0
  use_cpu: true
"""


def model_spec(tokenizer: str) -> dict:
    """A tiny random LLM with an image input (unused here) and an image output through tiny Stable Diffusion."""
    from mmllm_sdk.testing import tiny_sd_config, tiny_spec

    spec = tiny_spec(tokenizer, initializer_range=0.2)  # sharper random logits, which SFT moves quickly
    # float32, so that the walk trains the same on every machine (dtype: auto is bfloat16 where a CPU computes it
    # natively, which for a model this small is slower, and rounds differently)
    spec["llm"]["params"]["dtype"] = "float32"
    spec["inputs"]["image"]["encoder"]["params"]["dtype"] = "float32"
    spec["outputs"] = {
        "image": {
            "signal_tokens": SIGNAL_TOKENS,
            "output_projector": {"name": "mlp"},
            "generator": {"name": "diffusers-sd", "params": {"config": tiny_sd_config(), "num_inference_steps": 2}},
        }
    }
    return spec


def drawing(user: str, caption: str, answer: str | None = None) -> dict:
    """One conversation whose assistant turn holds an image part, described by ``caption``."""
    content = [{"type": "image", "caption": caption}]
    if answer:
        content.insert(0, {"type": "text", "text": answer})
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": content}]}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def mmllm(work: Path, *args: str) -> None:
    """Run ``mmllm ARGS`` in ``work`` as a user would, showing the command; stop the walk if it fails."""
    print(f"\n$ mmllm {shlex.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "mmllm_sdk.cli", *args], cwd=work)
    if done.returncode != 0:
        raise SystemExit(f"`mmllm {' '.join(args)}` failed (exit status {done.returncode}); its message is above.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="align-output -> SFT (LoRA) -> generate an image, on a tiny model.")
    parser.add_argument("work_dir", nargs="?", help="where the YAML files and checkpoints go (default: a new temp dir)")
    args = parser.parse_args(argv)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="mmllm-any-to-any-"))
    work.mkdir(parents=True, exist_ok=True)
    taken = [name for name in ("align", "sft", "out") if (work / name).exists()]
    if taken:
        raise SystemExit(f"{work} already holds {', '.join(taken)}; give an empty or new WORK_DIR.")
    print(f"Working in {work}")

    from mmllm_sdk.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer(work / "tokenizer")
    (work / "model.yaml").write_text(
        "# A tiny random LLM that generates images: signal tokens -> mlp -> tiny random Stable Diffusion.\n"
        + yaml.safe_dump(model_spec("./" + Path(tokenizer).name), sort_keys=False),
        encoding="utf-8",
    )
    write_jsonl(work / "captions.jsonl", [drawing("Show me.", caption) for caption in CAPTIONS])
    write_jsonl(work / "draw.jsonl", [drawing(f"Draw {c}.", c, answer="Here it is.") for c in DRAW])
    (work / "align.yaml").write_text(ALIGN_RECIPE, encoding="utf-8")
    (work / "sft.yaml").write_text(SFT_RECIPE, encoding="utf-8")
    print("Wrote model.yaml, captions.jsonl, draw.jsonl, align.yaml and sft.yaml")

    mmllm(work, "train", "align.yaml")
    mmllm(work, "train", "sft.yaml")

    from mmllm_sdk import MMLLM

    print(f'\n>>> model = MMLLM.from_pretrained("{work / "sft"}")')
    model = MMLLM.from_pretrained(work / "sft", progress=False)
    print(f">>> model.generate([{{'role': 'user', 'content': {QUESTION!r}}}], output_dir=...)")
    response = model.generate([{"role": "user", "content": QUESTION}], max_new_tokens=12, output_dir=work / "out")
    print(f"text:  {response.text!r}")
    saved = response.files.get("image", [])
    if not saved:
        raise SystemExit(
            "The model answered without the signal tokens, so no image was generated; train SFT longer "
            "(max_steps in sft.yaml) and run again."
        )
    for path, image in zip(saved, response.outputs["image"], strict=True):
        print(f"image: {path} ({image.width} x {image.height} PNG)")
    print(
        "\nThe generator is a tiny random Stable Diffusion, so the image is noise; with a pretrained one "
        "(docs/any-to-any.md)\nthe same stages aim the signal tokens at its conditioning of the caption. "
        "The same answer from the command line:"
    )
    print("  " + shlex.join(["mmllm", "chat", str(work / "sft"), QUESTION, "--output-dir", str(work / "chat")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
