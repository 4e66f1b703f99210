"""Answering requests with as few generation calls as the batch window allows.

One worker thread owns the model. Requests that arrive within ``window_ms`` of the first waiting one (up to
``max_batch_size``) are answered together, grouped by their generation options: a greedy batch answers each request
exactly as it would be answered alone (``generate_batch`` pads on the left and masks the padding). A request with a
``seed`` is answered alone, so that its seed alone decides its sample. A streaming request is generated alone, token
by token, through a streamer.
"""

from __future__ import annotations

import asyncio
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from mmllm_sdk.model.generation import Response


@dataclass(frozen=True)
class Options:
    """What a request asks of generation; requests with equal options can share a batch."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }


@dataclass
class Answer:
    """A request's answer: the response, why it ended, and its generated items as their saved files' bytes."""

    response: Response
    finished: str  # "stop" (an end of turn) or "length" (max_new_tokens reached)
    items: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)  # modality -> (suffix, file bytes)


@dataclass(eq=False)
class Job:
    conversation: list[dict[str, Any]]
    options: Options
    result: asyncio.Future[Answer]
    loop: asyncio.AbstractEventLoop
    pieces: asyncio.Queue[str | None] | None = None  # a streaming job's text, piece by piece; None ends it
    cancelled: threading.Event = field(default_factory=threading.Event)

    def key(self) -> tuple[Any, ...]:
        """Jobs of equal keys share a batch; a seeded or streaming job shares with none."""
        alone = self.options.seed is not None or self.pieces is not None
        return (self.options, id(self) if alone else None)


class Batcher:
    """The model's one worker: :meth:`answer` and :meth:`stream` queue a job and wait for it.

    ``calls`` counts the generation calls made (fewer than requests when batching works)."""

    def __init__(self, model: Any, *, max_batch_size: int = 8, window_ms: float = 10.0) -> None:
        self.model, self.max_batch_size, self.window = model, max_batch_size, window_ms / 1000
        self.calls = 0
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="mmllm-serve-model", daemon=True)
        self._worker.start()

    def close(self) -> None:
        self._jobs.put(None)
        self._worker.join(timeout=60)

    async def answer(self, conversation: list[dict[str, Any]], options: Options) -> Answer:
        loop = asyncio.get_running_loop()
        job = Job(conversation, options, loop.create_future(), loop)
        self._jobs.put(job)
        return await job.result

    def stream(self, conversation: list[dict[str, Any]], options: Options) -> Stream:
        """Start a streaming answer: iterate the :class:`Stream` for its text as it is generated."""
        loop = asyncio.get_running_loop()
        job = Job(conversation, options, loop.create_future(), loop, asyncio.Queue())
        self._jobs.put(job)
        return Stream(job)

    # the worker thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while (first := self._jobs.get()) is not None:
            jobs, deadline = [first], time.monotonic() + self.window
            while len(jobs) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                try:
                    job = self._jobs.get(timeout=left)
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                jobs.append(job)
            groups: dict[tuple[Any, ...], list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.key(), []).append(job)
            for group in groups.values():
                self._generate(group)

    def _generate(self, jobs: list[Job]) -> None:
        """One generation call for ``jobs`` (equal options); each job's future gets its answer or the error."""
        options, streaming = jobs[0].options, jobs[0].pieces is not None
        kwargs = options.kwargs()
        if options.seed is not None:
            torch.manual_seed(options.seed)
        if streaming:
            kwargs["streamer"] = Pieces(self.model, jobs[0])
            kwargs["stopping_criteria"] = StoppingCriteriaList([Cancelled(jobs[0].cancelled)])
        folder = Path(tempfile.mkdtemp(prefix="mmllm-serve-")) if self.model.output_heads else None
        self.calls += 1
        try:
            responses = self.model.generate_batch([job.conversation for job in jobs], output_dir=folder, **kwargs)
            answers = [self._answer(response) for response in responses]
        except Exception as error:  # handed to each request, which answers with its status
            for job in jobs:
                _settle(job, error=error)
            return
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        for job, answer in zip(jobs, answers, strict=True):
            _settle(job, answer)

    def _answer(self, response: Response) -> Answer:
        finished = (
            "stop" if response.token_ids and response.token_ids[-1] in self.model.llm.end_token_ids() else "length"
        )
        items = {m: [(Path(f).suffix, Path(f).read_bytes()) for f in files] for m, files in response.files.items()}
        return Answer(response, finished, items)


class Stream:
    """A streaming answer: ``async for piece in stream`` gives its text as it is generated, :meth:`answer` the whole
    :class:`Answer` after; :meth:`stop` ends the generation at its next token (a stop string was seen, or the client
    went away)."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> str:
        piece = await self.job.pieces.get()
        if piece is None:
            raise StopAsyncIteration
        return piece

    def stop(self) -> None:
        self.job.cancelled.set()

    async def answer(self) -> Answer:
        return await self.job.result


def _settle(job: Job, answer: Answer | None = None, error: BaseException | None = None) -> None:
    """Hand the result to the request's event loop (the worker thread must not touch its futures directly)."""

    def settle() -> None:
        if job.result.done():
            return
        if error is not None:
            job.result.set_exception(error)
        else:
            job.result.set_result(answer)
        if job.pieces is not None:
            job.pieces.put_nowait(None)

    job.loop.call_soon_threadsafe(settle)


class Pieces(BaseStreamer):
    """A transformers streamer that sends a streaming job the new text after each generated token. Text is held
    back while it ends in an incomplete character (a token may be part of one)."""

    def __init__(self, model: Any, job: Job) -> None:
        self.decode, self.job = model.processor.decode, job
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt's ids (none here: the prompt is embeddings)
            self.prompt_seen = True
            return
        self.ids += value.flatten().tolist()
        text = self.decode(self.ids)
        if text.endswith("\ufffd") or len(text) <= len(self.sent):
            return
        piece, self.sent = text[len(self.sent) :], text
        self.job.loop.call_soon_threadsafe(self.job.pieces.put_nowait, piece)

    def end(self) -> None:
        pass


class Cancelled(StoppingCriteria):
    """Stops generation once the request that streams it is gone."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
