"""What a DPO step holds without the logits: our DPO step's log-probabilities from (B, K, V) logits, as the recipes
took them before, and from ``token_logprobs`` (the LM head a chunk of answer tokens at a time), side by side.

    .venv/bin/python benchmarks/preference_memory.py --threads 2

The model is benchmarks/common.py's (SmolLM2-135M-Instruct, a 49,153-token vocabulary) with LoRA adapters (r 8) on the
LLM's attention, as a DPO stage trains it. A batch is 4 pairs of long answers (chosen then rejected rows, labels on
the answers only, as the preference collator builds it). One step is the reference pass (no gradient) and the policy
pass with DPO's loss and its backward. Each way runs in a fresh process of its own, twice, in turns: the peak RSS
of its first step over the RSS before it (glibc keeping freed memory, as ``mmllm train`` runs on a CPU), then the
median time of three more steps. Both must give the same log-probabilities.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import torch
from common import (
    SEED,
    _reset_peak,
    _status_mib,
    benchmark_parser,
    build_ours,
    emit,
    in_child,
    model_spec,
    quiet_and_seeded,
    say,
)

from mmllm_sdk.default_plugins.recipes.host import freed_memory_kept
from mmllm_sdk.default_plugins.recipes.preference_losses import dpo_loss
from mmllm_sdk.model.scoring import target_logprobs

WAYS = {
    "logits": "(B, K, V) logits, then log-softmax",
    "token_logprobs": "token_logprobs: the head a chunk at a time",
}


def words(count: int, generator: torch.Generator) -> str:
    vocabulary = "the a image shows red green blue small large shape near far left right top bottom".split()
    picks = torch.randint(len(vocabulary), (count,), generator=generator).tolist()
    return " ".join(vocabulary[i] for i in picks)


def pairs_batch(model: Any, pairs: int, answer_words: int) -> dict[str, Any]:
    """``pairs`` prompts, each with a chosen and a rejected answer of about ``answer_words`` words: the B chosen rows
    then the B rejected rows, labels on the last answer only."""
    generator = torch.Generator().manual_seed(SEED)
    prompts = [[{"role": "user", "content": f"Describe picture {i} in detail."}] for i in range(pairs)]

    def answered(prompt: list[dict[str, str]], length: int) -> list[dict[str, str]]:
        return [*prompt, {"role": "assistant", "content": words(length, generator)}]

    chosen = [answered(prompt, answer_words) for prompt in prompts]
    rejected = [answered(prompt, answer_words * 3 // 4) for prompt in prompts]
    return model.processor([*chosen, *rejected], train_on="last_assistant")


def answer_sums(model: Any, batch: dict[str, Any], way: str) -> torch.Tensor:
    """Each row's answer log-probability (2B,), the one way or the other."""
    if way == "token_logprobs":
        return model(**batch, supervised_only=True, token_logprobs=True).logprobs.sum(dim=-1)
    out = model(**batch, supervised_only=True)
    return target_logprobs(out.logits, out.targets).sum(dim=-1)


def dpo_step(model: Any, batch: dict[str, Any], way: str) -> float:
    """One DPO step's reference pass, policy pass and backward; returns the policy's log-probabilities, summed."""
    with torch.no_grad():
        reference = answer_sums(model, batch, way)
    policy = answer_sums(model, batch, way)
    pairs = policy.shape[0] // 2
    loss = dpo_loss(policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:], beta=0.1).mean()
    loss.backward()
    for param in model.parameters():
        param.grad = None
    return policy.sum().item()


def measure(way: str, random_llm: bool, threads: int | None, pairs: int, answer_words: int) -> dict[str, Any]:
    """In a fresh process: the peak RSS of the first step over the RSS before it, then three timed steps."""
    quiet_and_seeded(threads)
    spec = model_spec(random_llm)
    spec["llm"]["peft"] = {"method": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"]}
    model = build_ours(spec)
    batch = pairs_batch(model, pairs, answer_words)
    with torch.no_grad():  # every weight read once: no page of them comes in during the measured step
        for param in model.parameters():
            param.sum()
    with freed_memory_kept():
        before = _status_mib("VmRSS")
        peak = float("nan")
        if _reset_peak():
            logprob = dpo_step(model, batch, way)
            peak = _status_mib("VmHWM")
        else:
            logprob = dpo_step(model, batch, way)
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            dpo_step(model, batch, way)
            seconds.append(time.perf_counter() - start)
    rows, length = batch["input_ids"].shape
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    return {
        "held": peak - before,
        "seconds": statistics.median(seconds),
        "logprob": logprob,
        "shape": f"{rows} rows of up to {length} tokens, {supervised} answer tokens",
    }


def main(argv: list[str] | None = None) -> int:
    args = benchmark_parser("2 pairs of short answers").parse_args(argv)
    pairs, answer_words = (2, 24) if args.quick else (4, 384)
    results: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    for round_ in range(1 if args.quick else 2):
        for way in WAYS:
            say(f"round {round_ + 1}: {way}")
            results[way].append(in_child(measure, way, args.random_llm, args.threads, pairs, answer_words))
    held = {way: min(run["held"] for run in runs) for way, runs in results.items()}
    seconds = {way: statistics.median(run["seconds"] for run in runs) for way, runs in results.items()}
    logprobs = {way: runs[0]["logprob"] for way, runs in results.items()}
    lines = [
        f"- DPO step, LoRA r 8 on q/v; {results['logits'][0]['shape']}; torch threads {torch.get_num_threads()}"
        f"{'' if args.threads is None else f' (--threads {args.threads})'}",
        "",
        "| log-probabilities from | peak RSS over the step's start (MiB) | step (s) | answers' log-probability |",
        "|---|---|---|---|",
        *(f"| {WAYS[way]} | {held[way]:.0f} | {seconds[way]:.2f} | {logprobs[way]:.2f} |" for way in WAYS),
        "",
        f"held: {held['token_logprobs'] / held['logits']:.2f}× the logits way's; step time "
        f"{seconds['token_logprobs'] / seconds['logits']:.2f}×; log-probability rel diff "
        f"{abs(logprobs['token_logprobs'] / logprobs['logits'] - 1):.1e}",
    ]
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
