"""Where the time of a training step goes: torch's profiler on our PT step and our packed SFT step.

    .venv/bin/python benchmarks/profile_steps.py --threads 2 --out profile.md

The model and batches are benchmarks/common.py's (PT: 8 synthetic-shapes captions; SFT: 2 packed rows of the instruct
mix). Each step runs once to warm up, then once under the profiler. The table groups the operators' own CPU time
(self time, so nothing is counted twice) into what they do; the top operators follow.
"""

from __future__ import annotations

import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from common import (
    FULL,
    QUICK,
    SEED,
    benchmark_parser,
    build_ours,
    caption_conversations,
    emit,
    model_spec,
    ours_step,
    quiet_and_seeded,
    say,
)

from mmllm_sdk.default_plugins.recipes.host import freed_memory_kept

GROUPS = (  # (group, operator name fragments), the first match wins
    (
        "weight matmuls (linear layers, LM head)",
        ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"),
    ),
    ("attention (SDPA kernels)", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("cross-entropy and softmax", ("log_softmax", "nll_loss", "cross_entropy", "softmax")),
    ("normalisation (RMSNorm, LayerNorm)", ("layer_norm", "rsqrt", "aten::pow", "aten::mean", "rms_norm")),
    ("activations (SiLU, GELU)", ("silu", "gelu", "sigmoid")),
    (
        "elementwise (add, mul, RoPE's neg/cat)",
        ("aten::mul", "aten::add", "aten::neg", "aten::sub", "aten::div", "aten::cat", "aten::sin", "aten::cos"),
    ),
    (
        "copies, views, indexing",
        (
            "copy",
            "clone",
            "contiguous",
            "aten::to",
            "index",
            "scatter",
            "gather",
            "expand",
            "view",
            "reshape",
            "transpose",
            "permute",
            "slice",
            "select",
            "masked",
            "fill",
            "zero",
            "empty",
            "arange",
            "stack",
            "unsqueeze",
        ),
    ),
)


def group_of(name: str) -> str:
    return next((group for group, keys in GROUPS if any(key in name for key in keys)), "other")


def profile(step: Any) -> Any:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step()  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages()


def tables(name: str, averages: Any, top: int) -> str:
    total = sum(event.self_cpu_time_total for event in averages)
    by_group: dict[str, float] = defaultdict(float)
    for event in averages:
        by_group[group_of(event.key)] += event.self_cpu_time_total
    lines = [f"**{name}**: {total / 1e6:.2f} s of operator time", "", "| what | self CPU s | share |", "|---|---|---|"]
    for group, seconds in sorted(by_group.items(), key=lambda item: -item[1]):
        lines.append(f"| {group} | {seconds / 1e6:.2f} | {100 * seconds / total:.1f} % |")
    lines += ["", "| operator | calls | self CPU s | share |", "|---|---|---|---|"]
    for event in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:top]:
        share = 100 * event.self_cpu_time_total / total
        lines.append(f"| `{event.key}` | {event.count} | {event.self_cpu_time_total / 1e6:.3f} | {share:.1f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("batch 2, one packed row")
    parser.add_argument("--top", type=int, default=12, help="operators listed per step")
    parser.add_argument(
        "--masked",
        action="store_true",
        help="packed rows through transformers' SDPA with its block mask, not per example",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    quiet_and_seeded(args.threads)
    from sft_rows import conversations, passes

    spec = model_spec(args.random_llm)
    model = build_ours(spec)
    with tempfile.TemporaryDirectory(prefix="mmllm-profile-") as tmp:
        workdir = Path(tmp)
        captions = caption_conversations(sizes.batch_size, workdir / "images")
        pt_batch = model.processor(captions)
        examples = conversations(model, sizes, workdir)
        runs, _ = passes(model, None, examples, sizes)
        if args.masked:
            model.llm.model.set_attn_implementation("sdpa")
        packed = max(runs["ours packed"].batches, key=lambda batch: int((batch["input_ids"] != 0).sum()))
        with freed_memory_kept():  # as mmllm_sdk.train runs its steps on a CPU
            say("profiling the PT step")
            pt = profile(lambda: ours_step(model, pt_batch))
            say("profiling the packed SFT step")
            sft = profile(lambda: ours_step(model, packed))
    rows, length = packed["input_ids"].shape
    output = "\n\n".join(
        [
            f"- torch {torch.__version__}, threads {torch.get_num_threads()}, seed {SEED}",
            tables(f"PT step, batch {sizes.batch_size} ({pt_batch['input_ids'].shape[1]} positions)", pt, args.top),
            tables(
                f"packed SFT step, {rows} rows of {length} positions"
                f" ({'SDPA, block mask' if args.masked else 'SDPA per example'})",
                sft,
                args.top,
            ),
        ]
    )
    emit(output, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
