"""Data files: each record format is read into one shape, and each malformed record is named by file:line."""

from __future__ import annotations

import json
import re

import pytest

from mmllm_sdk.data.examples import Conversation, MediaPart, Message, OutputPart, PreferencePair, TextPart
from mmllm_sdk.data.formats import DataReport, as_example, caption_example, caption_report
from mmllm_sdk.default_plugins.datasets.files import read_examples
from mmllm_sdk.default_plugins.modalities import AUDIO, IMAGE, VIDEO
from mmllm_sdk.default_plugins.recipes.data import estimate_length
from mmllm_sdk.errors import DataError, InputError

PLACEHOLDERS = {"image": "<image>", "audio": "<audio>", "video": "<video>"}
GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def write_jsonl(path, *records):
    """One line per record: a dict is dumped as JSON, a string is written as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def text(value):
    return {"type": "text", "text": value}


def user(*parts):
    return {"role": "user", "content": list(parts)}


def assistant(value):
    return {"role": "assistant", "content": [text(value)]}


# what the records are read into: typed messages
def said(role, *parts):
    return Message(role, tuple(TextPart(p) if isinstance(p, str) else p for p in parts))


def image(path):
    return MediaPart("image", path)


@pytest.fixture
def media(tmp_path, image_file, wav_file):
    """gradient.png, tone.wav, notes.txt and a frames/ folder, all in tmp_path (where the data files go)."""
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "0001.png").write_bytes(image_file.read_bytes())
    return {"image": str(image_file), "audio": str(wav_file), "folder": str(tmp_path / "frames")}


# the formats -----------------------------------------------------------------------------------


def test_messages_records_keep_turns_and_parts_with_absolute_paths(tmp_path, media):
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "image", "path": "gradient.png"},
                    {"type": "image", "image": "gradient.png"},
                    {"type": "text", "text": "Same picture twice?"},
                ],
            },
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": [{"type": "audio", "path": "tone.wav"}, {"type": "text", "text": "And this?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A tone."}]},
        ]
    }
    report = read_examples(write_jsonl(tmp_path / "train.jsonl", record))
    assert report.kind == "conversation" and report.formats == {"messages": 1}
    (example,) = report.examples
    assert isinstance(example, Conversation) and example.source == f"{tmp_path / 'train.jsonl'}:1"
    assert example.messages == (
        said("system", "Be brief."),
        said("user", image(media["image"]), image(media["image"]), "Same picture twice?"),
        said("assistant", "Yes."),
        said("user", MediaPart("audio", media["audio"]), "And this?"),
        said("assistant", "A tone."),
    )


def test_image_and_audio_in_one_message(tmp_path, media):
    record = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "path": "gradient.png"}, {"type": "audio", "path": "tone.wav"}],
            },
            {"role": "assistant", "content": "A gradient and a tone."},
        ]
    }
    (example,) = read_examples(write_jsonl(tmp_path / "a.jsonl", record)).examples
    assert [part.modality for part in example.messages[0].parts] == ["image", "audio"]


def test_a_llava_json_list_becomes_messages_with_parts_where_the_placeholders_were(tmp_path, media):
    records = [
        {
            "id": "000000033471",
            "image": "gradient.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colours are there?"},
                {"from": "gpt", "value": "Red and green."},
                {"from": "human", "value": "Which is brighter?"},
                {"from": "gpt", "value": "Green."},
            ],
        },
        {"id": "text-only", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
    ]
    path = tmp_path / "llava_instruct.json"
    path.write_text(json.dumps(records))
    report = read_examples(path)
    assert report.formats == {"llava": 2}
    first, second = report.examples
    assert first.source == f"{path}[0]" and second.source == f"{path}[1]"
    assert first.messages == (
        said("user", image(media["image"]), "What colours are there?"),
        said("assistant", "Red and green."),
        said("user", "Which is brighter?"),
        said("assistant", "Green."),
    )
    assert second.messages == (said("user", "Hi"), said("assistant", "Hello."))


def test_llava_items_of_several_modalities_fill_their_placeholders_in_order(tmp_path, media):
    (tmp_path / "other.png").write_bytes((tmp_path / "gradient.png").read_bytes())
    record = {
        "image": ["gradient.png", "other.png"],
        "audio": "tone.wav",
        "conversations": [
            {"from": "human", "value": "Compare <image> with <image>\nand listen: <audio>"},
            {"from": "gpt", "value": "Done."},
        ],
    }
    (example,) = read_examples(write_jsonl(tmp_path / "a.jsonl", record)).examples
    assert example.messages[0] == said(
        "user",
        "Compare ",
        image(media["image"]),
        " with ",
        image(str(tmp_path / "other.png")),
        "and listen: ",
        MediaPart("audio", media["audio"]),
    )


def test_a_converted_llava_turn_renders_back_to_the_llava_text(tmp_path, media):
    value = "<image>\nWhat is it?"
    record = {
        "image": "gradient.png",
        "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": "A."}],
    }
    (example,) = read_examples(write_jsonl(tmp_path / "a.jsonl", record)).examples
    parts = example.messages[0].parts  # the processor joins parts with newlines, an item as its placeholder
    assert "\n".join(PLACEHOLDERS[p.modality] if isinstance(p, MediaPart) else p.text for p in parts) == value
    assert [p.source for p in parts if isinstance(p, MediaPart)] == [media["image"]]


def test_caption_pairs_become_a_media_only_user_turn_and_the_caption_as_the_answer(tmp_path, media):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        {"image": "gradient.png", "text": "A colour gradient."},
        {"audio": "tone.wav", "text": "A 440 Hz tone.", "id": 7},
    )
    report = read_examples(path, format="captions")
    assert report.formats == {"captions": 2}
    assert [e.messages for e in report.examples] == [
        (said("user", image(media["image"])), said("assistant", "A colour gradient.")),
        (said("user", MediaPart("audio", media["audio"])), said("assistant", "A 440 Hz tone.")),
    ]


def test_preference_pairs_in_each_accepted_shape(tmp_path, media):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {
            "prompt": [user({"type": "image", "path": "gradient.png"}, text("Colours?"))],
            "chosen": {"role": "assistant", "content": "Red and green."},
            "rejected": [{"role": "assistant", "content": "Blue."}],
        },
        {"image": "gradient.png", "prompt": "<image>\nColours?", "chosen": "Red and green.", "rejected": "Blue."},
    )
    report = read_examples(path)
    assert report.kind == "preference" and report.formats == {"preference": 3}
    plain, parts, llava_style = report.examples
    assert isinstance(plain, PreferencePair) and plain.prompt == (said("user", "Capital of France?"),)
    assert plain.chosen == (said("assistant", "Paris."),) and plain.rejected == (said("assistant", "Lyon."),)
    assert parts.prompt == llava_style.prompt == (said("user", image(media["image"]), "Colours?"),)
    assert parts.chosen == (said("assistant", "Red and green."),) and parts.rejected == (said("assistant", "Blue."),)


def test_auto_reads_a_file_that_mixes_conversation_formats(tmp_path, media):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        GOOD,
        {
            "image": "gradient.png",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A."}],
        },
        {"image": "gradient.png", "text": "A gradient."},
    )
    report = read_examples(path)
    assert report.kind == "conversation"
    assert report.formats == {"messages": 1, "llava": 1, "captions": 1}


def test_conversations_and_preference_pairs_cannot_be_mixed_even_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", GOOD, {"prompt": "Q?", "chosen": "A.", "rejected": "B."})
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: .*{re.escape(str(path))}:1 is a conversation"):
        read_examples(path, skip_invalid=True)


def test_an_explicit_format_rejects_records_of_another_format(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", GOOD)
    with pytest.raises(DataError, match=r":1: The record is a messages record, but format='llava' was asked for"):
        read_examples(path, format="llava")
    other = write_jsonl(tmp_path / "b.jsonl", {"dialog": []})
    with pytest.raises(
        DataError, match=r":1: The record has keys \['dialog'\]; a captions record looks like \{\"image\""
    ):
        read_examples(other, format="captions")
    with pytest.raises(InputError, match=r"format='sharegpt' is not a data format; use one of: auto, messages"):
        read_examples(path, format="sharegpt")


def test_relative_media_paths_are_read_from_the_data_files_folder_not_the_working_directory(
    tmp_path, media, monkeypatch
):
    path = write_jsonl(tmp_path / "train.jsonl", {"image": "gradient.png", "text": "A gradient."})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (example,) = read_examples(path).examples
    assert example.messages[0].parts[0].source == media["image"]


def test_base_dir_is_where_relative_media_paths_start(tmp_path, media):
    path = write_jsonl(tmp_path / "annotations" / "train.jsonl", {"image": "gradient.png", "text": "A gradient."})
    with pytest.raises(DataError, match=r"image file 'gradient.png' does not exist .*Pass base_dir="):
        read_examples(path)
    (example,) = read_examples(path, base_dir=tmp_path).examples
    assert example.messages[0].parts[0].source == media["image"]
    with pytest.raises(InputError, match=r"base_dir='.*nowhere' is not a folder"):
        read_examples(path, base_dir=tmp_path / "nowhere")


def test_absolute_media_paths_are_kept(tmp_path, media):
    path = write_jsonl(tmp_path / "sub" / "train.jsonl", {"image": media["image"], "text": "A gradient."})
    (example,) = read_examples(path).examples
    assert example.messages[0].parts[0].source == media["image"]


def test_a_folder_is_media_only_for_modalities_that_read_folders(tmp_path, media):
    video = {"messages": [user({"type": "video", "path": "frames"}), assistant("Frames.")]}
    (example,) = read_examples(write_jsonl(tmp_path / "v.jsonl", video)).examples
    assert example.messages[0].parts[0] == MediaPart("video", media["folder"])
    image = {"messages": [user({"type": "image", "path": "frames"}), assistant("Frames.")]}
    with pytest.raises(DataError, match=r"frames' is a folder; image inputs are files \(.bmp, .gif"):
        read_examples(write_jsonl(tmp_path / "i.jsonl", image))


def test_modalities_limits_what_a_record_may_use(tmp_path, media):
    record = {"messages": [user({"type": "audio", "path": "tone.wav"}), assistant("A tone.")]}
    path = write_jsonl(tmp_path / "a.jsonl", record)
    assert read_examples(path, modalities={"image": IMAGE, "audio": AUDIO, "video": VIDEO}).examples
    with pytest.raises(DataError, match=r"has type 'audio'; a content part's type is one of: text, image \("):
        read_examples(path, modalities={"image": IMAGE})


def test_several_files_are_read_in_order_with_their_own_sources(tmp_path, media):
    first = write_jsonl(tmp_path / "a.jsonl", GOOD)
    second = tmp_path / "b.json"
    second.write_text(json.dumps([GOOD, GOOD]))
    report = read_examples([first, str(second)])
    assert [e.source for e in report.examples] == [f"{first}:1", f"{second}[0]", f"{second}[1]"]
    assert report.summary() == f"read 3 conversation examples from {first}, {second}"


def test_blank_lines_are_not_records_but_still_count_for_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", "", GOOD, "   ", GOOD)
    report = read_examples(path)
    assert [e.source for e in report.examples] == [f"{path}:2", f"{path}:4"]


def test_an_assistant_part_of_a_modality_is_an_output_with_its_caption_and_file(tmp_path, media):
    answer = [text("Here."), {"type": "image", "caption": "a gradient"}, {"type": "image", "path": "gradient.png"}]
    record = {"messages": [user(text("Draw it.")), {"role": "assistant", "content": answer}]}
    (example,) = read_examples(write_jsonl(tmp_path / "a.jsonl", record)).examples
    outputs = (OutputPart("image", "a gradient"), OutputPart("image", None, media["image"]))
    assert example.messages[1] == said("assistant", "Here.", *outputs)
    only_a_caption = {"messages": [user({"type": "image", "caption": "a gradient"}), assistant("A.")]}
    with pytest.raises(DataError, match=r"content\[0\] has no path; give the image part one"):
        read_examples(write_jsonl(tmp_path / "b.jsonl", only_a_caption))  # a user turn's item is an input


def test_a_data_sources_example_dicts_go_through_the_same_parser(tmp_path, media):
    report = caption_report([caption_example("image", media["image"], "A gradient.", "src:0")], tmp_path)
    assert report.media_counts() == {"image": 1} and estimate_length(report.examples[0], {"image": 4}) == 4 + 3
    example = as_example(report.examples[0])
    assert example == Conversation((said("user", image(media["image"])), said("assistant", "A gradient.")), "src:0")
    assert as_example(example) is example
    with pytest.raises(DataError, match=r"^src:1: messages\[0\]\.content\[0\] has type 'image'; .*: text, audio "):
        as_example(caption_example("image", media["image"], "A.", "src:1"), {"audio": AUDIO})
    with pytest.raises(DataError, match=r"^src:2: .*the image file .*gone.png' does not exist"):
        as_example(caption_example("image", tmp_path / "gone.png", "A.", "src:2"), {"image": IMAGE})


# the report --------------------------------------------------------------------------------------


def test_the_summary_and_json_report_say_what_was_read_and_skipped(tmp_path, media):
    path = write_jsonl(
        tmp_path / "a.jsonl",
        GOOD,
        {"image": "gradient.png", "text": "A gradient."},
        {"text": "no media"},
    )
    report = read_examples(path, skip_invalid=True)
    assert isinstance(report, DataReport)
    expected = f"read 2 conversation examples from {path}; skipped 1 malformed record (skip_invalid)"
    assert report.summary() == expected
    written = tmp_path / "run" / "data.json"
    written.parent.mkdir()
    saved = json.loads(report.to_json(written))
    assert saved == json.loads(written.read_text())
    assert saved["summary"] == expected and saved["kind"] == "conversation" and saved["files"] == [str(path)]
    assert saved["examples"] == 2 and saved["formats"] == {"messages": 1, "captions": 1}
    assert saved["media"] == {"image": 1}
    assert saved["skipped"] == [{"source": f"{path}:3", "reason": report.skipped[0][1]}]
    assert "exactly one modality key" in saved["skipped"][0]["reason"]


def test_a_report_without_skipped_records_says_so_briefly(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", GOOD)
    assert read_examples(path).summary() == f"read 1 conversation example from {path}"


# length estimates --------------------------------------------------------------------------------


def test_estimate_length_counts_words_and_media_tokens(tmp_path, media):
    record = {"messages": [user({"type": "image", "path": "gradient.png"}, text("one two three")), assistant("four")]}
    (example,) = read_examples(write_jsonl(tmp_path / "a.jsonl", record)).examples
    assert estimate_length(example, {"image": 16}) == 6 + 16  # ceil(4 words x 1.3) + one image
    with pytest.raises(InputError, match=r"no token count for 'image' items"):
        estimate_length(example, {"audio": 8})


def test_estimate_length_of_a_preference_pair_counts_the_prompt_and_the_longer_answer(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", {"prompt": "a b c d e f g h i j", "chosen": "yes", "rejected": "no no"})
    (example,) = read_examples(path).examples
    assert estimate_length(example, {}) == 13 + 3  # ceil(10 x 1.3) + ceil(2 x 1.3)


# with a model ------------------------------------------------------------------------------------


def test_the_processor_takes_the_examples_of_every_conversation_format(image_model, tmp_path, media):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        {"messages": [user({"type": "image", "path": "gradient.png"}, text("What?")), assistant("A gradient.")]},
        {
            "image": "gradient.png",
            "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}],
        },
        {"image": "gradient.png", "text": "A gradient."},
    )
    report = read_examples(path, modalities={"image": IMAGE})
    batch = image_model.processor(report.examples)
    assert batch["input_ids"].shape[0] == 3 and (batch["labels"] != -100).any(dim=1).all()
