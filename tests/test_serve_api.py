"""``mmllm serve``'s API, driven by the official ``openai`` client against a real uvicorn server on 127.0.0.1:
answers equal the model's own, streamed or not, for text, images, audio and a plugin modality, with usage."""

from __future__ import annotations

import base64
import io
import logging
import time

import numpy as np
import openai
import pytest

import mmllm_sdk
from mmllm_sdk.default_plugins.serving.app import ServerSettings, build_app
from mmllm_sdk.default_plugins.serving.media import MediaPolicy
from mmllm_sdk.testing import tiny_spec
from mmllm_sdk.testing.serving import running_server

QUESTION = "What is in the picture?"


def client(url, key="none"):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def data_url(path, mime):
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def served_answer(model, content, max_tokens=5):
    """``model``'s greedy answer to one user turn, asked of a server of its own."""
    with running_server(build_app(model)) as url:
        return client(url).chat.completions.create(
            model="mmllm", messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0
        )


def greedy(model, content, max_new_tokens=6):
    """What the model answers by itself: the reference every served answer must equal."""
    return model.generate_batch([[{"role": "user", "content": content}]], max_new_tokens=max_new_tokens)[0]


@pytest.fixture
def served(image_model, tmp_path):
    with running_server(build_app(image_model, ServerSettings(media=MediaPolicy(allowed_dir=tmp_path)))) as url:
        yield url


def test_a_plain_answer_is_the_models_greedy_answer_with_its_usage(served, image_model):
    reply = client(served).chat.completions.create(
        model="mmllm", messages=[{"role": "user", "content": "Hello there"}], max_tokens=6, temperature=0
    )
    expected = greedy(image_model, "Hello there")
    assert reply.choices[0].message.content == expected.text and reply.object == "chat.completion"
    assert reply.usage.prompt_tokens == expected.prompt_tokens > 0
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_a_streamed_answer_joins_to_the_plain_answer_and_ends_with_usage(served):
    asked = {"model": "mmllm", "messages": [{"role": "user", "content": "Tell me"}], "max_tokens": 8, "temperature": 0}
    plain = client(served).chat.completions.create(**asked)
    chunks = list(client(served).chat.completions.create(**asked, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant" and len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_an_image_part_is_answered_as_the_model_answers_that_image(served, image_model, image_file):
    content = [
        {"type": "image_url", "image_url": {"url": data_url(image_file, "image/png")}},
        {"type": "text", "text": QUESTION},
    ]
    reply = client(served).chat.completions.create(
        model="mmllm", messages=[{"role": "user", "content": content}], max_tokens=6, temperature=0
    )
    expected = greedy(image_model, [{"type": "image", "path": str(image_file)}, {"type": "text", "text": QUESTION}])
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.prompt_tokens == expected.prompt_tokens  # the image's soft tokens counted


def test_an_audio_part_reaches_an_audio_model(tokenizer_dir, wav_file):
    model = mmllm_sdk.build_model(tiny_spec(tokenizer_dir, inputs=("audio",)), progress=False)
    audio = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(wav_file.read_bytes()).decode(), "format": "wav"},
    }
    reply = served_answer(model, [audio, {"type": "text", "text": "What sound?"}])
    expected = greedy(model, [{"type": "audio", "path": str(wav_file)}, {"type": "text", "text": "What sound?"}], 5)
    assert reply.choices[0].message.content == expected.text


def test_a_plugin_modality_part_is_read_by_its_own_loaders(tokenizer_dir, tmp_path):
    from mmllm_sdk.testing import tiny_clip_vision_config

    encoder = {"name": "depth-vit", "params": {"config": tiny_clip_vision_config()}}
    model = mmllm_sdk.build_model(tiny_spec(tokenizer_dir, encoders={"depth": encoder}), progress=False)
    depth = (np.linspace(500, 4000, 32 * 32).reshape(32, 32)).astype(np.uint16)
    buffer = io.BytesIO()
    np.save(buffer, depth)
    (tmp_path / "d.npy").write_bytes(buffer.getvalue())
    part = {"type": "depth", "depth": {"data": base64.b64encode(buffer.getvalue()).decode(), "format": "npy"}}
    reply = served_answer(model, [part, {"type": "text", "text": "How far?"}])
    with running_server(build_app(model)) as url:
        listed = client(url).models.list().data[0]
    expected = greedy(
        model, [{"type": "depth", "path": str(tmp_path / "d.npy")}, {"type": "text", "text": "How far?"}], 5
    )
    assert reply.choices[0].message.content == expected.text
    assert listed.id == "mmllm" and listed.modalities == {"input": ["text", "depth"], "output": ["text"]}


def test_an_any_to_any_answer_carries_its_generated_image_as_a_png_data_url(drawing_model):
    from PIL import Image

    reply = served_answer(drawing_model("image"), "Draw a circle.", max_tokens=6)
    url = reply.choices[0].message.model_extra["images"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
        assert image.format == "PNG" and image.width > 0


def test_generated_audio_is_in_openais_audio_shape(drawing_model):
    import wave

    reply = served_answer(drawing_model("audio"), "Play a tone.", max_tokens=6)
    audio = reply.choices[0].message.audio
    with wave.open(io.BytesIO(base64.b64decode(audio.data))) as clip:
        assert clip.getnframes() > 0
    assert audio.id.startswith("audio-") and audio.transcript == reply.choices[0].message.content


def test_a_streamed_any_to_any_answer_brings_its_image_in_the_last_chunk(drawing_model):
    model = drawing_model("image")
    with running_server(build_app(model)) as url:
        chunks = list(
            client(url).chat.completions.create(
                model="mmllm", messages=[{"role": "user", "content": "Draw."}], max_tokens=6, temperature=0, stream=True
            )
        )
    last = chunks[-1].choices[0].delta.model_extra
    assert last["images"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert chunks[-1].usage.completion_tokens > 0


def test_each_request_gets_one_log_line_with_its_id_status_and_tokens(served, caplog):
    with caplog.at_level(logging.INFO, logger="mmllm.serve"):
        raw = client(served).chat.completions.with_raw_response.create(
            model="mmllm", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0
        )
        request_id = raw.headers["x-request-id"]
        lines = lambda: [r.getMessage() for r in caplog.records if request_id in r.getMessage()]  # noqa: E731
        deadline = time.monotonic() + 30
        while not lines() and time.monotonic() < deadline:  # the server logs once the response is sent
            time.sleep(0.05)
    assert len(lines()) == 1 and " POST /v1/chat/completions 200 prompt_tokens=" in lines()[0]


def test_a_stop_string_ends_the_answer_before_it_streamed_or_not(served):
    asked = {"model": "mmllm", "messages": [{"role": "user", "content": "Go on"}], "max_tokens": 10, "temperature": 0}
    whole = client(served).chat.completions.create(**asked).choices[0].message.content
    stop = whole[len(whole) // 2 : len(whole) // 2 + 2]
    plain = client(served).chat.completions.create(**asked, stop=[stop]).choices[0]
    chunks = list(client(served).chat.completions.create(**asked, stop=[stop], stream=True))
    assert plain.message.content == whole[: whole.index(stop)] and plain.finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
