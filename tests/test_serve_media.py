"""The server's media parts: OpenAI content parts become SDK message parts, each item bounded and read once, and
every bad part is a 400 naming its JSON path and what would fit (real PIL, wave, numpy and PyAV files)."""

from __future__ import annotations

import base64
import io
import os
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from mmllm_sdk.default_plugins.serving.media import MediaPolicy, part_types, to_messages
from mmllm_sdk.default_plugins.serving.protocol import APIError
from mmllm_sdk.registry import get_registry

MODALITIES = ("image", "audio", "video", "depth")


@pytest.fixture
def inputs():
    registry = get_registry()
    return {name: registry.modality(name) for name in MODALITIES}


@pytest.fixture
def scratch(tmp_path):
    folder = tmp_path / "scratch"
    folder.mkdir()
    return folder


@pytest.fixture
def media_dir(tmp_path, image_file):
    """The allowed folder, holding the gradient PNG as photo.png."""
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "photo.png").write_bytes(image_file.read_bytes())
    return folder


@pytest.fixture
def http_folder(media_dir):
    """``media_dir`` served on a loopback port for one test."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(media_dir)))
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def mp4_file(tmp_path):
    """Four 32 x 32 frames at 4 frames a second, written with PyAV (MPEG-4 part 2)."""
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for index in range(4):
            frame = np.full((32, 32, 3), index * 60, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def data_url(mime, data):
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def b64(data):
    return base64.b64encode(data).decode()


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def user(*parts):
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, *parts]}]


def convert(messages, inputs, scratch, **policy):
    return to_messages(messages, inputs, MediaPolicy(**policy), scratch)


def refused(messages, inputs, scratch, **policy) -> APIError:
    with pytest.raises(APIError) as caught:
        convert(messages, inputs, scratch, **policy)
    error = caught.value
    assert error.status == 400 and error.body()["error"]["type"] == "invalid_request_error"
    assert "Traceback" not in error.message
    return error


def only_media(messages):
    """The one media part of a converted conversation."""
    (part,) = [p for m in messages for p in m["content"] if p["type"] != "text"]
    return part


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def png_header_only_bytes(width, height):
    """A valid 1-bit PNG of ``width`` x ``height`` zeros (compressed a row at a time: a few KB, whatever the size)."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor, row = zlib.compressobj(9), b"\x00" * (1 + (width + 7) // 8)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


# accepted parts ------------------------------------------------------------------------------


def test_string_content_becomes_one_text_part(inputs, scratch):
    messages = convert([{"role": "user", "content": "Hello"}], inputs, scratch)
    assert messages == [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]


def test_system_developer_and_assistant_messages_keep_their_text(inputs, scratch):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": "Hi", "name": "ann"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
        {"role": "user", "content": "Bye"},
    ]
    converted = convert(messages, inputs, scratch)
    assert [m["role"] for m in converted] == ["system", "system", "user", "assistant", "user"]
    assert converted[3]["content"] == [{"type": "text", "text": "Hello."}]


def test_a_png_data_url_is_written_to_scratch_and_keeps_its_pixels(inputs, scratch, image_file):
    messages = convert(user(image_part(data_url("image/png", image_file.read_bytes()))), inputs, scratch)
    assert messages[0]["content"][0] == {"type": "text", "text": "What is this?"}
    part = only_media(messages)
    assert part == {"type": "image", "path": str(scratch / "0.png")}
    assert np.array_equal(np.asarray(inputs["image"].load(part["path"])), np.asarray(Image.open(image_file)))


def test_a_jpeg_data_url_is_read_as_an_image(inputs, scratch, image_file):
    buffer = io.BytesIO()
    Image.open(image_file).convert("RGB").save(buffer, format="JPEG")
    part = only_media(convert(user(image_part(data_url("image/jpeg", buffer.getvalue()))), inputs, scratch))
    assert part["path"].endswith("0.jpg") and inputs["image"].load(part["path"]).size == (48, 40)


