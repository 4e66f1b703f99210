"""``mmllm probe``: linear and MLP classifiers on the frozen encoder's pooled features show what the encoder knows,
next to the aligned model's answers on the same held-out items."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mmllm_sdk.cli import main
from mmllm_sdk.default_plugins.evaluation.probe import HELDOUT_SHARE, probe, probe_data, split
from mmllm_sdk.errors import InputError

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 220)}


def record(path, answer, category="colour", images=1):
    content = [{"type": "image", "path": path}] * images + [{"type": "text", "text": "What colour is it?"}]
    return {
        "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}],
        "category": category,
    }


@pytest.fixture
def colours(tmp_path):
    """45 noisy one-colour images, 15 of each colour, answered with their colour's name."""
    rows = []
    for index in range(45):
        name = list(COLOURS)[index % 3]
        noise = np.random.default_rng(index).normal(0, 25, (32, 32, 3))
        Image.fromarray(np.clip(np.array(COLOURS[name]) + noise, 0, 255).astype(np.uint8)).save(
            tmp_path / f"{index}.png"
        )
        rows.append(record(f"{index}.png", name.capitalize() + "."))
    path = tmp_path / "colours.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_probes_on_the_encoders_features_find_what_separates_the_answers(image_model, colours):
    train, heldout = probe_data(image_model, str(colours))
    (colour,) = probe(image_model, train, heldout)
    assert colour.category == "colour" and colour.classes == ["blue", "green", "red"] and colour.train_items == 36
    assert colour.linear.count == 9 and colour.linear.mean >= 0.8 and colour.mlp.mean >= 0.8


def test_a_split_holds_out_a_seeded_fifth():
    items = list(range(50))
    train, heldout = split(items, seed=3)
    assert len(heldout) == round(50 * HELDOUT_SHARE) and sorted(train + heldout) == items
    assert split(items, seed=3) == (train, heldout) and split(items, seed=4) != (train, heldout)


def test_free_text_answers_are_not_labels(image_model, colours, tmp_path):
    rows = [record(f"{n % 45}.png", f"A sentence number {n}.") for n in range(90)]
    (tmp_path / "free.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    train, heldout = probe_data(image_model, str(tmp_path / "free.jsonl"))
    with pytest.raises(InputError, match=r"take \d+ distinct values; a probe needs labels"):
        probe(image_model, train, heldout)


def test_an_item_with_two_inputs_is_refused_naming_it(image_model, colours, tmp_path):
    (tmp_path / "two.jsonl").write_text(
        "".join(json.dumps(record("0.png", "Red.", images=n)) + "\n" for n in (1, 2, 1, 1, 1))
    )
    train, heldout = probe_data(image_model, str(tmp_path / "two.jsonl"))
    with pytest.raises(InputError, match=r"two\.jsonl:2 has 2 input items; a probe classifies one item"):
        probe(image_model, train + heldout, heldout)


def test_mmllm_probe_prints_the_probes_next_to_the_models_answers(image_spec, colours, tmp_path, capsys):
    import yaml

    (tmp_path / "model.yaml").write_text(yaml.safe_dump(image_spec))
    assert main(["probe", str(tmp_path / "model.yaml"), str(colours), "--max-new-tokens", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "held-out accuracy on 9 items (36 trained the probes):"
    assert lines[1].split() == ["category", "classes", "train", "linear", "probe", "MLP", "probe", "model", "(exact)"]
    assert lines[2].startswith("colour") and lines[2].count("(n=9)") == 3
