"""Does ``torch.compile`` of the LLM pay on this machine? Our PT step before and after compiling the LLM's decoder.

    .venv/bin/python benchmarks/compile_llm.py --threads 2

The model and batches are benchmarks/run.py's (batch 8 of synthetic-shapes captions). Four steps are timed eagerly,
then the decoder is compiled (``dynamic=True``: batches differ in length) and the first compiled step is timed with the
compilation, then four more. It prints the compile time, both step times and after how many steps the compile has paid
for itself.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from run import (
    FULL,
    QUICK,
    benchmark_parser,
    build_ours,
    caption_conversations,
    emit,
    model_spec,
    ours_step,
    quiet_and_seeded,
)

from mmllm_sdk.default_plugins.recipes.run import compile_llm


def timed(model, batches) -> float:
    """Seconds per step over ``batches``."""
    start = time.perf_counter()
    for batch in batches:
        ours_step(model, batch)
    return (time.perf_counter() - start) / len(batches)


def main(argv: list[str] | None = None) -> int:
    args = benchmark_parser("batch 2").parse_args(argv)
    sizes = QUICK if args.quick else FULL
    quiet_and_seeded(args.threads)
    model = build_ours(model_spec(args.random_llm))
    size = sizes.batch_size
    with tempfile.TemporaryDirectory(prefix="mmllm-compile-") as tmp:
        captions = caption_conversations(size * 5, Path(tmp) / "images")
        batches = [model.processor(captions[i : i + size]) for i in range(0, len(captions), size)]
    ours_step(model, batches[0])  # warm-up
    eager = timed(model, batches[1:])
    compile_llm(model, torch_compile=True)  # what training.torch_compile does
    start = time.perf_counter()
    ours_step(model, batches[0])
    first = time.perf_counter() - start
    compiled = timed(model, batches[1:])
    saved = eager - compiled
    pays = f"after {first / saved:.0f} steps" if saved > 0 else "never"
    line = (
        f"eager {eager:.2f} s a step; compiling and the first step {first:.0f} s; compiled {compiled:.2f} s a step "
        f"({100 * (compiled / eager - 1):+.0f} %); the compile pays {pays}"
    )
    emit(line, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