def test_an_image_url_given_as_a_bare_string_is_accepted(inputs, scratch, image_file):
    part = {"type": "image_url", "image_url": data_url("image/png", image_file.read_bytes())}
    assert only_media(convert(user(part), inputs, scratch))["type"] == "image"


def test_an_untyped_data_url_is_recognised_from_its_bytes(inputs, scratch, image_file):
    part = only_media(
        convert(user(image_part(data_url("application/octet-stream", image_file.read_bytes()))), inputs, scratch)
    )
    assert part["path"].endswith(".png")


@pytest.mark.parametrize("form", ["photo.png", "{dir}/photo.png", "file://{dir}/photo.png", "{dir}/sub/../photo.png"])
def test_a_file_under_the_allowed_folder_is_copied_to_scratch(inputs, scratch, media_dir, form):
    (media_dir / "sub").mkdir()
    url = form.format(dir=media_dir)
    part = only_media(convert(user(image_part(url)), inputs, scratch, allowed_dir=media_dir))
    assert part == {"type": "image", "path": str(scratch / "0.png")}
    assert (scratch / "0.png").read_bytes() == (media_dir / "photo.png").read_bytes()


def test_a_symlink_inside_the_allowed_folder_to_a_file_inside_is_read(inputs, scratch, media_dir):
    (media_dir / "link.png").symlink_to(media_dir / "photo.png")
    part = only_media(convert(user(image_part("link.png")), inputs, scratch, allowed_dir=media_dir))
    assert part["type"] == "image"


def test_input_audio_wav_keeps_its_samples(inputs, scratch, wav_file):
    part = {"type": "input_audio", "input_audio": {"data": b64(wav_file.read_bytes()), "format": "wav"}}
    converted = only_media(convert(user(part), inputs, scratch))
    assert converted == {"type": "audio", "path": str(scratch / "0.wav")}
    clip, original = inputs["audio"].load(converted["path"]), inputs["audio"].load(wav_file)
    assert clip.sampling_rate == 16000 and np.array_equal(clip.samples, original.samples)


def test_a_video_url_mp4_is_read_frame_by_frame(inputs, scratch, mp4_file):
    part = {"type": "video_url", "video_url": {"url": data_url("video/mp4", mp4_file.read_bytes())}}
    converted = only_media(convert(user(part), inputs, scratch))
    assert converted == {"type": "video", "path": str(scratch / "0.mp4")}
    assert len(inputs["video"].load(converted["path"]).frames) == 4


def test_a_depth_part_with_npy_data_keeps_its_values(inputs, scratch):
    depth = np.linspace(0.5, 4.0, 48, dtype=np.float32).reshape(6, 8)
    part = {"type": "depth", "depth": {"data": b64(npy_bytes(depth)), "format": "npy"}}
    converted = only_media(convert(user(part), inputs, scratch))
    assert converted == {"type": "depth", "path": str(scratch / "0.npy")}
    assert np.array_equal(inputs["depth"].load(converted["path"]).values, depth)


def test_a_depth_part_takes_a_16_bit_png_data_url(inputs, scratch):
    millimetres = (np.arange(48, dtype=np.uint16).reshape(6, 8) + 1) * 100
    buffer = io.BytesIO()
    Image.fromarray(millimetres).save(buffer, format="PNG")
    part = {"type": "depth", "depth": {"url": data_url("image/png", buffer.getvalue())}}
    converted = only_media(convert(user(part), inputs, scratch))
    assert np.array_equal(inputs["depth"].load(converted["path"]).values, millimetres.astype(np.float32))


def test_an_http_url_is_downloaded_when_remote_media_is_on(inputs, scratch, http_folder):
    part = only_media(convert(user(image_part(f"{http_folder}/photo.png")), inputs, scratch, allow_remote=True))
    assert part == {"type": "image", "path": str(scratch / "0.png")}


