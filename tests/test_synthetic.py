"""Synthetic shapes: deterministic images whose pixels match their ground truth, turned into valid examples."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from mmllm_sdk.data import synthetic
from mmllm_sdk.data.formats import DataReport, read_examples
from mmllm_sdk.data.synthetic import (
    LEADING_FILLER,
    NUMBER_WORDS,
    PALETTE,
    POSITIONS,
    QUESTION_TYPES,
    QUESTIONS,
    SHAPES,
    Scene,
    ShapeSpec,
    SyntheticParams,
    build_synthetic_dataset,
    generate_examples,
    generate_scene,
    png_bytes,
    score_answer,
    wrong_answer,
)
from mmllm_sdk.default_plugins.modalities import IMAGE
from mmllm_sdk.errors import InputError, SpecError

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
PNG_0 = "52f9c0bf30eee937294996de023e504ad3bb49ef5af4463375ce3ec8910e63fa"  # sha256 of its PNG file


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hashes(items) -> dict[str, str]:
    return {item.image_path: sha256(open(item.image_path, "rb").read()) for item in items}


def pixels(image) -> np.ndarray:
    return np.asarray(image)


def write_jsonl(path, examples):
    path.write_text("".join(json.dumps(example) + "\n" for example in examples), encoding="utf-8")
    return path


# determinism ---------------------------------------------------------------------------------------------------


def test_the_same_seed_writes_byte_identical_png_files(tmp_path):
    params = {"task": "qa", "num_examples": 12, "seed": 3, "max_shapes": 4}
    first = generate_examples({**params, "out_dir": str(tmp_path / "a")})
    second = generate_examples({**params, "out_dir": str(tmp_path / "b")})
    assert list(file_hashes(first).values()) == list(file_hashes(second).values())
    assert [item.example["messages"][1:] for item in first] == [item.example["messages"][1:] for item in second]


def test_a_different_seed_gives_different_images(tmp_path):
    one = generate_examples({"task": "captions", "num_examples": 10, "seed": 0, "out_dir": str(tmp_path)})
    two = generate_examples({"task": "captions", "num_examples": 10, "seed": 1, "out_dir": str(tmp_path)})
    assert not set(file_hashes(one).values()) & set(file_hashes(two).values())
    assert not set(file_hashes(one)) & set(file_hashes(two))  # the seed is in the file name


def test_the_ground_truth_of_a_seed_is_pinned():
    image, scene = generate_scene(0, 0)
    assert scene == SCENE_0
    assert sha256(pixels(image).tobytes()) == PIXELS_0, "Pillow draws these shapes differently than it did"


@pytest.mark.skipif("ng" in zlib.ZLIB_RUNTIME_VERSION, reason="zlib-ng deflates to other (equally valid) bytes")
def test_the_png_file_of_a_seed_is_pinned():
    assert sha256(png_bytes(generate_scene(0, 0)[0])) == PNG_0


def test_regenerating_into_the_same_folder_overwrites_identically(tmp_path):
    params = {"task": "captions", "num_examples": 4, "out_dir": str(tmp_path)}
    before = file_hashes(generate_examples(params))
    victim = next(iter(before))
    open(victim, "wb").write(b"not the image")
    after = file_hashes(generate_examples(params))
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.rsplit("/", 1)[1] for p in before)  # no temp files


def test_the_png_file_decodes_to_the_drawn_pixels(tmp_path):
    image, _ = generate_scene(5, 9, image_size=97, max_shapes=9)
    path = tmp_path / "scene.png"
    path.write_bytes(png_bytes(image))
    with Image.open(path) as decoded:
        assert decoded.mode == "RGB" and decoded.size == (97, 97)
        assert np.array_equal(np.asarray(decoded), pixels(image))


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
            x0, y0, x1, y1 = synthetic._cell_bounds(cell, image_size)
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
            x0, y0, x1, y1 = synthetic._cell_bounds(cell, 224)
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
                found |= set(file_hashes(generate_examples({**params, "out_dir": str(tmp_path / split)})).values())
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
    assert read.kind == kind
    strip = [{k: v for k, v in e.items() if k != "source"} for e in report.examples]
    assert [{k: v for k, v in e.items() if k != "source"} for e in read.examples] == strip


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


# scoring -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question_type", "generated", "expected", "right"),
    [
        ("colour", "Red.", "Red.", True),
        ("colour", "red", "Red.", True),
        ("colour", "  It is red.", "Red.", True),
        ("colour", "It's red!", "Red.", True),
        ("colour", "The shape is red.", "Red.", True),
        ("colour", "The colour is RED", "Red.", True),
        ("colour", "Red circle.", "Red.", True),
        ("colour", "Red. Or maybe blue.", "Red.", True),
        ("colour", "Blue. It is red.", "Red.", False),
        ("colour", "Dark red.", "Red.", False),
        ("colour", "I think it is red.", "Red.", False),
        ("colour", "Reddish.", "Red.", False),
        ("colour", "", "Red.", False),
        ("shape", "A circle.", "A circle.", True),
        ("shape", "circle", "A circle.", True),
        ("shape", "It is a circle.", "A circle.", True),
        ("shape", "An oval.", "A circle.", False),
        ("position", "Top left.", "Top left.", True),
        ("position", "In the top left corner.", "Top left.", True),
        ("position", "top-left", "Top left.", True),
        ("position", "Top.", "Top left.", False),
        ("position", "Left top.", "Top left.", False),
        ("position", "Centre.", "Center.", True),
        ("position", "Middle left.", "Center.", False),
        ("count", "Three.", "Three.", True),
        ("count", "3", "Three.", True),
        ("count", "There are three shapes.", "Three.", True),
        ("count", "Two.", "Three.", False),
    ],
)
def test_score_answer(question_type, generated, expected, right):
    assert score_answer(question_type, generated, expected) is right


def test_score_answer_refuses_an_unknown_question_type_or_an_empty_expectation():
    with pytest.raises(InputError, match="question_type 'size' is not one of"):
        score_answer("size", "Big.", "Big.")
    with pytest.raises(InputError, match="no content word"):
        score_answer("colour", "Red.", "It is.")


def test_no_answer_word_is_a_leading_filler_word():
    words = {w for value in (*PALETTE, *SHAPES, *POSITIONS, *NUMBER_WORDS) for w in value.split()}
    assert not words & LEADING_FILLER


def test_every_generated_answer_scores_as_right_and_every_rejected_one_as_wrong(tmp_path):
    for item in generate_examples({"task": "preference", "num_examples": 40, "out_dir": str(tmp_path)}):
        assert score_answer(item.question_type, item.answer, item.answer)
        assert not score_answer(item.question_type, item.rejected, item.answer)


# params --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"task": "qa", "num_examples": 2, "out_dir": "x", "colour": "red"}, "colour: is not a known field"),
        ({"task": "vqa", "num_examples": 2, "out_dir": "x"}, "task: Input should be 'captions', 'qa' or 'preference'"),
        ({"task": "qa", "out_dir": "x"}, "num_examples: is required but missing"),
        ({"task": "qa", "num_examples": 0, "out_dir": "x"}, "num_examples: Input should be greater than or equal to 1"),
        ({"task": "qa", "num_examples": 2}, "out_dir: is required but missing"),
        ({"task": "qa", "num_examples": 2, "out_dir": "x", "split": "test"}, "split: Input should be 'train' or"),
        ({"task": "qa", "num_examples": 2, "out_dir": "x", "image_size": 8}, "image_size: Input should be greater"),
        ({"task": "qa", "num_examples": 2, "out_dir": "x", "max_shapes": 10}, "max_shapes: Input should be less"),
        ({"task": "qa", "num_examples": 2, "out_dir": "x", "question_types": ["size"]}, "question_types.0: Input"),
        ({"task": "qa", "num_examples": 2, "out_dir": "x", "question_types": []}, "question_types is empty"),
        ({"task": "qa", "num_examples": 2, "out_dir": "x", "question_types": ["count", "count"]}, "a type twice"),
        ({"task": "captions", "num_examples": 2, "out_dir": "x", "question_types": ["count"]}, "not to 'captions'"),
    ],
)
def test_bad_params_are_refused_with_the_field_named(tmp_path, params, message):
    with pytest.raises(SpecError) as caught:
        build_synthetic_dataset(params)
    assert "synthetic-shapes.params." in str(caught.value) or "synthetic-shapes.params:" in str(caught.value)
    assert message in str(caught.value)
    assert not (tmp_path / "x").exists()


def test_the_factory_carries_its_params_model():
    assert build_synthetic_dataset.Params is SyntheticParams
    params = SyntheticParams(task="qa", num_examples=3, out_dir="x")
    assert (params.seed, params.split, params.image_size, params.max_shapes) == (0, "train", 224, 3)
    assert params.asked() == QUESTION_TYPES


# the plugin ----------------------------------------------------------------------------------------------------


def test_the_builtin_plugin_registers_synthetic_shapes():
    from mmllm_sdk.default_plugins import datasets

    registered = []
    datasets.register_datasets(lambda *args: registered.append(args))
    assert registered == [("synthetic-shapes", build_synthetic_dataset)]


def test_the_plugin_module_imports_neither_torch_nor_transformers_nor_pillow():
    code = (
        "import sys, mmllm_sdk.default_plugins.datasets; "
        "print(sorted(m for m in ('torch', 'transformers', 'PIL') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
