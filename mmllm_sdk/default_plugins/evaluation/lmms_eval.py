"""lmms-eval model classes for SDK checkpoints: ``python -m lmms_eval --model mmllm --model_args pretrained=CKPT``.

Each request becomes the conversation ``mmllm eval`` builds for the same data record: one user turn holding the
task's media (images, audio, video), then its text. Answers are greedy, in batches; log-likelihoods are those of
:func:`~mmllm_sdk.model.scoring.answer_logprobs`. lmms-eval finds these classes through
:mod:`.lmms_eval_manifest`; only lmms-eval imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm.auto import tqdm

from mmllm_sdk.components.modality import DIRECTORY
from mmllm_sdk.default_plugins.commands.chat import load_any
from mmllm_sdk.errors import InputError
from mmllm_sdk.model.scoring import answer_logprobs
from mmllm_sdk.registry import get_registry

try:  # lmms-eval 0.7 turns every response that is not text into its str(), a (loss, is_greedy) pair included
    from lmms_eval.api.instance import GenerationResult, unwrap_generation_output

    _WRAP_PAIRS = unwrap_generation_output((0.0, True))[0] != (0.0, True)
except ImportError:  # older lmms-eval hands responses over as they are
    _WRAP_PAIRS = False


def to_part(visual: Any, inputs: list[str]) -> dict[str, Any]:
    """One visual as lmms-eval hands it over, as an SDK content part: a PIL image; a path (its modality is the first
    of ``inputs``, else of the registered modalities, that reads its suffix); an audio dict ``{"array",
    "sampling_rate"}`` or the ``datasets`` AudioDecoder that behaves like one. A modality outside ``inputs`` is an
    :class:`InputError` naming both."""
    if isinstance(visual, Image.Image):
        part = {"type": "image", "image": visual}
    elif isinstance(visual, (str, Path)):
        suffix = DIRECTORY if Path(visual).is_dir() else Path(visual).suffix.lower()
        readers = [r.value.name for r in get_registry().entries("modalities") if suffix in r.value.loaders]
        if not readers:
            raise InputError(f"No registered modality reads {suffix or 'suffix-less'} files such as {str(visual)!r}.")
        part = {"type": next((m for m in readers if m in inputs), readers[0]), "path": str(visual)}
    elif (isinstance(visual, dict) and {"array", "sampling_rate"} <= set(visual)) or hasattr(visual, "get_all_samples"):
        part = {"type": "audio", "audio": {"array": visual["array"], "sampling_rate": visual["sampling_rate"]}}
    else:
        raise InputError(
            f"lmms-eval handed over a {type(visual).__name__}; the mmllm model reads PIL images, file paths and "
            "audio dicts {'array': ..., 'sampling_rate': ...}."
        )
    if part["type"] not in inputs:
        raise InputError(
            f"The task hands the model {part['type']} input ({part.get('path', 'in memory')}), but this model's "
            f"inputs are {', '.join(inputs) or 'text only'}; evaluate it on tasks of those modalities."
        )
    return part


class MMLLMLmms(lmms):
    """``--model mmllm``: greedy generation, log-likelihoods and multi-round generation over an SDK checkpoint.

    model_args: ``pretrained`` (a checkpoint folder or a YAML model spec), ``trust_remote_code`` (run code from the
    checkpoint's model folders; default false), ``max_new_tokens`` (default 32; a task's ``generation_kwargs`` win);
    ``--batch_size`` and ``--device`` (default: cuda when there is one) as usual. No system turn is added, as in
    ``mmllm eval`` (lmms-eval's ``--system_instruction`` goes into each prompt's text).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        trust_remote_code: bool = False,
        max_new_tokens: int = 32,
        batch_size: int | str = 1,
        device: str | None = None,
        max_batch_size: Any = None,  # lmms-eval passes it along; batches here are always batch_size
    ) -> None:
        super().__init__()
        for name, value in (("--batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
            if not str(value).isdigit() or int(value) < 1:
                raise InputError(f"{name} of the mmllm model must be a whole number of at least 1; got {value!r}.")
        self.batch_size, self.max_new_tokens = int(batch_size), int(max_new_tokens)
        self.model = load_any(str(pretrained), trust_remote_code=bool(trust_remote_code))
        self.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()

    # conversations --------------------------------------------------------------------------------

    def turn(self, visuals: Any, text: str | None) -> dict[str, Any]:
        """A user turn of the task's media (a visual or a list of them), then its text."""
        if not isinstance(visuals, (list, tuple)):
            visuals = [] if visuals is None else [visuals]
        parts = [to_part(v, list(self.model.encoders)) for v in visuals if v is not None]
        return {"role": "user", "content": parts + ([{"type": "text", "text": text}] if text else [])}

    def doc(self, task: str, split: str, doc_id: int) -> Any:
        return self.task_dict[task][split][doc_id]

    # generation -----------------------------------------------------------------------------------

    def greedy(self, gen_kwargs: dict[str, Any], task: str) -> tuple[int, list[str]]:
        """A task's ``max_new_tokens`` (else the model_args') and ``until`` strings; sampling and beam search are
        refused, since a score from them would not be the greedy one ``mmllm eval`` reports."""
        options = dict(gen_kwargs or {})
        until = options.pop("until", None) or []
        sampling = options.get("do_sample") or (
            float(options.get("temperature") or 0) > 0 and options.get("do_sample") is not False
        )
        if sampling or int(options.get("num_beams") or 1) > 1:
            raise InputError(
                f"Task {task!r} asks for sampling or beam search ({options}); the mmllm model decodes greedily only. "
                "Pass --gen_kwargs temperature=0,do_sample=False,num_beams=1 to run it greedily."
            )
        return int(options.get("max_new_tokens") or self.max_new_tokens), [until] if isinstance(until, str) else until

    def answer(self, conversations: list[Any], max_new_tokens: int, until: list[str]) -> list[str]:
        replies = self.model.generate_batch(conversations, max_new_tokens=max_new_tokens, do_sample=False)
        return [_cut(reply.text, until) for reply in replies]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        jobs = []
        for request in requests:
            ctx, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            jobs.append(([self.turn(doc_to_visual(self.doc(task, split, doc_id)), ctx)], gen_kwargs, task))
        return self._generate(jobs)

    def _generate(self, jobs: list[tuple[list[Any], dict[str, Any], str]]) -> list[str]:
        """Batches of requests that share their generation options (one task's, usually)."""
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for index, (_, gen_kwargs, task) in enumerate(jobs):
            max_new, until = self.greedy(gen_kwargs, task)
            groups.setdefault((max_new, tuple(until)), []).append(index)
        answers: list[str] = [""] * len(jobs)
        bar = tqdm(total=len(jobs), desc="mmllm generate", disable=self.rank != 0)
        for (max_new, until), indices in groups.items():
            for first in range(0, len(indices), self.batch_size):
                chunk = indices[first : first + self.batch_size]
                for index, text in zip(
                    chunk, self.answer([jobs[i][0] for i in chunk], max_new, list(until)), strict=True
                ):
                    answers[index] = text
                bar.update(len(chunk))
        bar.close()
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[Any]:
        """Per request, the NEGATIVE log-likelihood of its continuation as the assistant's answer (lmms-eval's
        ``multiple_choice`` picks the smallest, as a loss) and whether greedy decoding gives that answer. The
        continuation loses its leading ``target_delimiter`` (a new turn starts no sentence)."""
        pairs = []
        for first in range(0, len(requests), self.batch_size):  # a batch's media in memory at a time
            conversations = []
            for request in requests[first : first + self.batch_size]:
                ctx, target, doc_to_visual, doc_id, task, split = request.args
                doc = self.doc(task, split, doc_id)
                answer = str(target if isinstance(target, str) else target(doc)).lstrip()
                conversations.append([self.turn(doc_to_visual(doc), ctx), {"role": "assistant", "content": answer}])
            scores = answer_logprobs(self.model, conversations, batch_size=self.batch_size)
            pairs += [(-score.logprob, score.greedy) for score in scores]
        return [GenerationResult(text=pair) for pair in pairs] if _WRAP_PAIRS else pairs

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Round 0 answers ``ctx`` with the task's media; round k asks ``doc_to_text(doc, round_idx=k,
        previous_output=answers, previous_round_info=info)`` for ``(visuals, text, terminal, answers, info)``.
        One list of answers (one per round) per request."""
        results = []
        for request in requests:
            ctx, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc = self.doc(task, split, doc_id)
            next_turns = partial(self._next_turns, doc_to_text, doc)
            results.append(self._rounds([self.turn(doc_to_visual(doc), ctx)], next_turns, gen_kwargs, task))
        return results

    def _next_turns(self, doc_to_text: Callable, doc: Any, k: int, answers: list[str], info: Any) -> tuple:
        visuals, text, terminal, previous, info = doc_to_text(
            doc, previous_output=answers, round_idx=k, previous_round_info=info
        )
        return None if terminal else [self.turn(visuals, text)], terminal, previous, info

    def _rounds(self, first: list[Any], next_turns: Callable, gen_kwargs: dict[str, Any], task: str) -> list[str]:
        """Answer, then ask ``next_turns(k, answers, info)`` for ``(turns, terminal, answers, info)`` until the
        task says the dialogue is over."""
        max_new, until = self.greedy(gen_kwargs, task)
        history, answers, info, k = list(first), [], None, 0
        while True:
            if k > 0:
                turns, terminal, previous, info = next_turns(k, list(answers), info)
                if terminal:
                    return answers
                answers, history = list(previous) if previous is not None else answers, history + turns
            answers.append(self.answer([history], max_new, until)[0])
            history, k = [*history, {"role": "assistant", "content": answers[-1]}], k + 1


class MMLLMLmmsChat(MMLLMLmms):
    """``--model mmllm_chat``: the same model for tasks that hand over messages (``doc_to_messages``); lmms-eval's
    chat models only generate, so log-likelihood tasks need ``--model mmllm``."""

    is_simple = False

    def messages(self, messages: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """lmms-eval's messages, their ``{"type": ..., "url": ...}`` media parts typed by what they hold (lmms-eval
        calls an audio dict a "video"); the order of the parts is kept."""
        inputs, turns = list(self.model.encoders), []
        for message in messages or []:
            content = message["content"]
            content = [{"type": "text", "text": content}] if isinstance(content, str) else content
            parts = [part if part["type"] == "text" else to_part(part["url"], inputs) for part in content]
            turns.append({"role": message["role"], "content": parts})
        return turns

    def generate_until(self, requests: list[Instance]) -> list[str]:
        jobs = []
        for request in requests:
            _, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
            turns = self.messages(doc_to_messages(self.doc(task, split, doc_id)))
            jobs.append((turns, gen_kwargs, task))
        return self._generate(jobs)

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Round k >= 1 asks ``doc_to_messages(doc, round_idx=k, previous_output=answers, previous_round_info=info)``
        for ``(messages, terminal, answers, info)``."""
        results = []
        for request in requests:
            _, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
            doc = self.doc(task, split, doc_id)
            next_turns = partial(self._next_messages, doc_to_messages, doc)
            results.append(self._rounds(self.messages(doc_to_messages(doc)), next_turns, gen_kwargs, task))
        return results

    def _next_messages(self, doc_to_messages: Callable, doc: Any, k: int, answers: list[str], info: Any) -> tuple:
        messages, terminal, previous, info = doc_to_messages(
            doc, round_idx=k, previous_output=answers, previous_round_info=info
        )
        return None if terminal else self.messages(messages), terminal, previous, info


def _cut(text: str, until: list[str]) -> str:
    """``text`` up to the first of the ``until`` strings it holds."""
    ends = [text.index(stop) for stop in until if stop and stop in text]
    return text[: min(ends)] if ends else text
