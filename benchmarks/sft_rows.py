"""The SFT rows of benchmarks/run.py: a LLaVA-1.5-shaped instruction set (instruct_mix.py), our packed rows against
transformers' Llava on padded batches of the same examples, and our own unpacked batches.

Every runner makes one pass over the same examples (forward and backward, gradients dropped, as the PT rows), its
batches interleaved with the others' so that other load on the CPU falls on all alike.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common as bench
import instruct_mix
from common import SEED, Row, Sizes, in_child, llava_step, memory_child, ours_step, say, yes_no

from mmllm_sdk.default_plugins.recipes.host import freed_memory_kept
from mmllm_sdk.default_plugins.recipes.packing import Pack, PackedCollator, pack, prepare_packing
from mmllm_sdk.model.processor import IGNORE_INDEX


@dataclass
class Pass:
    """One runner's pass over the set: its batches, their useful and padded positions, and what it measured."""

    step: Any
    batches: list[dict[str, Any]]
    useful: list[int]  # non-padding positions of each batch
    seconds: list[float] = field(default_factory=list)
    chunked_loss: float = 0.0  # the mean loss of each batch times its supervised tokens, added up

    @property
    def tokens_per_s(self) -> float:
        return sum(self.useful) / sum(self.seconds)

    @property
    def padding_share(self) -> float:
        positions = sum(batch["input_ids"].numel() for batch in self.batches)
        return 1 - sum(self.useful) / positions


