"""Hostile data and messages: FIFOs and devices, endless or dripping URLs, oversized or deeply nested data files, text
beyond the LLM's context, unknown roles, plugins' loaders and encoders that raise. Each gives an MMLLMError that names
the file, field or value, in bounded time and memory; a potential hang runs in a thread with a deadline."""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time
import tracemalloc

import pytest
import torch
from torch import nn

from mmllm_sdk.components import modality
from mmllm_sdk.components.encoder import ModalityEncoder
from mmllm_sdk.components.modality import ModalitySpec
from mmllm_sdk.data.examples import Conversation, Message, TextPart
from mmllm_sdk.default_plugins import modalities
from mmllm_sdk.default_plugins.datasets import records
from mmllm_sdk.default_plugins.datasets.files import read_examples
from mmllm_sdk.default_plugins.modalities import AUDIO, IMAGE, VIDEO
from mmllm_sdk.default_plugins.recipes.feature_cache import FeatureCache, fill_cache
from mmllm_sdk.errors import DataError, InputError, PluginError
from mmllm_sdk.model.processor import IGNORE_INDEX, MMLLMProcessor, ModalityInput

FINGERPRINT = "f" * 64
TEN_MB = 10_000_000


def within(seconds, call):
    """``call()``'s result, or what it raised; the test fails if it is still running after ``seconds`` (a hang)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: it hangs"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def write_jsonl(path, *records_):
    path.write_text("".join(json.dumps(record) + "\n" for record in records_))
    return path


def chat(answer="Hello.", role="assistant", question="Hi"):
    return [{"role": "user", "content": question}, {"role": role, "content": answer}]


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


@pytest.fixture
def zero(tmp_path):
    """A link to /dev/zero, named like an image: reading it never ends."""
    path = tmp_path / "zero.png"
    path.symlink_to("/dev/zero")
    return path


# data files and media paths that are not regular files ------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_data_file_that_is_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path, suffix):
    path = tmp_path / f"train{suffix}"
    os.mkfifo(path)
    with pytest.raises(DataError, match=rf"train{suffix}: The data file is a FIFO, not a regular file"):
        within(10, lambda: read_examples(path))


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_data_file_that_links_to_dev_zero_is_refused_unread(tmp_path, suffix):
    path = tmp_path / f"train{suffix}"
    path.symlink_to("/dev/zero")
    with pytest.raises(DataError, match=rf"train{suffix}: The data file is a device, not a regular file"):
        within(10, lambda: read_examples(path))


@pytest.mark.parametrize("name", ["fifo", "zero"])
def test_a_records_media_path_to_a_fifo_or_device_names_file_line_and_path(tmp_path, image_file, name, request):
    special = request.getfixturevalue(name)
    path = write_jsonl(
        tmp_path / "train.jsonl", {"image": str(image_file), "text": "A."}, {"image": str(special), "text": "B."}
    )
    with pytest.raises(DataError, match=rf"train.jsonl:2: .*{special.name}' is a FIFO or a device, not a regular file"):
        within(10, lambda: read_examples(path, modalities={"image": IMAGE}))


@pytest.mark.parametrize("name", ["fifo", "zero"])
def test_a_modality_file_that_is_a_fifo_or_device_is_refused_before_its_loader_runs(name, request):
    special, called = request.getfixturevalue(name), []
    spec = ModalitySpec("image", "<image>", loaders={".png": called.append})
    with pytest.raises(InputError, match=rf"The image file '.*{special.name}' is a FIFO, device or socket, not a"):
        within(10, lambda: spec.load(str(special)))
    assert called == []


@pytest.mark.parametrize("name", ["fifo", "zero"])
def test_the_feature_cache_neither_hashes_nor_encodes_a_fifo_or_device(tmp_path, name, request):
    special = request.getfixturevalue(name)
    cache = FeatureCache(tmp_path / "cache")
    assert within(10, lambda: cache.item_key(FINGERPRINT, str(special))) is None
    encoded = within(10, lambda: fill_cache(BrokenEncoder(), cache, FINGERPRINT, [str(special)], IMAGE.load))
    assert encoded == 0 and not (tmp_path / "cache").exists()


def test_a_feature_cache_file_replaced_by_a_fifo_is_an_invalid_miss_not_a_hang(tmp_path, image_file):
    cache = FeatureCache(tmp_path / "cache")
    key = cache.item_key(FINGERPRINT, image_file)
    cache.put(key, torch.zeros(2, 3))
    cache.path(key).unlink()
    os.mkfifo(cache.path(key))
    assert within(10, lambda: cache.get(key)) is None
    assert cache.stats.invalid == 1 and not cache.path(key).exists()


def test_a_nul_in_a_media_path_names_the_record(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", {"image": "a\x00b.png", "text": "A."})
    with pytest.raises(DataError, match=r"train.jsonl:1: image: the image file 'a\\x00b.png' does not exist"):
        read_examples(path, modalities={"image": IMAGE})


# bounded data files --------------------------------------------------------------------------------------------


def test_a_jsonl_line_over_the_limit_is_one_bad_record_read_in_bounded_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_LINE_BYTES", 1000)
    good = chat()
    path = write_jsonl(tmp_path / "train.jsonl", {"messages": good}, {"messages": chat("x" * 5000)}, {"messages": good})
    with pytest.raises(DataError, match=r"train.jsonl:2: The line is over 1,000 bytes"):
        read_examples(path)
    report = read_examples(path, skip_invalid=True)
    assert len(report.examples) == 2 and [source for source, _ in report.skipped] == [f"{path}:2"]


def test_a_json_data_file_over_the_limit_is_refused_unparsed(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_JSON_BYTES", 1000)
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"messages": chat()}] * 100))
    with pytest.raises(DataError, match=r"train.json: The data file is over 1,000 bytes.*into a .jsonl file"):
        read_examples(path)


@pytest.mark.parametrize("depth", [65, 200_000])
def test_json_nested_too_deep_names_the_line(tmp_path, depth):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"messages": chat()}) + "\n" + "[" * depth + "]" * depth + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:2: The line nests lists and mappings more than 64 levels"):
        read_examples(path)


def test_a_json_data_file_nested_too_deep_names_the_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"train.json: The data file nests lists and mappings more than 64 levels"):
        read_examples(path)


def test_a_binary_data_file_names_the_line_and_the_byte_offset(tmp_path, image_file):
    path = tmp_path / "train.jsonl"
    path.write_bytes(json.dumps({"messages": chat()}).encode() + b"\n" + image_file.read_bytes())
    first = len(json.dumps({"messages": chat()})) + 1
    with pytest.raises(DataError, match=rf"train.jsonl:2: The line is not UTF-8 text \(.* at byte {first} of the file"):
        read_examples(path)


def test_a_json_data_file_that_is_not_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "train.json"
    path.write_bytes(b'[{"messages": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"train.json: The data file is not UTF-8 text \(.* at byte 18\)"):
        read_examples(path)


def test_a_number_of_thousands_of_digits_is_a_bad_record_not_a_crash(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"messages": ' + "7" * 5000 + "}\n")
    with pytest.raises(DataError, match=r"train.jsonl:1: The line holds JSON the SDK does not read \(.*digits"):
        read_examples(path)


def test_a_video_that_decodes_to_too_many_pixels_is_refused_frame_by_frame(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(modalities, "MAX_VIDEO_PIXELS", 3 * 32 * 32)
    frames = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(5)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(InputError, match=r"The video '.*clip.gif' decodes to over 3,072 pixels .* by frame 4"):
        VIDEO.load(tmp_path / "clip.gif")


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_audio_of_too_many_samples_is_refused_before_it_is_read(tmp_path, monkeypatch, wav_file, suffix):
    import soundfile

    path = tmp_path / f"long{suffix}"
    soundfile.write(path, soundfile.read(wav_file)[0], 16000)
    monkeypatch.setattr(modalities, "MAX_AUDIO_SAMPLES", 1000)
    with pytest.raises(InputError, match=rf"The audio file '.*long{suffix}' holds 4,000 samples, over the 1,000"):
        AUDIO.load(path)


# remote files: a total deadline and a size cap ----------------------------------------------------------------


def serve(respond):
    """A loopback server whose every connection is answered by ``respond(connection)`` in a thread."""
    listener = socket.create_server(("127.0.0.1", 0))

    def accept():
        while True:
            connection, _ = listener.accept()
            threading.Thread(target=respond, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/picture.png"


def sending(head, chunks, pause=0.0):
    """A response: ``head``, then each of ``chunks()`` (maybe endless) ``pause`` s apart; then the line is held open."""

    def respond(connection):
        with connection:
            connection.recv(65536)
            try:
                connection.sendall(head)
                for chunk in chunks():
                    connection.sendall(chunk)
                    time.sleep(pause)
                time.sleep(30)
            except OSError:
                return

    return respond


def one_by_one(data):
    return lambda: (data[i : i + 1] for i in range(len(data)))


def test_a_url_that_drips_a_byte_at_a_time_is_cut_off_at_the_deadline(monkeypatch):
    monkeypatch.setattr(modality, "URL_DEADLINE", 1.0)
    url = serve(sending(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", one_by_one(b"x" * 1000), pause=0.2))
    start = time.monotonic()
    with pytest.raises(InputError, match=rf"The image URL '{url}' took over 1 s to download"):
        within(10, lambda: IMAGE.load(url))
    assert time.monotonic() - start < 3


def test_a_url_that_drips_its_headers_is_cut_off_at_the_deadline(monkeypatch):
    monkeypatch.setattr(modality, "URL_DEADLINE", 1.0)
    url = serve(sending(b"", one_by_one(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 1000), pause=0.2))
    with pytest.raises(InputError, match=rf"The image URL '{url}'"):
        within(5, lambda: IMAGE.load(url))


def test_an_endless_url_is_cut_off_at_the_size_cap(monkeypatch):
    monkeypatch.setattr(modality, "URL_LIMIT", 100_000)
    url = serve(sending(b"HTTP/1.1 200 OK\r\n\r\n", lambda: itertools.repeat(b"x" * 65536)))
    with pytest.raises(InputError, match=rf"The image URL '{url}' is over the limit of 100,000 bytes"):
        within(10, lambda: IMAGE.load(url))


def test_a_url_that_promises_a_terabyte_and_stalls_fails_fast(monkeypatch):
    monkeypatch.setattr(modality, "URL_DEADLINE", 1.0)
    url = serve(sending(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n", lambda: [b"\x89PNG"]))
    start = time.monotonic()
    with pytest.raises(InputError, match=rf"The image URL '{url}' (could not be downloaded|is over the limit)"):
        within(10, lambda: IMAGE.load(url))
    assert time.monotonic() - start < 3


# text and items beyond the LLM's context ------------------------------------------------------------------------


def test_a_10_mb_message_is_refused_with_the_numbers_before_tokenizing_or_allocating(image_model):
    huge = chat(question="word " * (TEN_MB // 5))
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(InputError, match=r"Conversation 0 holds 10,000,00\d characters of text, more than the "):
            image_model.processor([huge])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - start < 5 and peak < 64 << 20, peak  # a copy or two of the text, not hundreds of MB
    assert image_model.llm.max_positions == 512


def test_a_10_mb_caption_in_a_data_file_is_refused_naming_file_and_line(tmp_path, image_model, image_file):
    path = write_jsonl(tmp_path / "captions.jsonl", {"image": str(image_file), "text": "A" * TEN_MB})
    (example,) = read_examples(path, modalities={"image": IMAGE}).examples
    with pytest.raises(InputError, match=rf"Conversation 0 \({path}:1\) holds 10,000,00\d characters of text"):
        image_model.processor([example])


def test_text_tokens_beyond_the_llms_positions_are_refused_with_the_numbers(image_model):
    with pytest.raises(InputError, match=r"takes at least 513 positions \(at least 513 text tokens\), more than the"):
        image_model.processor([chat(question="a " * 2000)])


def test_placeholders_that_expand_beyond_the_positions_are_refused_before_any_item_is_read(image_model, tmp_path):
    items = [{"type": "image", "path": str(tmp_path / f"missing{i}.png")} for i in range(40)]
    with pytest.raises(InputError, match=r"takes 6\d\d positions \(\d+ text tokens \+ 40 <image> × 16\), more than"):
        image_model.processor([[{"role": "user", "content": items}]])


# roles -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["Assistant", "robot", "gpt"])
def test_an_unknown_role_in_messages_is_refused_with_the_index_and_the_allowed_roles(image_model, role):
    with pytest.raises(
        InputError, match=rf"Conversation 0, message 1 has role '{role}'; the roles are 'user', 'assistant', 'system'"
    ):
        image_model.processor([chat(role=role)])


def test_an_unknown_role_in_a_typed_conversation_is_refused(image_model):
    typed = Conversation((Message("user", (TextPart("Hi"),)), Message("bot", (TextPart("Yo."),))), "src:7")
    with pytest.raises(InputError, match=r"Conversation 0 \(src:7\), message 1 has role 'bot'; the roles are"):
        image_model.processor([typed])


def test_an_unknown_role_in_a_data_file_names_file_line_and_role(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", {"messages": chat(role="Assistant")})
    with pytest.raises(DataError, match=r"train.jsonl:1: messages\[1\] has role 'Assistant'; expected one of: 'user'"):
        read_examples(path)


def test_llavas_human_and_gpt_are_read_as_user_and_assistant_and_supervised(image_model):
    record = {"conversations": [{"from": "Human", "value": "Hi"}, {"from": "GPT", "value": "Hello."}]}
    labels = image_model.processor([record])["labels"][0]
    assert image_model.processor.tokenizer.decode(labels[labels != IGNORE_INDEX]) == "Hello.<|im_end|>\n"


# plugins' loaders and encoders that raise ---------------------------------------------------------------------


def broken_loader(path):
    raise ZeroDivisionError("division by zero in the loader")


class BrokenEncoder(ModalityEncoder):
    """An image encoder (as a plugin might write it) whose preprocess() raises."""

    def __init__(self):
        super().__init__()
        self.modality, self.output_dim, self.num_tokens = "image", 8, 16
        self.linear = nn.Linear(1, 8)

    def preprocess(self, items):
        raise RuntimeError("the image processor choked")

    def forward(self, **inputs):
        raise AssertionError("never reached")


def test_a_loader_that_raises_names_the_modality_the_file_and_the_loader(tmp_path):
    (tmp_path / "x.blob").write_bytes(b"data")
    spec = ModalitySpec("blob", "<blob>", loaders={".blob": broken_loader})
    with pytest.raises(
        InputError, match=r"The blob file '.*x.blob' could not be read by \S*broken_loader \(ZeroDivisionError"
    ):
        spec.load(tmp_path / "x.blob")


def test_a_folder_loader_and_a_normalizer_that_raise_are_named_too(tmp_path):
    spec = ModalitySpec("blob", "<blob>", loaders={"/": broken_loader}, normalize=broken_loader)
    with pytest.raises(InputError, match=rf"The blob file '{tmp_path}' could not be read by \S*broken_loader"):
        spec.load(tmp_path)
    with pytest.raises(InputError, match=r"A blob dict could not be read by \S*broken_loader"):
        spec.load({"samples": 1})


def test_an_encoder_whose_preprocess_raises_is_named_with_the_modality_and_the_file(image_model, image_file):
    inputs = {"image": ModalityInput(IMAGE, BrokenEncoder(), image_model.placeholder_ids["image"], 16)}
    processor = MMLLMProcessor(image_model.llm, inputs)
    conversation = [{"role": "user", "content": [{"type": "image", "path": str(image_file)}]}]
    with pytest.raises(
        PluginError,
        match=rf"\S*BrokenEncoder.preprocess\(\) failed on 1 image input\(s\) \('{image_file}'\): RuntimeError",
    ):
        processor([conversation])


def test_a_feature_cache_fill_names_the_encoder_whose_preprocess_raises(tmp_path, image_file):
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(
        PluginError, match=rf"BrokenEncoder.preprocess\(\) failed on 1 image input\(s\) \('{image_file}'"
    ):
        fill_cache(BrokenEncoder(), cache, FINGERPRINT, [str(image_file)], IMAGE.load)


# text that is not text, and generation options -----------------------------------------------------------------


def test_a_lone_surrogate_in_a_message_is_refused_before_the_tokenizer_sees_it(image_model):
    with pytest.raises(InputError, match=r"Conversation 0 holds a lone surrogate \('\\udcff'\), which is not text"):
        image_model.processor([chat(question="caf\udcff")])


def test_max_new_tokens_beyond_the_llms_positions_is_refused_with_the_numbers(image_model):
    with pytest.raises(InputError, match=r"max_new_tokens asks for 1,000,000,000 more, beyond the LLM's 512; ask for"):
        image_model.generate([{"role": "user", "content": "Hi"}], max_new_tokens=10**9)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"do_sample": True, "temperature": -1.0, "max_new_tokens": 2}, "temperature"),
        ({"tempreature": 0.5}, "tempreature"),
    ],
)
def test_a_generation_option_transformers_refuses_is_an_input_error_naming_it(image_model, options, named):
    with pytest.raises(InputError, match=rf"generate\(\): .*{named}"):
        image_model.generate([{"role": "user", "content": "Hi"}], **options)
