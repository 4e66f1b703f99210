"""Data files: each record format is read into one shape, and each malformed record is named by file:line."""

from __future__ import annotations

import json
import re

import pytest

from mmllm_sdk.data.formats import DataReport, estimate_length, read_examples
from mmllm_sdk.data.messages import normalize_conversation
from mmllm_sdk.default_plugins.modalities import AUDIO, IMAGE, VIDEO
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
    assert example["source"] == f"{tmp_path / 'train.jsonl'}:1"
    image = {"type": "image", "path": media["image"]}
    assert example["messages"] == [
        {"role": "system", "content": [text("Be brief.")]},
        user(image, image, text("Same picture twice?")),
        assistant("Yes."),
        user({"type": "audio", "path": media["audio"]}, text("And this?")),
        assistant("A tone."),
    ]


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
    assert [part["type"] for part in example["messages"][0]["content"]] == ["image", "audio"]


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
    assert first["source"] == f"{path}[0]" and second["source"] == f"{path}[1]"
    assert first["messages"] == [
        user({"type": "image", "path": media["image"]}, text("What colours are there?")),
        assistant("Red and green."),
        user(text("Which is brighter?")),
        assistant("Green."),
    ]
    assert second["messages"] == [user(text("Hi")), assistant("Hello.")]


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
    assert example["messages"][0]["content"] == [
        text("Compare "),
        {"type": "image", "path": media["image"]},
        text(" with "),
        {"type": "image", "path": str(tmp_path / "other.png")},
        text("and listen: "),
        {"type": "audio", "path": media["audio"]},
    ]


def test_a_converted_llava_turn_renders_back_to_the_llava_text(tmp_path, media):
    value = "<image>\nWhat is it?"
    record = {
        "image": "gradient.png",
        "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": "A."}],
    }
    (example,) = read_examples(write_jsonl(tmp_path / "a.jsonl", record)).examples
    rendered = normalize_conversation(example["messages"], PLACEHOLDERS)
    assert rendered.messages[0]["content"] == value
    assert [item.source for item in rendered.items] == [media["image"]]


