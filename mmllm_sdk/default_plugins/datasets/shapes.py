"""Synthetic shapes, the scenes: generated images with exact ground truth, on every machine the same pixels.

The vocabulary (colours, shapes, grid cells, question types), the ground truth of a scene
(:class:`Scene`), its drawing (:func:`generate_scene`) and the answers to its questions. The
``synthetic-shapes`` data source (:mod:`.synthetic`) turns scenes into examples and PNG files.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from random import Random
from typing import Any, Literal

import numpy as np

from mmllm_sdk.errors import InputError

# The vocabulary. Every table is the one place its values live.

DATASET_NAME = "synthetic-shapes"  # the name the built-in plugin registers, and the prefix of each example's source
PALETTE = {  # colour name -> RGB; hues about 60° apart, all saturated, so none is near the grey background
    "red": (220, 38, 38),
    "orange": (245, 130, 20),
    "yellow": (240, 210, 30),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "purple": (135, 60, 190),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
POSITIONS = (  # the 3x3 grid cells in reading order: cell k is row k // 3, column k % 3
    "top left",
    "top middle",
    "top right",
    "middle left",
    "center",
    "middle right",
    "bottom left",
    "bottom middle",
    "bottom right",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
BACKGROUNDS = ("plain", "gradient", "stripes", "checker")  # all neutral grey: r == g == b at every pixel
SPLITS = ("train", "heldout")

QuestionType = Literal["colour", "shape", "position", "count"]
QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "position", "count")
QUESTIONS = {  # one fixed wording per question type
    "colour": "What colour is the shape?",
    "shape": "What shape is it?",
    "position": "Where is the shape?",
    "count": "How many shapes are there?",
}
SINGLE_SHAPE_QUESTIONS = ("colour", "shape", "position")  # asked about one-shape scenes only: one right answer

# Geometry, as fractions of a grid cell's width.
DEFAULT_IMAGE_SIZE = 224
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 2048
MIN_RADIUS, MAX_RADIUS = 0.22, 0.40  # a shape's radius (its circumscribed circle) relative to the cell
CELL_MARGIN = 2  # pixels between a shape's bounding box and its cell's edge, at least
SQUARE_HALF_SIDE = 0.85  # of the radius: a square as wide as its circumscribed circle looks too big
STAR_INNER_RADIUS = 0.45  # of the radius: the inner corners of the five-pointed star
CROSS_HALF_WIDTH = 0.32  # of the radius: half the width of the cross's two bars
BACKGROUND_TONES = (200, 245)  # the lighter background grey lies in this range
BACKGROUND_CONTRAST = (6, 14)  # the second grey of a texture is this much darker
TEXTURE_PERIOD = (6, 16)  # pixels per stripe or checker square


def _unit_polygon(radii: tuple[float, ...]) -> tuple[tuple[float, float], ...]:
    """Corners at equal angles from straight up, clockwise on screen, at the given radii (cycled).

    Rounded to 6 decimals so that a last-bit difference of a platform's sin/cos cannot move a corner.
    """
    count = len(radii)
    corners = []
    for k in range(count):
        angle = 2 * np.pi * k / count
        corners.append((round(radii[k] * float(np.sin(angle)), 6), round(-radii[k] * float(np.cos(angle)), 6)))
    return tuple(corners)


TRIANGLE = _unit_polygon((1.0, 1.0, 1.0))  # equilateral, pointing up; its centroid is the shape's centre
STAR = _unit_polygon((1.0, STAR_INNER_RADIUS) * 5)  # five points, the first straight up


# Ground truth --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeSpec:
    """One drawn shape: what it is and where, in the terms the questions use and in pixels."""

    shape: str  # one of SHAPES
    colour: str  # a key of PALETTE
    position: str  # one of POSITIONS: the grid cell that holds the whole shape
    center: tuple[int, int]  # (x, y) in pixels; this pixel always has the shape's colour
    radius: int  # half the width of the shape's box (a circle's radius; a square's half side is 0.85 of it)

    @property
    def rgb(self) -> tuple[int, int, int]:
        return PALETTE[self.colour]

    def describe(self) -> str:
        """``"a red circle in the top left"`` (``"an orange …"`` before a vowel)."""
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.shape} in the {self.position}"


@dataclass(frozen=True)
class Scene:
    """The ground truth of one generated image: where it comes from, its background and its shapes."""

    seed: int
    split: str  # "train" or "heldout"
    index: int
    image_size: int  # the image is image_size x image_size pixels
    background: str  # one of BACKGROUNDS
    background_tones: tuple[int, int]  # the two greys of the texture (equal for "plain"); a gradient runs between
    shapes: tuple[ShapeSpec, ...]  # one per occupied grid cell, in reading order of the cells

    @property
    def count(self) -> int:
        return len(self.shapes)

    def caption(self) -> str:
        """``"A red circle in the top left."``; several shapes are listed in reading order of their cells."""
        parts = [shape.describe() for shape in self.shapes]
        text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return text[0].upper() + text[1:] + "."

    def answer(self, question_type: str) -> str:
        """The one right answer to :data:`QUESTIONS` ``[question_type]`` about this scene."""
        check_question_type(question_type)
        if question_type == "count":
            return _count_answer(self.count)
        if self.count != 1:
            raise InputError(
                f"A {question_type!r} question needs a one-shape scene (its answer would be ambiguous); this scene "
                f"has {self.count} shapes. Ask 'count', or generate the scene with num_shapes=1."
            )
        return _answer(question_type, getattr(self.shapes[0], question_type))  # .colour, .shape, .position

    def to_dict(self) -> dict[str, Any]:
        """The ground truth as plain data (for a JSON file next to the images)."""
        return asdict(self)


def _answer(question_type: str, value: str) -> str:
    """The fixed answer template of each question type: "Red.", "A circle.", "Top left.", "Three."."""
    if question_type == "shape":
        return f"A {value}."
    return value[0].upper() + value[1:] + "."


def _count_answer(count: int) -> str:
    word = NUMBER_WORDS[count]
    return word[0].upper() + word[1:] + "."


def check_question_type(question_type: str) -> None:
    """Refuse (InputError) a question type that is not one of :data:`QUESTION_TYPES`."""
    if question_type not in QUESTION_TYPES:
        raise InputError(f"question_type {question_type!r} is not one of: {', '.join(QUESTION_TYPES)}.")


# Scenes ---------------------------------------------------------------------------------------------------------


def _stream(seed: int, split: str, index: int, purpose: str) -> Random:
    """An independent random stream for one purpose of one scene, the same in every Python and on every machine.

    The seed is a SHA-256 of the text ``"synthetic-shapes:SEED:SPLIT:INDEX:PURPOSE"``, so train and held-out
    scenes, and different indices, draw from unrelated streams.
    """
    digest = hashlib.sha256(f"{DATASET_NAME}:{seed}:{split}:{index}:{purpose}".encode()).digest()
    return Random(int.from_bytes(digest[:8], "big"))


def draw_shape_count(seed: int, index: int, max_shapes: int, split: str = "train") -> int:
    """How many shapes scene ``index`` of a multi-shape task holds: uniform in 1..max_shapes, from its own stream."""
    _check_scene_args(seed, index, DEFAULT_IMAGE_SIZE, max_shapes, split)
    return _stream(seed, split, index, "count").randint(1, max_shapes)


def generate_scene(
    seed: int,
    index: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    max_shapes: int = 3,
    *,
    split: str = "train",
    num_shapes: int | None = None,
) -> tuple[Any, Scene]:
    """Scene ``index`` of ``seed`` and ``split``: an RGB ``PIL.Image`` and its ground truth.

    ``num_shapes`` (1 to 9) fixes the number of shapes; by default it is drawn from 1..``max_shapes``
    (:func:`draw_shape_count`). Everything else comes from a random stream seeded by
    (seed, split, index), so the scene is a function of (seed, split, index, image_size,
    number of shapes) alone.

    Train and held-out images never coincide: besides their unrelated streams, the lighter
    background grey is even in train scenes and odd in held-out ones, and the top-left
    pixel always shows it (shapes keep off the image's edge). So no held-out image can equal
    a train image, whatever the seeds, sizes and counts; otherwise the two splits draw from
    the same distribution (the parity of a grey level says nothing about the answers).
    """
    from PIL import Image, ImageDraw

    _check_scene_args(seed, index, image_size, max_shapes, split)
    if num_shapes is None:
        num_shapes = draw_shape_count(seed, index, max_shapes, split)
    if not 1 <= num_shapes <= len(POSITIONS):
        raise InputError(f"num_shapes is {num_shapes}; a scene holds 1 to {len(POSITIONS)} shapes (one per cell).")
    rng = _stream(seed, split, index, "scene")
    parity = SPLITS.index(split)  # of the lighter background grey: even in train scenes, odd in held-out ones

    style = rng.choice(BACKGROUNDS)
    light = rng.choice([tone for tone in range(BACKGROUND_TONES[0], BACKGROUND_TONES[1] + 1) if tone % 2 == parity])
    dark = light if style == "plain" else light - rng.randint(*BACKGROUND_CONTRAST)
    period = rng.randint(*TEXTURE_PERIOD)
    image = Image.fromarray(_background(style, light, dark, period, image_size))

    shapes = [_place(rng, cell, image_size) for cell in sorted(rng.sample(range(len(POSITIONS)), num_shapes))]
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        _draw(draw, shape)
    scene = Scene(seed, split, index, image_size, style, (light, dark), tuple(shapes))
    return image, scene


def _check_scene_args(seed: int, index: int, image_size: int, max_shapes: int, split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"split {split!r} is not one of: {', '.join(SPLITS)}.")
    if seed < 0 or index < 0:
        raise InputError(f"seed and index must be at least 0; got seed={seed}, index={index}.")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise InputError(f"image_size is {image_size}; it must be {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels.")
    if not 1 <= max_shapes <= len(POSITIONS):
        raise InputError(f"max_shapes is {max_shapes}; it must be 1 to {len(POSITIONS)} (one shape per grid cell).")


def _background(style: str, light: int, dark: int, period: int, size: int) -> np.ndarray:
    """(size, size, 3) uint8 neutral grey, by integer arithmetic only (exact on every machine)."""
    y, x = np.mgrid[0:size, 0:size]
    if style == "plain":
        grey = np.full((size, size), light)
    elif style == "gradient":  # light at the top, dark at the bottom
        grey = light - (light - dark) * y // max(size - 1, 1)
    elif style == "stripes":  # diagonal
        grey = np.where((x + y) // period % 2 == 0, light, dark)
    else:  # checker
        grey = np.where((x // period + y // period) % 2 == 0, light, dark)
    return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)


def _cell_bounds(cell: int, image_size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a grid cell, x1 and y1 exclusive; the cells tile the image exactly."""
    row, column = divmod(cell, 3)
    return (
        column * image_size // 3,
        row * image_size // 3,
        (column + 1) * image_size // 3,
        (row + 1) * image_size // 3,
    )


def _place(rng: Random, cell: int, image_size: int) -> ShapeSpec:
    """A random shape, colour, radius and centre, with the whole shape inside ``cell``."""
    x0, y0, x1, y1 = _cell_bounds(cell, image_size)
    width = min(x1 - x0, y1 - y0)
    largest = (width - 2 * CELL_MARGIN - 1) // 2  # leaves at least one centre pixel to choose from
    high = max(1, min(round(MAX_RADIUS * width), largest))
    low = max(1, min(round(MIN_RADIUS * width), high))
    shape = rng.choice(SHAPES)
    colour = rng.choice(sorted(PALETTE))
    radius = rng.randint(low, high)
    cx = rng.randint(x0 + radius + CELL_MARGIN, x1 - radius - CELL_MARGIN - 1)
    cy = rng.randint(y0 + radius + CELL_MARGIN, y1 - radius - CELL_MARGIN - 1)
    return ShapeSpec(shape, colour, POSITIONS[cell], (cx, cy), radius)


def _draw(draw: Any, spec: ShapeSpec) -> None:
    """Draw one shape without anti-aliasing: every pixel it covers has exactly its palette colour."""
    (cx, cy), r, fill = spec.center, spec.radius, spec.rgb
    if spec.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif spec.shape == "square":
        half = max(1, round(SQUARE_HALF_SIDE * r))
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    elif spec.shape == "cross":
        half = max(1, round(CROSS_HALF_WIDTH * r))
        draw.rectangle([cx - r, cy - half, cx + r, cy + half], fill=fill)
        draw.rectangle([cx - half, cy - r, cx + half, cy + r], fill=fill)
    else:
        corners = TRIANGLE if spec.shape == "triangle" else STAR
        draw.polygon([(cx + round(r * ux), cy + round(r * uy)) for ux, uy in corners], fill=fill)


def image_file_name(scene: Scene) -> str:
    """``train-seed0-000017-n1-224px.png``: everything the image depends on, so a name never holds two images."""
    return f"{scene.split}-seed{scene.seed}-{scene.index:06d}-n{scene.count}-{scene.image_size}px.png"


def wrong_answer(scene: Scene, question_type: str, max_shapes: int = 3) -> str:
    """A wrong answer of the same type, drawn from the scene's own stream: another colour, shape, cell or count.

    Counts are drawn from 1..max(max_shapes, 2) without the right one.
    """
    right = scene.answer(question_type)
    rng = _stream(scene.seed, scene.split, scene.index, f"rejected:{question_type}")
    return rng.choice([choice for choice in answer_choices(question_type, max_shapes) if choice != right])


def answer_choices(question_type: str, max_shapes: int = 3) -> list[str]:
    """Every answer a question of this type can have, in the answers' wording: the options of a multiple-choice
    reading (counts 1..max(max_shapes, 2))."""
    check_question_type(question_type)
    if question_type == "count":
        return [_count_answer(n) for n in range(1, max(max_shapes, 2) + 1)]
    vocabulary = {"colour": sorted(PALETTE), "shape": SHAPES, "position": POSITIONS}[question_type]
    return [_answer(question_type, value) for value in vocabulary]