def test_a_download_without_a_suffix_is_recognised_from_its_bytes(inputs, scratch, http_folder, media_dir):
    (media_dir / "photo").write_bytes((media_dir / "photo.png").read_bytes())
    part = only_media(convert(user(image_part(f"{http_folder}/photo")), inputs, scratch, allow_remote=True))
    assert part["path"].endswith("0.png")


def test_items_are_numbered_in_the_order_they_come(inputs, scratch, image_file, wav_file):
    audio = {"type": "input_audio", "input_audio": {"data": b64(wav_file.read_bytes()), "format": "wav"}}
    image = image_part(data_url("image/png", image_file.read_bytes()))
    converted = convert(user(image, audio, image), inputs, scratch)
    assert [p.get("path") for p in converted[0]["content"]] == [
        None,
        str(scratch / "0.png"),
        str(scratch / "1.wav"),
        str(scratch / "2.png"),
    ]


def test_part_types_name_the_openai_parts_and_plugin_modalities(inputs):
    assert part_types(inputs) == ["text", "image_url", "input_audio", "video_url", "depth"]


# refusals ------------------------------------------------------------------------------------


def test_a_path_outside_the_allowed_folder_is_refused(inputs, scratch, media_dir, image_file):
    error = refused(user(image_part(str(image_file))), inputs, scratch, allowed_dir=media_dir)
    assert error.param == "messages[0].content[1].image_url.url" and error.code == "path_not_allowed"
    assert "outside the folder this server reads media from" in error.message


def test_dot_dot_out_of_the_allowed_folder_is_refused(inputs, scratch, media_dir, image_file):
    error = refused(user(image_part(f"../{image_file.name}")), inputs, scratch, allowed_dir=media_dir)
    assert "outside the folder" in error.message


def test_a_symlink_inside_the_allowed_folder_pointing_outside_is_refused(inputs, scratch, media_dir, image_file):
    (media_dir / "escape.png").symlink_to(image_file)
    error = refused(user(image_part(f"file://{media_dir}/escape.png")), inputs, scratch, allowed_dir=media_dir)
    assert error.param == "messages[0].content[1].image_url.url" and "once symlinks are resolved" in error.message
    assert list(scratch.iterdir()) == []


def test_a_fifo_inside_the_allowed_folder_is_refused_unread(inputs, scratch, media_dir):
    os.mkfifo(media_dir / "pipe.png")
    error = refused(user(image_part("pipe.png")), inputs, scratch, allowed_dir=media_dir)
    assert "is a FIFO, not a regular file" in error.message


def test_local_paths_are_refused_without_an_allowed_folder(inputs, scratch, image_file):
    error = refused(user(image_part(str(image_file))), inputs, scratch)
    assert "reads no local files" in error.message and "--allowed-media-dir" in error.message


def test_an_http_url_is_refused_without_allow_remote(inputs, scratch):
    error = refused(user(image_part("http://127.0.0.1:9/cat.png")), inputs, scratch)
    assert error.param == "messages[0].content[1].image_url.url" and "--allow-remote-media" in error.message


def test_a_missing_download_is_refused_naming_the_url(inputs, scratch, http_folder):
    error = refused(user(image_part(f"{http_folder}/gone.png")), inputs, scratch, allow_remote=True)
    assert "could not be downloaded" in error.message and "gone.png" in error.message


def test_another_url_scheme_is_refused(inputs, scratch):
    error = refused(user(image_part("ftp://example.com/cat.png")), inputs, scratch)
    assert "scheme 'ftp'" in error.message


def test_bad_base64_is_refused(inputs, scratch):
    error = refused(user(image_part("data:image/png;base64,iVBORw0K!!!")), inputs, scratch)
    assert error.param == "messages[0].content[1].image_url.url" and error.code == "invalid_base64"
    assert "not valid base64" in error.message


