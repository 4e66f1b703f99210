"""Bad input gets an MMLLMError subclass whose message says what was expected, what was found and what to do."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmllm_sdk.default_plugins.modalities import IMAGE
from mmllm_sdk.errors import InputError, MMLLMError, PlaceholderMismatchError


def ask_about(path):
    return [{"role": "user", "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": "What?"}]}]


def test_a_missing_image_file_names_the_path(image_model, tmp_path):
    with pytest.raises(InputError, match=r"The image file '.*nowhere.png' does not exist; check the path"):
        image_model.processor([ask_about(tmp_path / "nowhere.png")])


def test_a_zero_byte_image_says_it_is_empty(image_model, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.png' is empty \(0 bytes\)"):
        image_model.processor([ask_about(tmp_path / "empty.png")])


def test_a_corrupt_image_says_it_cannot_be_read(image_model, tmp_path):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(InputError, match=r"corrupt.jpg' could not be read .* may be corrupt or truncated"):
        image_model.processor([ask_about(tmp_path / "corrupt.jpg")])


def test_a_truncated_image_is_caught_when_loaded(image_file, tmp_path):
    data = image_file.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.png' could not be read"):
        IMAGE.load(tmp_path / "cut.png")


def test_an_unsupported_suffix_lists_the_supported_ones(tmp_path):
    (tmp_path / "picture.heic").write_bytes(b"x")
    with pytest.raises(InputError, match=r"suffix '.heic', which no loader reads; supported: .bmp, .gif"):
        IMAGE.load(tmp_path / "picture.heic")


def test_a_cmyk_image_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    image = IMAGE.load(tmp_path / "cmyk.jpg")
    assert image.mode == "RGB" and image.getpixel((4, 4))[0] > 200  # red stays red


def test_a_16_bit_image_is_scaled_to_8_bits(tmp_path):
    array = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(array).save(tmp_path / "deep.png")
    image = IMAGE.load(tmp_path / "deep.png")
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (0, 0, 0) and image.getpixel((7, 7)) == (255, 255, 255)


def test_a_palette_image_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 1)
    image.info["transparency"] = 0
    image.save(tmp_path / "palette.png", transparency=0)
    loaded = IMAGE.load(tmp_path / "palette.png")
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 0, 0) and loaded.getpixel((3, 3)) == (255, 255, 255)


def test_an_image_array_of_the_wrong_dtype_says_how_to_convert():
    with pytest.raises(InputError, match=r"must be uint8 \(0-255\); got float64"):
        IMAGE.load(np.zeros((4, 4, 3)))


def test_more_placeholders_than_images(image_model, image_file):
    record = {"image": str(image_file), "conversations": [{"from": "human", "value": "<image> and <image>?"}]}
    with pytest.raises(
        PlaceholderMismatchError, match=r"Conversation 0 has 2 <image> placeholder\(s\) but 1 image input\(s\)"
    ):
        image_model.processor([record])


def test_fewer_placeholders_than_images(image_model, image_file):
    record = {
        "image": [str(image_file), str(image_file)],
        "conversations": [{"from": "human", "value": "<image> what?"}],
    }
    with pytest.raises(PlaceholderMismatchError, match=r"has 1 <image> placeholder\(s\) but 2 image input\(s\)"):
        image_model.processor([record])


def test_an_empty_message_list(image_model):
    with pytest.raises(InputError, match="The conversation is empty"):
        image_model.processor([[]])


def test_an_empty_batch(image_model):
    with pytest.raises(InputError, match="empty list of conversations"):
        image_model.processor([])


def test_one_conversation_not_wrapped_in_a_list(image_model):
    with pytest.raises(InputError, match=r"wrap it in another list: processor\(\[messages\]\)"):
        image_model.processor([{"role": "user", "content": "hi"}])


def test_a_modality_the_model_does_not_take(image_model, wav_file):
    conversation = [{"role": "user", "content": [{"type": "audio", "path": str(wav_file)}]}]
    with pytest.raises(
        InputError, match="a content part of type 'audio' cannot be used by this model; it takes: text, image"
    ):
        image_model.processor([conversation])


def test_a_message_without_a_role(image_model):
    with pytest.raises(InputError, match="Message 0 must be a dict with 'role' and 'content'"):
        image_model.processor([[{"content": "hi"}]])


def test_an_image_part_that_points_nowhere(image_model):
    with pytest.raises(InputError, match="says where nothing is; give it 'path'"):
        image_model.processor([[{"role": "user", "content": [{"type": "image"}]}]])


def test_every_error_is_an_mmllm_error():
    assert issubclass(InputError, MMLLMError) and issubclass(PlaceholderMismatchError, InputError)


@pytest.fixture
def http_folder(tmp_path):
    """Serve tmp_path on a loopback port for the duration of a test."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_image_url_is_downloaded_and_read(http_folder, image_file):
    image = IMAGE.load(f"{http_folder}/{image_file.name}")
    assert image.size == (48, 40) and image.mode == "RGB"


def test_a_missing_url_names_the_url(http_folder):
    with pytest.raises(InputError, match=r"The image URL 'http://127.0.0.1:\d+/gone.png' could not be downloaded"):
        IMAGE.load(f"{http_folder}/gone.png")


def test_a_corrupt_download_names_the_url_not_the_temporary_file(http_folder, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"The image file 'http://127.0.0.1:\d+/bad.png' could not be read"):
        IMAGE.load(f"{http_folder}/bad.png")


def test_a_url_content_part_goes_through_the_processor(image_model, http_folder, image_file):
    conversation = [{"role": "user", "content": [{"type": "image", "url": f"{http_folder}/{image_file.name}"}]}]
    assert image_model.processor([conversation])["image"]["pixel_values"].shape == (1, 3, 32, 32)
