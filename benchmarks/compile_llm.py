"""Does ``torch.compile`` of the LLM pay on this machine? Our PT step with the LLM's decoder eager and compiled.

    .venv/bin/python benchmarks/compile_llm.py --threads 2

The model and batches are benchmarks/common.py's (batch 8 of synthetic-shapes captions). Two copies of our model are
built; one gets its decoder compiled (``dynamic=True``: batches differ in length; what ``training.torch_compile``
does), and its first step is timed with the compilation. Then the two take turns on the same batches (eager,
compiled, eager, …), so that other load on the CPU falls on both alike, with freed memory kept as ``mmllm train``
runs its steps on a CPU. It prints the compile time, both step times and after how many steps the compile has paid
for itself.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
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

from mmllm_sdk.default_plugins.recipes.host import freed_memory_kept
from mmllm_sdk.default_plugins.recipes.run import compile_llm


def main(argv: list[str] | None = None) -> int:
    args = benchmark_parser("batch 2").parse_args(argv)
    sizes = QUICK if args.quick else FULL
    quiet_and_seeded(args.threads)
    eager, compiled = build_ours(model_spec(args.random_llm)), build_ours(model_spec(args.random_llm))
    size = sizes.batch_size
    with tempfile.TemporaryDirectory(prefix="mmllm-compile-") as tmp:
        captions = caption_conversations(size * 5, Path(tmp) / "images")
        batches = [eager.processor(captions[i : i + size]) for i in range(0, len(captions), size)]
    seconds: dict[Any, list[float]] = {eager: [], compiled: []}
    with freed_memory_kept():  # as mmllm_sdk.train runs its steps on a CPU
        ours_step(eager, batches[0])  # warm-up
        compile_llm(compiled, torch_compile=True)  # what training.torch_compile does
        start = time.perf_counter()
        ours_step(compiled, batches[0])
        first = time.perf_counter() - start
        for batch in batches[1:] * 2:
            for model, times in seconds.items():
                start = time.perf_counter()
                ours_step(model, batch)
                times.append(time.perf_counter() - start)
    eager_s, compiled_s = (statistics.median(times) for times in seconds.values())
    saved = eager_s - compiled_s
    pays = f"after {first / saved:.0f} steps" if saved > 0 else "never"
    line = (
        f"eager {eager_s:.2f} s a step, compiled {compiled_s:.2f} s ({100 * (compiled_s / eager_s - 1):+.0f} %; "
        f"medians of {len(seconds[eager])} steps each, taking turns); compiling and the first step {first:.0f} s; "
        f"the compile pays {pays}"
    )
    emit(line, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