def test_a_data_url_of_the_wrong_media_type_is_refused_listing_those_that_fit(inputs, scratch):
    error = refused(user(image_part(data_url("text/plain", b"hello"))), inputs, scratch)
    assert "'text/plain'" in error.message and "image/png" in error.message and "image/jpeg" in error.message


def test_a_data_url_without_base64_is_refused(inputs, scratch):
    error = refused(user(image_part("data:image/png,hello")), inputs, scratch)
    assert "without ';base64,'" in error.message


def test_an_oversize_data_url_is_refused_before_decoding(inputs, scratch, image_file):
    data = image_file.read_bytes()
    error = refused(user(image_part(data_url("image/png", data))), inputs, scratch, max_item_bytes=len(data) // 2)
    assert error.code == "item_too_large" and "base64 characters" in error.message
    assert list(scratch.iterdir()) == []


def test_a_decoded_item_one_byte_over_the_limit_is_refused(inputs, scratch, image_file):
    data = image_file.read_bytes()
    error = refused(user(image_part(data_url("image/png", data))), inputs, scratch, max_item_bytes=len(data) - 1)
    assert error.code == "item_too_large" and f"{len(data):,} bytes" in error.message


def test_an_oversize_local_file_is_refused(inputs, scratch, media_dir):
    size = (media_dir / "photo.png").stat().st_size
    error = refused(user(image_part("photo.png")), inputs, scratch, allowed_dir=media_dir, max_item_bytes=size - 1)
    assert "over the limit" in error.message


def test_a_20000_by_20000_png_is_refused_by_its_pixel_count_without_decoding(inputs, scratch):
    data = png_header_only_bytes(20_000, 20_000)
    assert len(data) < 100_000
    started = time.perf_counter()
    error = refused(user(image_part(data_url("image/png", data))), inputs, scratch)
    assert time.perf_counter() - started < 2.0
    assert error.code == "too_many_pixels" and "resize it" in error.message


def test_an_image_over_max_pixels_is_refused_naming_its_size(inputs, scratch, image_file):
    error = refused(user(image_part(data_url("image/png", image_file.read_bytes()))), inputs, scratch, max_pixels=1000)
    assert "48 x 40 = 1,920 pixels" in error.message and "1,000" in error.message


def test_a_video_whose_frames_are_over_max_pixels_is_refused_from_its_header(inputs, scratch, mp4_file):
    part = {"type": "video_url", "video_url": {"url": data_url("video/mp4", mp4_file.read_bytes())}}
    error = refused(user(part), inputs, scratch, max_pixels=1000)
    assert error.code == "too_many_pixels" and "frames of 32 x 32" in error.message


def test_a_video_declaring_more_pixels_than_max_video_pixels_is_refused(inputs, scratch, mp4_file):
    part = {"type": "video_url", "video_url": {"url": data_url("video/mp4", mp4_file.read_bytes())}}
    error = refused(user(part), inputs, scratch, max_video_pixels=3 * 32 * 32)
    assert "4 frames of 32 x 32" in error.message


def test_undecodable_image_bytes_are_refused_naming_the_format(inputs, scratch):
    error = refused(user(image_part(data_url("image/png", b"this is no png"))), inputs, scratch)
    assert error.code == "invalid_media" and "could not be decoded as image/png" in error.message


def test_a_loader_error_is_repeated_with_the_json_path_not_the_scratch_file(inputs, scratch):
    part = {"type": "depth", "depth": {"data": b64(npy_bytes(np.zeros((2, 3, 4), np.float32))), "format": "npy"}}
    error = refused(user(part), inputs, scratch)
    assert error.param == "messages[0].content[1].depth.data"
    assert "a depth map is 2-D" in error.message and str(scratch) not in error.message


def test_an_unknown_part_type_is_refused_listing_the_types_the_model_takes(inputs, scratch):
    error = refused(user({"type": "file", "file": {"file_data": "..."}}), inputs, scratch)
    assert error.param == "messages[0].content[1].type"
    assert "image_url, input_audio, video_url, depth" in error.message


def test_a_modality_the_model_lacks_is_refused(inputs, scratch, image_file):
    audio_only = {"audio": inputs["audio"]}
    error = refused(user(image_part(data_url("image/png", image_file.read_bytes()))), audio_only, scratch)
    assert "this model has no image input" in error.message and "input_audio" in error.message


def test_a_plugin_modality_the_model_lacks_is_refused(inputs, scratch):
    part = {"type": "depth", "depth": {"data": b64(b"x"), "format": "npy"}}
    error = refused(user(part), {"image": inputs["image"]}, scratch)
    assert "this model has no depth input" in error.message


def test_an_input_audio_format_no_loader_reads_is_refused_listing_the_formats(inputs, scratch, wav_file):
    part = {"type": "input_audio", "input_audio": {"data": b64(wav_file.read_bytes()), "format": "aac"}}
    error = refused(user(part), inputs, scratch)
    assert error.param == "messages[0].content[1].input_audio.format" and "wav" in error.message


def test_a_plugin_part_format_must_be_one_of_its_loaders_suffixes(inputs, scratch):
    part = {"type": "depth", "depth": {"data": b64(b"1,2,3"), "format": "csv"}}
    error = refused(user(part), inputs, scratch)
    assert error.param == "messages[0].content[1].depth.format" and "npy, png" in error.message


def test_more_media_items_than_the_limit_are_refused_before_any_is_decoded(inputs, scratch, image_file):
    image = image_part(data_url("image/png", image_file.read_bytes()))
    error = refused(user(*[image] * 17), inputs, scratch)
    assert error.param == "messages[0].content[17]" and error.code == "too_many_items" and "16" in error.message
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("role", ["tool", "function"])
def test_tool_and_function_roles_are_refused(inputs, scratch, role):
    messages = [{"role": "user", "content": "Hi"}, {"role": role, "content": "42", "tool_call_id": "a"}]
    error = refused(messages, inputs, scratch)
    assert error.param == "messages[1].role" and "no tool or function calls" in error.message


def test_an_assistant_message_with_tool_calls_is_refused(inputs, scratch):
    messages = [{"role": "assistant", "content": None, "tool_calls": [{"id": "a"}]}]
    assert refused(messages, inputs, scratch).param == "messages[0].tool_calls"


def test_an_unknown_role_is_refused(inputs, scratch):
    error = refused([{"role": "robot", "content": "Hi"}], inputs, scratch)
    assert error.param == "messages[0].role" and "'system', 'user' or 'assistant'" in error.message


def test_media_in_an_assistant_message_is_refused(inputs, scratch, image_file):
    messages = [{"role": "assistant", "content": [image_part(data_url("image/png", image_file.read_bytes()))]}]
    error = refused(messages, inputs, scratch)
    assert error.param == "messages[0].content[0].type" and "hold text only" in error.message


def test_a_placeholder_in_the_text_is_refused(inputs, scratch):
    error = refused([{"role": "user", "content": "Describe <image> please"}], inputs, scratch)
    assert error.param == "messages[0].content" and "in a image_url part" in error.message


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        (["hello"], "messages[0]"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": []}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], "messages[0].content[0].text"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": 3}]}], "messages[0].content[0].image_url"),
    ],
)
def test_malformed_messages_are_refused_naming_the_field(inputs, scratch, messages, param):
    assert refused(messages, inputs, scratch).param == param


def test_the_messages_feed_a_models_processor(image_model, scratch, image_file):
    inputs = {name: value.spec for name, value in image_model.processor.inputs.items()}
    messages = convert(user(image_part(data_url("image/png", image_file.read_bytes()))), inputs, scratch)
    batch = image_model.processor([messages], add_generation_prompt=True)
    assert batch["input_ids"].shape[0] == 1 and "image" in batch