def test_caption_pairs_become_a_media_only_user_turn_and_the_caption_as_the_answer(tmp_path, media):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        {"image": "gradient.png", "text": "A colour gradient."},
        {"audio": "tone.wav", "text": "A 440 Hz tone.", "id": 7},
    )
    report = read_examples(path, format="captions")
    assert report.formats == {"captions": 2}
    assert [e["messages"] for e in report.examples] == [
        [user({"type": "image", "path": media["image"]}), assistant("A colour gradient.")],
        [user({"type": "audio", "path": media["audio"]}), assistant("A 440 Hz tone.")],
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
    assert plain["prompt"] == [user(text("Capital of France?"))]
    assert plain["chosen"] == [assistant("Paris.")] and plain["rejected"] == [assistant("Lyon.")]
    image = {"type": "image", "path": media["image"]}
    assert parts["prompt"] == llava_style["prompt"] == [user(image, text("Colours?"))]
    assert parts["chosen"] == [assistant("Red and green.")] and parts["rejected"] == [assistant("Blue.")]


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
    assert example["messages"][0]["content"][0]["path"] == media["image"]


def test_base_dir_is_where_relative_media_paths_start(tmp_path, media):
    path = write_jsonl(tmp_path / "annotations" / "train.jsonl", {"image": "gradient.png", "text": "A gradient."})
    with pytest.raises(DataError, match=r"image file 'gradient.png' does not exist .*Pass base_dir="):
        read_examples(path)
    (example,) = read_examples(path, base_dir=tmp_path).examples
    assert example["messages"][0]["content"][0]["path"] == media["image"]
    with pytest.raises(InputError, match=r"base_dir='.*nowhere' is not a folder"):
        read_examples(path, base_dir=tmp_path / "nowhere")


def test_absolute_media_paths_are_kept(tmp_path, media):
    path = write_jsonl(tmp_path / "sub" / "train.jsonl", {"image": media["image"], "text": "A gradient."})
    (example,) = read_examples(path).examples
    assert example["messages"][0]["content"][0]["path"] == media["image"]


def test_a_folder_is_media_only_for_modalities_that_read_folders(tmp_path, media):
    video = {"messages": [user({"type": "video", "path": "frames"}), assistant("Frames.")]}
    (example,) = read_examples(write_jsonl(tmp_path / "v.jsonl", video)).examples
    assert example["messages"][0]["content"][0] == {"type": "video", "path": media["folder"]}
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
    assert [e["source"] for e in report.examples] == [f"{first}:1", f"{second}[0]", f"{second}[1]"]
    assert report.summary() == f"read 3 conversation examples from {first}, {second}"


def test_blank_lines_are_not_records_but_still_count_for_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", "", GOOD, "   ", GOOD)
    report = read_examples(path)
    assert [e["source"] for e in report.examples] == [f"{path}:2", f"{path}:4"]


# malformed records -------------------------------------------------------------------------------

MALFORMED = {
    "invalid JSON": ('{"messages": [', r"The line is not valid JSON \(Expecting value at column 15\)"),
    "not UTF-8": (b'{"messages": "\xff"}', r"The line is not UTF-8 text"),
    "not an object": ("[1, 2]", r"The record is a JSON array, not an object"),
    "a string record": ('"hello"', r"The record is a JSON string, not an object"),
    "unknown keys": (
        {"dialog": []},
        r"keys \['dialog'\], which fit no data format. The formats are messages: .*; llava: .*; captions: .*; "
        r"preference: ",
    ),
    "keys of two formats": ({**GOOD, "conversations": []}, r"has the keys of several formats \(messages and llava"),
    "empty messages": ({"messages": []}, r"The conversation 'messages' is empty"),
    "empty LLaVA conversation": ({"conversations": []}, r"The conversation 'conversations' is empty"),
    "messages not a list": ({"messages": "Hi"}, r"'messages' must be a list of messages .*got a JSON string"),
    "message without role": ({"messages": [{"content": "Hi"}]}, r"messages\[0\] has no 'role'"),
    "message without content": ({"messages": [{"role": "user"}]}, r"messages\[0\] has no 'content'"),
    "unknown role": (
        {"messages": [{"role": "bot", "content": "Hi"}]},
        r"messages\[0\] has role 'bot'; expected one of: 'user', 'assistant', 'system'",
    ),
    "unknown LLaVA speaker": (
        {"conversations": [{"from": "robot", "value": "Hi"}]},
        r"conversations\[0\] comes 'from' 'robot'; expected one of human, user, gpt, assistant, system",
    ),
    "LLaVA turn without value": ({"conversations": [{"from": "human"}]}, r"conversations\[0\] must be an object"),
    "unknown part type": (
        {"messages": [user({"type": "smell", "path": "x"}), assistant("A.")]},
        r"messages\[0\]\.content\[0\] has type 'smell'; a content part's type is one of: text, image, audio, video",
    ),
    "part that is not an object": (
        {"messages": [user("Hi"), assistant("A.")]},
        r"messages\[0\]\.content\[0\] is a JSON string, not a part",
    ),
    "media part without a path": (
        {"messages": [user({"type": "image"}), assistant("A.")]},
        r"messages\[0\]\.content\[0\] has no path; give the image part one: \{'type': 'image', 'path': 'file'\}",
    ),
    "missing media file": (
        {"messages": [user({"type": "image", "path": "nowhere.png"}), assistant("A.")]},
        r"the image file 'nowhere.png' does not exist \(looked for '.*nowhere.png'; relative paths are read from",
    ),
    "media URL": (
        {"messages": [user({"type": "image", "url": "https://example.com/a.png"}), assistant("A.")]},
        r"the image 'https://example.com/a.png' is a URL; training data reads local files",
    ),
    "media suffix without a loader": (
        {"messages": [user({"type": "image", "path": "notes.txt"}), assistant("A.")]},
        r"the image file 'notes.txt' has suffix '.txt', which no loader reads; supported: .bmp",
    ),
    "more LLaVA placeholders than images": (
        {"image": "gradient.png", "conversations": [{"from": "human", "value": "<image> <image>"}]},
        r"The text of 'conversations' holds 2 <image> placeholder\(s\) but the record gives 1 image file\(s\) "
        r"under 'image'",
    ),
    "LLaVA image without placeholder": (
        {"image": "gradient.png", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "A."}]},
        r"holds 0 <image> placeholder\(s\) but the record gives 1 image file\(s\)",
    ),
    "LLaVA placeholder without image": (
        {"conversations": [{"from": "human", "value": "<audio>"}, {"from": "gpt", "value": "A."}]},
        r"holds 1 <audio> placeholder\(s\) but the record gives 0 audio file\(s\)",
    ),
    "placeholder typed into a messages record": (
        {"messages": [user(text("<image>\nWhat?")), assistant("A.")]},
        r"The text of 'messages' holds 1 <image> placeholder\(s\) but the record gives 0 image file\(s\) .*"
        r"\{'type': 'image', 'path': \.\.\.\} parts",
    ),
    "no assistant message": (
        {"messages": [{"role": "user", "content": "Hi"}]},
        r"The conversation has no assistant message, so training has nothing to learn from it",
    ),
    "caption without a modality key": (
        {"text": "A cat."},
        r"A caption record pairs 'text' with exactly one modality key \(image, audio, video[^)]*\).* this one has none",
    ),
    "caption with several modality keys": (
        {"image": "gradient.png", "audio": "tone.wav", "text": "A cat."},
        r"this one has several \(image, audio\). Write one record per item",
    ),
    "empty caption": ({"image": "gradient.png", "text": "  "}, r"The caption 'text' must be non-empty text; got '  '"),
    "caption with a placeholder": ({"image": "gradient.png", "text": "<image> A cat."}, r"The caption holds <image>"),
    "preference without chosen": (
        {"prompt": "Q?", "rejected": "B."},
        r"The preference record has no 'chosen'; it needs 'prompt', 'chosen' and 'rejected'",
    ),
    "preference without rejected": ({"prompt": "Q?", "chosen": "A."}, r"The preference record has no 'rejected'"),
    "chosen equals rejected": (
        {"prompt": "Q?", "chosen": "A.", "rejected": {"role": "assistant", "content": "A."}},
        r"'chosen' and 'rejected' are the same; a preference pair needs two different answers",
    ),
    "empty answer": ({"prompt": "Q?", "chosen": "", "rejected": "B."}, r"'chosen' is empty"),
    "answer from the user": (
        {"prompt": "Q?", "chosen": "A.", "rejected": [{"role": "user", "content": "B."}]},
        r"rejected\[0\] has role 'user'; expected 'assistant'",
    ),
    "placeholder in an answer": (
        {"prompt": "Q?", "chosen": "<image>", "rejected": "B."},
        r"The text of 'chosen' holds <image>; placeholders belong in the prompt",
    ),
}


