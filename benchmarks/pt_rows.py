"""The PT rows of benchmarks/run.py: our PT step against transformers' Llava (throughput and loss), with bf16 frozen
weights, and the FLOP/s our step achieves against the machine's matmul rate."""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import time
from itertools import pairwise
from typing import Any

import common
import torch
from common import Row, Sizes, build_ours, model_spec, ours_step, say, useful_tokens, yes_no


def loss_target() -> tuple[str, float]:
    """How close the losses must be: float32 on the CPU, bfloat16 frozen weights on a GPU (Llava's projector too)."""
    return ("rel diff ≤ 1 %", 1e-2) if common.DEVICE.type == "cuda" else ("abs diff ≤ 1e-4", 1e-4)


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


def throughput_rows(results: dict[str, dict[str, Any]], batch_size: int) -> list[Row]:
    ours, ref = results["ours"], results["llava"]
    ratio = ours["tokens_per_s"] / ref["tokens_per_s"]
    relative = common.DEVICE.type == "cuda"
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
    if common.DEVICE.type == "cuda":
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
