"""The ``synthetic-shapes`` data source: scenes as captions, questions and preference pairs, and answer scoring.

Each example's image is a generated scene (:mod:`.shapes`) written as a PNG file; its text is
the scene's ground truth, so a held-out answer can be scored exactly (:func:`score_answer`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mmllm_sdk.data.formats import ANSWER_ROLE, CONVERSATION, PREFERENCE, DataReport
from mmllm_sdk.default_plugins.datasets.shapes import (
    DATASET_NAME,
    DEFAULT_IMAGE_SIZE,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    POSITIONS,
    QUESTION_TYPES,
    QUESTIONS,
    SINGLE_SHAPE_QUESTIONS,
    QuestionType,
    Scene,
    answer_choices,
    check_question_type,
    generate_scene,
    image_file_name,
    wrong_answer,
)
from mmllm_sdk.default_plugins.metrics import answer_words, prefix
from mmllm_sdk.errors import InputError
from mmllm_sdk.files import atomic_write
from mmllm_sdk.validation import StrictModel, validate


def write_png(image: Any, path: Path) -> None:
    """Write an RGB image as a PNG file with Pillow; atomic, so parallel writers of one scene cannot tear it.

    The pixels are a function of the scene alone; the bytes depend on Pillow's encoder too.
    """
    atomic_write(path, lambda temporary: image.save(temporary, format="PNG"))


# Tasks ----------------------------------------------------------------------------------------------------------


class SyntheticParams(StrictModel):
    """Params of the ``synthetic-shapes`` dataset: which task, how many examples, from which scenes, written where."""

    task: Literal["captions", "qa", "preference"]  # PT captions, SFT questions, DPO pairs
    num_examples: int = Field(ge=1)  # one scene (and one image file) per example
    seed: int = Field(0, ge=0)
    split: Literal["train", "heldout"] = "train"  # held-out scenes never equal train scenes (see generate_scene)
    image_size: int = Field(DEFAULT_IMAGE_SIZE, ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)  # pixels per side
    max_shapes: int = Field(3, ge=1, le=len(POSITIONS))  # captions and count questions draw 1..max_shapes shapes
    question_types: list[QuestionType] | None = None  # qa / preference: asked in turn, index % len; default: all
    out_dir: str = Field(min_length=1)  # folder for the PNG files (created); relative paths start at the cwd

    @model_validator(mode="after")
    def _question_types(self) -> SyntheticParams:
        if self.question_types is not None:
            if self.task == "captions":
                raise ValueError("question_types applies to task 'qa' and 'preference', not to 'captions'")
            if not self.question_types:
                raise ValueError(f"question_types is empty; leave it out for all of {', '.join(QUESTION_TYPES)}")
            if len(set(self.question_types)) != len(self.question_types):
                raise ValueError(f"question_types lists a type twice: {self.question_types}")
        return self

    def asked(self) -> tuple[str, ...]:
        """The question types, in the order they take turns."""
        return tuple(self.question_types) if self.question_types else QUESTION_TYPES


@dataclass(frozen=True)
class SyntheticExample:
    """One generated example with what produced it: for scoring held-out answers and for inspection."""

    example: dict[
        str, Any
    ]  # the SDK's example dict: {"messages", "source"} or {"prompt", "chosen", "rejected", "source"}
    scene: Scene
    image_path: str  # absolute
    question_type: str | None  # None for captions
    question: str | None  # the user's text (None for captions: the image alone)
    answer: str  # the assistant's text: the caption, or the right answer (= chosen)
    rejected: str | None = None  # preference only: the wrong answer


def generate_examples(params: SyntheticParams | dict[str, Any]) -> list[SyntheticExample]:
    """Draw the scenes, write their PNG files into ``out_dir`` and build one example per scene.

    Example ``i`` uses scene ``i`` of (seed, split). ``qa`` and ``preference`` ask question type
    ``types[i % len(types)]``; colour, shape and position questions are asked about one-shape
    scenes, count questions about scenes of 1..max_shapes shapes.
    """
    if not isinstance(params, SyntheticParams):
        params = validate(SyntheticParams, params, where=f"{DATASET_NAME}.params")
    out_dir = Path(os.path.abspath(os.path.expanduser(params.out_dir)))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"{DATASET_NAME}: cannot create out_dir {str(out_dir)!r} for the images ({exc.strerror}); give a "
            "writable folder."
        ) from None
    types = params.asked()
    return [_example(params, index, types, out_dir) for index in range(params.num_examples)]


def _example(params: SyntheticParams, index: int, types: tuple[str, ...], out_dir: Path) -> SyntheticExample:
    question_type = None if params.task == "captions" else types[index % len(types)]
    num_shapes = 1 if question_type in SINGLE_SHAPE_QUESTIONS else None
    image, scene = generate_scene(
        params.seed, index, params.image_size, params.max_shapes, split=params.split, num_shapes=num_shapes
    )
    path = out_dir / image_file_name(scene)
    write_png(image, path)
    source = f"{DATASET_NAME}:{params.split}:{index}"
    image_part = {"type": "image", "path": str(path)}
    if question_type is None:
        caption = scene.caption()
        messages = [_message("user", image_part), _message(ANSWER_ROLE, _text(caption))]
        example = {"messages": messages, "source": source}
        return SyntheticExample(example, scene, str(path), None, None, caption)
    question, answer = QUESTIONS[question_type], scene.answer(question_type)
    prompt = [_message("user", image_part, _text(question))]
    if params.task == "qa":
        example = {"messages": [*prompt, _message(ANSWER_ROLE, _text(answer))], "source": source}
        return SyntheticExample(example, scene, str(path), question_type, question, answer)
    rejected = wrong_answer(scene, question_type, params.max_shapes)
    example = {
        "prompt": prompt,
        "chosen": [_message(ANSWER_ROLE, _text(answer))],
        "rejected": [_message(ANSWER_ROLE, _text(rejected))],
        "source": source,
    }
    return SyntheticExample(example, scene, str(path), question_type, question, answer, rejected)


def _message(role: str, *parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": role, "content": list(parts)}


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def build_synthetic_dataset(params: SyntheticParams | dict[str, Any]) -> DataReport:
    """The ``synthetic-shapes`` dataset factory: :func:`generate_examples` as a :class:`DataReport`.

    ``kind`` is ``"conversation"`` for captions and qa (pt, sft) and ``"preference"`` for
    preference (dpo); ``files`` is ``[out_dir]``; each example's ``source`` is
    ``"synthetic-shapes:SPLIT:INDEX"``.
    """
    if not isinstance(params, SyntheticParams):
        params = validate(SyntheticParams, params, where=f"{DATASET_NAME}.params")
    items = generate_examples(params)
    kind, record_format = (PREFERENCE, "preference") if params.task == "preference" else (CONVERSATION, "messages")
    out_dir = os.path.abspath(os.path.expanduser(params.out_dir))
    return DataReport(
        examples=[item.example for item in items],
        skipped=[],
        kind=kind,
        files=[out_dir],
        formats={record_format: len(items)},
        categories=[item.question_type for item in items] if params.task != "captions" else None,
        metric="prefix",  # the demo's rule (score_answer)
        choices=[answer_choices(item.question_type, params.max_shapes) for item in items]
        if params.task == "qa"
        else None,
    )


build_synthetic_dataset.Params = SyntheticParams  # type: ignore[attr-defined]


# Scoring --------------------------------------------------------------------------------------------------------


def score_answer(question_type: str, generated_text: str, expected_text: str) -> bool:
    """Whether a generated answer is right: its first content words are the expected answer's content words.

    Both texts go through :func:`answer_words`. The answer is right when the generated words
    *start with* all of the expected words, in order: for "Red." ``"Red."``, ``"red"``,
    ``"It is red."``, ``"The shape is red!"``, ``"Red circle."`` and ``"Red. Or blue."``
    are right; ``"Dark red."``, ``"I think red"``, ``"Blue."`` and ``""`` are wrong. For
    "Top left." ``"In the top left."`` is right and ``"Top."`` or ``"Left top."`` wrong; for
    "Three." ``"3"`` and ``"There are three shapes."`` are right. ``question_type`` must be
    one of :data:`QUESTION_TYPES` (the rule is the same for all).
    """
    check_question_type(question_type)
    if not answer_words(expected_text):
        raise InputError(f"The expected answer {expected_text!r} has no content word to compare with.")
    return bool(prefix(generated_text, expected_text))
