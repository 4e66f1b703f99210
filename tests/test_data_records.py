"""Malformed records and bad data files: each is a DataError naming the file:line (or file) and the reason; the
``files`` data source that reads them, as a recipe's data."""

from __future__ import annotations

import json
import re

import pytest
from test_data_formats import assistant, text, user, write_jsonl

from mmllm_sdk.default_plugins.datasets.files import Params, build_files_dataset, read_examples
from mmllm_sdk.default_plugins.modalities import IMAGE
from mmllm_sdk.errors import DataError, SpecError, UnknownComponentError
from mmllm_sdk.registry import get_registry

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


@pytest.fixture
def media(tmp_path, image_file, wav_file):
    """gradient.png, tone.wav and notes.txt in tmp_path (where the data files go)."""
    (tmp_path / "notes.txt").write_text("not an image")
    return {"image": str(image_file), "audio": str(wav_file)}


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
    "a prompt alone": (
        {"prompt": "Q?"},
        r"The record has a 'prompt' but keys \['prompt'\]: a preference pair also needs 'chosen' and 'rejected' .*, "
        r"an unpaired answer 'completion' and 'label'",
    ),
    "unpaired without label": (
        {"prompt": "Q?", "completion": "A."},
        r"The unpaired record has no 'label'; it needs 'prompt', 'completion' and 'label'",
    ),
    "label that is not a boolean": (
        {"prompt": "Q?", "completion": "A.", "label": "yes"},
        r"'label' is the JSON string \"yes\"; it is true \(a desirable answer\) or false",
    ),
    "empty completion": ({"prompt": "Q?", "completion": " ", "label": True}, r"'completion' is empty; it needs a"),
    "keys of a pair and of an unpaired answer": (
        {"prompt": "Q?", "chosen": "A.", "rejected": "B.", "label": True},
        r"has the keys of several formats \(preference and unpaired",
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
    assert [e.source for e in report.examples] == [f"{path}:{n}" for n in range(1, len(lines) + 1, 2)]
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


# the files data source ---------------------------------------------------------------------------


def test_files_is_a_registered_data_source_whose_params_name_the_modalities(tmp_path, media):
    entry = get_registry().get("datasets", "files")
    assert entry.value is build_files_dataset and build_files_dataset.Params is Params
    path = write_jsonl(tmp_path / "pairs.jsonl", {"image": "gradient.png", "text": "A gradient."})
    report = entry.build({"paths": [str(path)], "format": "captions", "modalities": ["image"]})
    assert report.kind == "conversation" and report.formats == {"captions": 1} and report.files == [str(path)]
    tone = write_jsonl(tmp_path / "tone.jsonl", {"audio": "tone.wav", "text": "A tone."})
    assert entry.build({"paths": str(tone)}).formats == {"captions": 1}  # default: every registered modality
    with pytest.raises(DataError, match=r"tone.jsonl:1: A caption record pairs 'text' with exactly one .*\(image\)"):
        entry.build({"paths": str(tone), "modalities": ["image"]})
    with pytest.raises(UnknownComponentError, match=r"^files.params.modalities: 'smell' is not a registered modality"):
        entry.build({"paths": str(path), "modalities": ["smell"]})
    with pytest.raises(SpecError, match=r"files.params.colour: is not a known field"):
        entry.build({"paths": str(path), "colour": "red"})


def test_a_recipes_data_files_and_a_files_data_source_read_alike(tmp_path, media):
    from mmllm_sdk.default_plugins.recipes.run import _read
    from mmllm_sdk.training.spec import parse_recipe

    recipes = {"conversation": "pt", "preference": "dpo"}

    def read(train, kind="conversation", **data):
        training = {"output_dir": str(tmp_path / "run")}
        spec = parse_recipe(
            {"recipe": recipes[kind], "model": "m.yaml", "data": {"train": train, **data}, "training": training}
        )
        return _read(spec, spec.data.train, {"image": IMAGE}, kind)

    llava = {
        "image": "gradient.png",
        "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A."}],
    }
    path = write_jsonl(tmp_path / "llava.jsonl", llava)
    report = read(str(path), format="llava")
    assert report.summary() == f"read 1 conversation example from {path}" and report.formats == {"llava": 1}
    source = read({"dataset": "files", "params": {"paths": [str(path)], "format": "llava"}})
    assert source.examples == report.examples and source.summary() == report.summary()
    with pytest.raises(DataError, match=r"llava.jsonl:1: The record is a llava record, but format='captions'"):
        read(str(path), format="captions")
    with pytest.raises(SpecError, match=r"data.files.params.format: Input should be 'auto'"):
        read({"dataset": "files", "params": {"paths": str(path), "format": "sharegpt"}})
    tone = write_jsonl(tmp_path / "tone.jsonl", {"audio": "tone.wav", "text": "A tone."})
    with pytest.raises(SpecError, match=r"dataset 'files' gives audio inputs, but the model takes only image"):
        read({"dataset": "files", "params": {"paths": str(tone)}})
    with pytest.raises(SpecError, match=r"recipe 'dpo' trains on preference examples, but .* holds conversation"):
        read(str(path), kind="preference")