def supervised(batch: dict[str, Any]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def conversations(model: Any, sizes: Sizes, workdir: Path) -> list[Any]:
    """The instruct mix's conversations, each within a packed row (longer ones lose their last turns, as LLaVA
    truncates), parsed, in a seeded random order (the Trainer's default sampler)."""
    records = instruct_mix.generate(sizes.sft_examples, workdir / "mix-images", SEED)
    processor = model.processor

    def count(messages: list[dict[str, Any]]) -> int:
        return len(processor.encode(processor.parse(messages)).input_ids)

    instruct_mix.fit(records, count, sizes.row_length)
    examples = [processor.parse(record["messages"]) for record in records]
    random.Random(SEED).shuffle(examples)
    return examples


def passes(model: Any, llava: Any, examples: list[Any], sizes: Sizes) -> tuple[dict[str, Pass], Any]:
    """Ours packed (rows of ``sizes.row_length``, ``sizes.packed_rows`` a batch), ours unpacked and Llava (the same
    padded batches of ``sizes.batch_size`` examples)."""
    padded = [model.processor(examples[i : i + sizes.batch_size]) for i in range(0, len(examples), sizes.batch_size)]
    prepare_packing(model.llm, "sft")  # as a packed run does: SDPA per example (every other call: SDPA as before)
    packing = pack(model, examples, sizes.row_length, "assistant", "sft")
    packs = [Pack(tuple(examples[i] for i in row)) for row in packing.rows]
    random.Random(SEED).shuffle(order := list(range(len(packs))))
    collate = PackedCollator(model, sizes.row_length)
    packed, useful = [], []
    for start in range(0, len(order), sizes.packed_rows):
        chosen = order[start : start + sizes.packed_rows]
        packed.append(collate([packs[i] for i in chosen]))
        useful.append(sum(packing.lengths[i] for i in chosen))
    counts = [int(batch["attention_mask"].sum()) for batch in padded]
    runs = {
        "ours packed": Pass(lambda batch: ours_step(model, batch), packed, useful),
        "ours unpacked": Pass(lambda batch: ours_step(model, batch), padded, counts),
        "llava": Pass(lambda batch: llava_step(llava, batch), padded, counts),
    }
    return runs, packing


def run_passes(runs: dict[str, Pass]) -> None:
    """A warm-up step each, then every runner's batches, interleaved."""
    for run in runs.values():
        run.step(run.batches[0])
    for index in range(max(len(run.batches) for run in runs.values())):
        for run in runs.values():
            if index < len(run.batches):
                batch = run.batches[index]
                start = time.perf_counter()
                loss = run.step(batch)
                run.seconds.append(time.perf_counter() - start)
                run.chunked_loss += loss * supervised(batch)
    for name, run in runs.items():
        say(f"  {name}: {len(run.batches)} batches, {sum(run.seconds):.1f} s, padding {run.padding_share:.1%}")


def sft_rows(
    model: Any, llava: Any, spec: dict[str, Any], export_dir: Path, sizes: Sizes, workdir: Path, threads: int
) -> tuple[list[Row], list[str]]:
    examples = conversations(model, sizes, workdir)
    runs, packing = passes(model, llava, examples, sizes)
    say(f"SFT: {len(examples)} instruct-mix conversations; {packing.summary(len(examples))}")
    with freed_memory_kept(
        bench.DEVICE.type == "cpu"
    ):  # as mmllm_sdk.train runs its steps; its memory is returned after
        run_passes(runs)
    ours, unpacked, ref = runs["ours packed"], runs["ours unpacked"], runs["llava"]
    ratio = ours.tokens_per_s / ref.tokens_per_s
    drift = abs(ours.chunked_loss - ref.chunked_loss) / abs(ref.chunked_loss)
    where = f"{len(examples)} instruct-mix conversations"
    bound = 1e-2 if bench.DEVICE.type == "cuda" else 1e-5  # bf16 on a GPU: 1 %; float32: the summation order only
    rows = [
        Row(
            f"SFT step throughput, {where}: ours packed ({sizes.packed_rows} rows of {sizes.row_length}) vs Llava "
            f"padded (batch {sizes.batch_size}) (useful tokens/s, fwd+bwd)",
            f"{ours.tokens_per_s:.0f}",
            f"{ref.tokens_per_s:.0f}",
            f"{ratio:.2f}×",
            "≥ 2.00×",
            yes_no(ratio >= 2.0),
        ),
        Row(
            "SFT summed loss over the same conversations",
            f"{ours.chunked_loss:.3f}",
            f"{ref.chunked_loss:.3f}",
            f"rel diff {drift:.1e}",
            f"rel diff ≤ {bound:.0e}",
            yes_no(drift <= bound),
        ),
        Row(
            f"SFT epoch (fwd+bwd over the {where}), ours packed vs ours unpacked (s; padding share)",
            f"{sum(ours.seconds):.1f} s ({ours.padding_share:.1%} padding)",
            f"{sum(unpacked.seconds):.1f} s ({unpacked.padding_share:.1%} padding)",
            f"{sum(unpacked.seconds) / sum(ours.seconds):.2f}× (unpacked / packed)",
            "—",
            "—",
        ),
    ]
    heaviest = lambda run: max(run.batches, key=lambda batch: batch["input_ids"].numel())  # noqa: E731
    say("memory: a packed step and Llava's largest padded step, one child process each")
    device = str(bench.DEVICE)
    mine = in_child(memory_child, "ours", spec, heaviest(ours), threads, device)
    theirs = in_child(memory_child, "llava", str(export_dir), heaviest(ref), threads, device)
    if mine["peak"] == mine["peak"] and theirs["peak"] == theirs["peak"]:  # not NaN: the peak could be reset
        rows.append(
            Row(
                f"{'Peak GPU memory allocated' if device.startswith('cuda') else 'Peak RSS'}, SFT: ours' largest "
                "packed batch vs Llava's largest padded batch (MiB; + over the step's start)",
                f"{mine['peak']:.0f} (+{mine['peak'] - mine['before']:.0f})",
                f"{theirs['peak']:.0f} (+{theirs['peak'] - theirs['before']:.0f})",
                f"{mine['peak'] / theirs['peak']:.2f}×",
                "—",
                "—",
            )
        )
    lengths = [len(model.processor.encode(example).input_ids) for example in examples]
    note = (
        f"SFT rows: {len(examples)} conversations of benchmarks/instruct_mix.py (LLaVA-1.5's mixture; tokens each: "
        f"median {sorted(lengths)[len(lengths) // 2]}, min {min(lengths)}, max {max(lengths)}); packed into "
        f"{len(packing.rows)} rows of at most {sizes.row_length} tokens ({packing.padding_share:.1%} of the rows empty)"
    )
    return rows, [note]