def write_lines(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def as_line(record):
    return record if isinstance(record, (str, bytes)) else json.dumps(record)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_record_raises_a_data_error_naming_file_line_and_reason(case, tmp_path, media):
    record, reason = MALFORMED[case]
    path = write_lines(tmp_path / "train.jsonl", [as_line(GOOD), "", as_line(record), as_line(GOOD)])
    with pytest.raises(DataError) as caught:
        read_examples(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: "), message
    assert re.search(reason, message), message


def test_skip_invalid_skips_and_reports_each_malformed_record_and_keeps_every_good_one(tmp_path, media):
    lines = [as_line(GOOD)]
    for case in sorted(MALFORMED):
        lines += [as_line(MALFORMED[case][0]), as_line(GOOD)]
    path = write_lines(tmp_path / "train.jsonl", lines)
    report = read_examples(path, skip_invalid=True)
    assert len(report.examples) == len(MALFORMED) + 1
    assert [e["source"] for e in report.examples] == [f"{path}:{n}" for n in range(1, len(lines) + 1, 2)]
    assert [source for source, _ in report.skipped] == [f"{path}:{n}" for n in range(2, len(lines) + 1, 2)]
    for case, (_, reason) in zip(sorted(MALFORMED), report.skipped, strict=True):
        assert re.search(MALFORMED[case][1], reason), (case, reason)


def test_a_json_list_names_a_bad_record_by_its_index(tmp_path, media):
    path = tmp_path / "llava.json"
    path.write_text(json.dumps([GOOD, {"conversations": []}]))
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}\[1\]: The conversation 'conversations' is empty"):
        read_examples(path)
    report = read_examples(path, skip_invalid=True)
    assert report.skipped == [(f"{path}[1]", report.skipped[0][1])] and len(report.examples) == 1


def test_no_usable_record_at_all_is_an_error_quoting_the_first_reasons(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", {"messages": []}, "[]")
    with pytest.raises(
        DataError, match=rf"No record of .*could be used \(2 malformed records\).*{re.escape(str(path))}:1"
    ):
        read_examples(path, skip_invalid=True)


# bad files ---------------------------------------------------------------------------------------


def test_a_missing_data_file(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.jsonl: The data file does not exist; check the path"):
        read_examples(tmp_path / "nowhere.jsonl")


def test_an_empty_data_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"empty.jsonl: The data file is empty \(0 bytes\)"):
        read_examples(tmp_path / "empty.jsonl")


def test_a_data_file_of_blank_lines_or_an_empty_list_holds_no_records(tmp_path):
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match=r"blank.jsonl: The data file holds no records"):
        read_examples(tmp_path / "blank.jsonl")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError, match=r"empty.json: The data file holds no records"):
        read_examples(tmp_path / "empty.json")


def test_a_data_file_of_another_kind(tmp_path):
    (tmp_path / "train.csv").write_text("image,text\n")
    with pytest.raises(DataError, match=r"train.csv: A data file must be .jsonl .* or .json .*; got suffix '.csv'"):
        read_examples(tmp_path / "train.csv")


def test_a_json_data_file_that_is_not_a_list_or_not_json(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps(GOOD))
    with pytest.raises(
        DataError, match=r"one.json: The data file holds a JSON object; a .json data file holds a JSON list"
    ):
        read_examples(tmp_path / "one.json")
    (tmp_path / "broken.json").write_text('[\n{"messages": \n')
    with pytest.raises(DataError, match=r"broken.json:3: The data file is not valid JSON"):
        read_examples(tmp_path / "broken.json")


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
    batch = image_model.processor([example["messages"] for example in report.examples])
    assert batch["input_ids"].shape[0] == 3 and (batch["labels"] != -100).any(dim=1).all()
