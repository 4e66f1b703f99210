"""Synthetic shapes: deterministic images whose pixels match their ground truth, turned into valid examples.

The pixels are pinned, not the PNG bytes: Pillow writes the files, and its encoder (and the zlib it
bundles) may deflate the same pixels to other, equally valid bytes from one release to the next.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from mmllm_sdk.data.formats import DataReport, as_example
from mmllm_sdk.default_plugins.datasets import shapes
from mmllm_sdk.default_plugins.datasets.files import read_examples
from mmllm_sdk.default_plugins.datasets.shapes import (
    NUMBER_WORDS,
    PALETTE,
    POSITIONS,
    QUESTION_TYPES,
    QUESTIONS,
    SHAPES,
    Scene,
    ShapeSpec,
    generate_scene,
    wrong_answer,
)
from mmllm_sdk.default_plugins.datasets.synthetic import (
    build_synthetic_dataset,
    generate_examples,
    write_png,
)
from mmllm_sdk.default_plugins.modalities import IMAGE
from mmllm_sdk.errors import InputError

SCENE_0 = Scene(  # generate_scene(0, 0): pinned, as it depends only on hashlib and Python's random
    seed=0,
    split="train",
    index=0,
    image_size=224,
    background="plain",
    background_tones=(236, 236),
    shapes=(
        ShapeSpec(shape="triangle", colour="green", position="top right", center=(197, 51), radius=18),
        ShapeSpec(shape="square", colour="orange", position="bottom left", center=(22, 190), radius=19),
    ),
)
PIXELS_0 = "267db4752df6fcb292f43b46d09a94ba94ba192f5c1efc19b2784d1d032c19b1"  # sha256 of its RGB array


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixels(image) -> np.ndarray:
    return np.asarray(image)


def file_pixels(path) -> np.ndarray:
    """The pixels a PNG file decodes to (RGB, height x width x 3)."""
    with Image.open(path) as decoded:
        assert decoded.mode == "RGB"
        return pixels(decoded)


def pixel_hashes(items) -> dict[str, str]:
    """Each example's image file and the sha256 of the pixels it decodes to."""
    return {item.image_path: sha256(file_pixels(item.image_path).tobytes()) for item in items}


def write_jsonl(path, examples):
    path.write_text("".join(json.dumps(example) + "\n" for example in examples), encoding="utf-8")
    return path


# determinism ---------------------------------------------------------------------------------------------------


def test_the_same_seed_writes_png_files_of_identical_pixels(tmp_path):
    params = {"task": "qa", "num_examples": 12, "seed": 3, "max_shapes": 4}
    first = generate_examples({**params, "out_dir": str(tmp_path / "a")})
    second = generate_examples({**params, "out_dir": str(tmp_path / "b")})
    assert list(pixel_hashes(first).values()) == list(pixel_hashes(second).values())
    assert [item.example["messages"][1:] for item in first] == [item.example["messages"][1:] for item in second]


def test_a_different_seed_gives_different_images(tmp_path):
    one = generate_examples({"task": "captions", "num_examples": 10, "seed": 0, "out_dir": str(tmp_path)})
    two = generate_examples({"task": "captions", "num_examples": 10, "seed": 1, "out_dir": str(tmp_path)})
    assert not set(pixel_hashes(one).values()) & set(pixel_hashes(two).values())
    assert not set(pixel_hashes(one)) & set(pixel_hashes(two))  # the seed is in the file name


def test_the_ground_truth_of_a_seed_is_pinned():
    image, scene = generate_scene(0, 0)
    assert scene == SCENE_0
    assert sha256(pixels(image).tobytes()) == PIXELS_0, "Pillow draws these shapes differently than it did"


def test_the_png_file_of_a_seed_decodes_to_the_pinned_pixels(tmp_path):
    (item,) = generate_examples({"task": "captions", "num_examples": 1, "out_dir": str(tmp_path)})
    assert item.scene == SCENE_0
    assert sha256(file_pixels(item.image_path).tobytes()) == PIXELS_0


def test_regenerating_into_the_same_folder_overwrites_identically(tmp_path):
    params = {"task": "captions", "num_examples": 4, "out_dir": str(tmp_path)}
    before = pixel_hashes(generate_examples(params))
    victim = next(iter(before))
    open(victim, "wb").write(b"not the image")
    after = pixel_hashes(generate_examples(params))
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.rsplit("/", 1)[1] for p in before)  # no temp files


