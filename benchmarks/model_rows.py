"""The rows of benchmarks/run.py beyond the training steps: an epoch with and without the feature cache, generation
latency, peak memory of a PT step, the checkpoint's size, and the cold start."""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
import torch
from common import SEED, Row, Sizes, in_child, memory_child, on_device, say, yes_no


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
    ours = in_child(memory_child, "ours", spec, batch, threads, str(common.DEVICE))
    ref = in_child(memory_child, "llava", str(export_dir), batch, threads, str(common.DEVICE))
    memory = "Peak GPU memory allocated" if common.DEVICE.type == "cuda" else "Peak RSS"
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