def test_the_png_file_decodes_to_the_drawn_pixels(tmp_path):
    image, _ = generate_scene(5, 9, image_size=97, max_shapes=9)
    path = tmp_path / "scene.png"
    write_png(image, path)
    assert np.array_equal(file_pixels(path), pixels(image)) and file_pixels(path).shape == (97, 97, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["scene.png"]  # no temporary file left behind


# ground truth against pixels ------------------------------------------------------------------------------------


def cell_of(x: int, y: int, size: int) -> str:
    """The grid cell holding pixel (x, y): the cells' edges are at size // 3 and 2 * size // 3."""
    row, column = (max(k for k in range(3) if k * size // 3 <= v) for v in (y, x))
    return POSITIONS[3 * row + column]


@pytest.mark.parametrize(("image_size", "split"), [(224, "train"), (224, "heldout"), (64, "train"), (33, "heldout")])
def test_every_coloured_pixel_belongs_to_a_shape_of_that_colour_in_its_cell(image_size, split):
    for index in range(40):
        image, scene = generate_scene(11, index, image_size, max_shapes=9, split=split)
        array = pixels(image).astype(int)
        assert array.shape == (image_size, image_size, 3)
        grey = (array[:, :, 0] == array[:, :, 1]) & (array[:, :, 1] == array[:, :, 2])
        assert 1 <= scene.count == len({shape.position for shape in scene.shapes}) <= 9
        for shape in scene.shapes:
            cx, cy = shape.center
            assert tuple(array[cy, cx]) == PALETTE[shape.colour], (scene, shape)
            assert cell_of(cx, cy, image_size) == shape.position
        owners = {shape.position: shape for shape in scene.shapes}
        for cell, position in enumerate(POSITIONS):
            x0, y0, x1, y1 = shapes._cell_bounds(cell, image_size)
            ys, xs = np.nonzero(~grey[y0:y1, x0:x1])
            owner = owners.get(position)
            if owner is None:
                assert len(ys) == 0, f"coloured pixels in the empty {position} cell of {scene}"
                continue
            assert (array[y0 + ys, x0 + xs] == PALETTE[owner.colour]).all(), (scene, owner)
            assert (abs(x0 + xs - owner.center[0]) <= owner.radius).all(), (scene, owner)
            assert (abs(y0 + ys - owner.center[1]) <= owner.radius).all(), (scene, owner)
        assert set(np.unique(array[grey][:, 0])) <= set(range(min(scene.background_tones), 256))


def test_the_palette_is_saturated_and_the_background_is_grey():
    for name, rgb in PALETTE.items():
        assert max(rgb) - min(rgb) >= 100, f"{name} is too close to grey"
    assert len(set(PALETTE.values())) == len(PALETTE)


def test_a_shape_never_reaches_the_edge_of_its_cell():
    for index in range(200):
        _, scene = generate_scene(2, index, 224, max_shapes=9)
        for shape in scene.shapes:
            cell = POSITIONS.index(shape.position)
            x0, y0, x1, y1 = shapes._cell_bounds(cell, 224)
            cx, cy = shape.center
            assert x0 < cx - shape.radius and cx + shape.radius < x1 - 1
            assert y0 < cy - shape.radius and cy + shape.radius < y1 - 1


# splits --------------------------------------------------------------------------------------------------------


def test_heldout_and_train_never_share_an_image(tmp_path):
    hashes = {}
    for split in ("train", "heldout"):
        found = set()
        for seed in (0, 1):
            for task in ("captions", "qa"):
                params = {"task": task, "num_examples": 60, "seed": seed, "split": split, "image_size": 32}
                found |= set(pixel_hashes(generate_examples({**params, "out_dir": str(tmp_path / split)})).values())
        hashes[split] = found
    assert not hashes["train"] & hashes["heldout"]


def test_the_split_sets_the_parity_of_the_top_left_background_pixel():
    for index in range(50):
        for parity, split in enumerate(("train", "heldout")):
            image, scene = generate_scene(4, index, 48, max_shapes=9, split=split)
            assert scene.split == split
            assert tuple(pixels(image)[0, 0]) == (max(scene.background_tones),) * 3
            assert max(scene.background_tones) % 2 == parity


def test_an_unknown_split_is_refused():
    with pytest.raises(InputError, match="split 'eval' is not one of: train, heldout"):
        generate_scene(0, 0, split="eval")


# tasks and the SDK's example shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "kind"), [("captions", "conversation"), ("qa", "conversation"), ("preference", "preference")]
)
def test_every_task_reads_back_with_read_examples(tmp_path, task, kind):
    report = build_synthetic_dataset({"task": task, "num_examples": 9, "out_dir": str(tmp_path / "images")})
    assert isinstance(report, DataReport)
    assert report.kind == kind and report.skipped == [] and report.files == [str(tmp_path / "images")]
    assert report.media_counts() == {"image": 9}
    assert [e["source"] for e in report.examples] == [f"synthetic-shapes:train:{i}" for i in range(9)]
    data = write_jsonl(tmp_path / "data.jsonl", report.examples)
    read = read_examples(data, modalities={"image": IMAGE})
    assert read.kind == kind and read.skipped == []
    typed = [replace(as_example(e, {"image": IMAGE}), source="") for e in report.examples]
    assert [replace(e, source="") for e in read.examples] == typed  # the file holds exactly what was generated


def test_image_paths_are_absolute_even_from_a_relative_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = build_synthetic_dataset({"task": "qa", "num_examples": 2, "out_dir": "images"})
    path = report.examples[0]["messages"][0]["content"][0]["path"]
    assert path.startswith(str(tmp_path / "images") + "/") and path.endswith("-n1-224px.png")
    assert report.files == [str(tmp_path / "images")]


def test_a_caption_lists_every_shape_in_reading_order(tmp_path):
    assert SCENE_0.caption() == "A green triangle in the top right and an orange square in the bottom left."
    items = generate_examples({"task": "captions", "num_examples": 30, "max_shapes": 5, "out_dir": str(tmp_path)})
    for item in items:
        user, answer = item.example["messages"]
        assert user == {"role": "user", "content": [{"type": "image", "path": item.image_path}]}
        assert answer == {"role": "assistant", "content": [{"type": "text", "text": item.answer}]}
        assert item.answer == item.scene.caption() and item.question_type is None
        for shape in item.scene.shapes:
            assert f"{shape.colour} {shape.shape} in the {shape.position}" in item.answer
        assert item.answer.count(" in the ") == item.scene.count
    assert {item.scene.count for item in items} == {1, 2, 3, 4, 5}


def test_qa_asks_each_question_type_in_turn_with_its_fixed_answer(tmp_path):
    items = generate_examples({"task": "qa", "num_examples": 40, "out_dir": str(tmp_path)})
    assert [item.question_type for item in items[:8]] == list(QUESTION_TYPES) * 2
    for item in items:
        user, answer = item.example["messages"]
        assert user["content"] == [{"type": "image", "path": item.image_path}, {"type": "text", "text": item.question}]
        assert answer["content"] == [{"type": "text", "text": item.answer}]
        assert item.question == QUESTIONS[item.question_type]
        if item.question_type == "count":
            continue
        assert item.scene.count == 1
        (shape,) = item.scene.shapes
        expected = {
            "colour": shape.colour.capitalize() + ".",
            "shape": f"A {shape.shape}.",
            "position": shape.position.capitalize() + ".",
        }[item.question_type]
        assert item.answer == expected


def test_count_questions_are_about_scenes_of_one_to_max_shapes(tmp_path):
    params = {"task": "qa", "num_examples": 60, "max_shapes": 4, "question_types": ["count"], "out_dir": str(tmp_path)}
    items = generate_examples(params)
    assert {item.question_type for item in items} == {"count"}
    for item in items:
        assert item.answer == NUMBER_WORDS[item.scene.count].capitalize() + "."
        assert item.image_path.endswith(f"-n{item.scene.count}-224px.png")
    assert {item.answer for item in items} == {"One.", "Two.", "Three.", "Four."}


def test_question_types_filter_and_order(tmp_path):
    params = {"task": "qa", "num_examples": 6, "question_types": ["position", "colour"], "out_dir": str(tmp_path)}
    assert [item.question_type for item in generate_examples(params)] == ["position", "colour"] * 3


def test_a_preference_pair_rejects_a_wrong_answer_of_the_same_type(tmp_path):
    items = generate_examples({"task": "preference", "num_examples": 80, "max_shapes": 3, "out_dir": str(tmp_path)})
    vocabularies = {
        "colour": {c.capitalize() + "." for c in PALETTE},
        "shape": {f"A {s}." for s in SHAPES},
        "position": {p.capitalize() + "." for p in POSITIONS},
        "count": {"One.", "Two.", "Three."},
    }
    for item in items:
        example = item.example
        assert set(example) == {"prompt", "chosen", "rejected", "source"}
        assert example["prompt"][0]["content"][1] == {"type": "text", "text": QUESTIONS[item.question_type]}
        assert example["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": item.answer}]}]
        assert example["rejected"] == [{"role": "assistant", "content": [{"type": "text", "text": item.rejected}]}]
        assert item.rejected != item.answer == item.scene.answer(item.question_type)
        assert {item.rejected, item.answer} <= vocabularies[item.question_type]
        assert wrong_answer(item.scene, item.question_type, 3) == item.rejected  # deterministic
    rejected_colours = {item.rejected for item in items if item.question_type == "colour"}
    assert len(rejected_colours) > 2  # not always the same wrong answer


def test_a_wrong_count_exists_even_with_one_shape_at_most():
    _, scene = generate_scene(0, 3, max_shapes=1)
    assert scene.answer("count") == "One." and wrong_answer(scene, "count", max_shapes=1) == "Two."


def test_a_single_shape_question_about_several_shapes_is_refused():
    _, scene = generate_scene(0, 0, num_shapes=3)
    with pytest.raises(InputError, match="needs a one-shape scene"):
        scene.answer("colour")
    assert scene.answer("count") == "Three."
