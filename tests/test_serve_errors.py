"""What ``mmllm serve`` refuses, each with its status and OpenAI's error object whose message says what to do; an
internal failure is a 500 naming the request id, never a traceback."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

import mmllm_sdk
from mmllm_sdk.default_plugins.serving.app import ServerSettings, build_app
from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.testing import tiny_sd_config, tiny_spec
from mmllm_sdk.testing.serving import running_server

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def served(image_model):
    with running_server(build_app(image_model, ServerSettings(max_request_bytes=4096))) as url:
        yield url


def post(url, body, **headers):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = httpx.post(f"{url}/v1/chat/completions", content=data, headers=headers, timeout=60)
    return reply.status_code, reply.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        (b"{not json", 400, None, "The request body is not valid JSON"),
        ([1, 2], 400, None, "must be a JSON object; got a JSON list"),
        ({"messages": HELLO, "temprature": 0}, 400, "temprature", "is not a known field"),
        ({"messages": []}, 400, "messages", "messages"),
        ({"messages": HELLO, "n": 2}, 400, "n", "one answer per request"),
        ({"messages": HELLO, "tools": [{"type": "function"}]}, 400, "tools", "no tool calls"),
        ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "up to 4"),
        ({"messages": HELLO, "model": "gpt-4o"}, 404, "model", "this server serves 'mmllm'"),
        ({"messages": HELLO, "max_tokens": 10**6}, 400, None, "max_new_tokens"),
    ],
)
def test_a_bad_request_gets_its_status_and_a_message_naming_the_problem(served, body, status, param, message):
    got_status, error = post(served, body)
    assert got_status == status and message in error["message"] and set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param


def test_a_body_over_the_limit_is_refused_with_413(served):
    status, error = post(served, {"messages": [{"role": "user", "content": "x" * 5000}]})
    assert status == 413 and "--max-request-mb" in error["message"]


def test_an_unknown_endpoint_answers_with_the_error_object(served):
    reply = httpx.get(f"{served}/v1/completions", timeout=30)
    assert reply.status_code == 404 and "POST /v1/chat/completions" in reply.json()["error"]["message"]


def test_with_an_api_key_requests_without_it_get_401_and_with_it_an_answer(image_model):
    with running_server(build_app(image_model, ServerSettings(api_key="s3cret"))) as url:
        refused = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="Authorization: Bearer KEY"):
            refused.chat.completions.create(model="mmllm", messages=HELLO, max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            refused.models.list()
        allowed = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert allowed.chat.completions.create(model="mmllm", messages=HELLO, max_tokens=2).choices[0].message


def test_without_an_api_key_the_page_and_api_are_open(served):
    assert httpx.get(f"{served}/v1/models", timeout=30).status_code == 200
    assert httpx.get(f"{served}/", timeout=30).headers["content-type"].startswith("text/html")


def test_an_internal_failure_is_a_500_naming_the_request_id_without_a_traceback(tokenizer_dir, plugin):
    from mmllm_sdk.default_plugins.generators.diffusers import StableDiffusionGenerator

    class Exploding(StableDiffusionGenerator):
        def generate(self, conditioning, **kwargs):
            raise RuntimeError("the generator's own bug")

    class Plugin:
        @hookimpl
        def register_generators(self, register):
            register("image", "sd-exploding", Exploding)

    plugin(Plugin(), "exploding-generator")
    spec = tiny_spec(tokenizer_dir, initializer_range=0.2)
    generator = {"name": "sd-exploding", "params": {"config": tiny_sd_config(), "num_inference_steps": 2}}
    spec["outputs"] = {"image": {"signal_tokens": 2, "output_projector": {"name": "mlp"}, "generator": generator}}
    model = mmllm_sdk.build_model(spec, progress=False)
    model.llm.model.generation_config.sequence_bias = {(model.signal_ids["image"][0],): 100.0}  # it always draws
    with running_server(build_app(model)) as url:
        reply = httpx.post(f"{url}/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4}, timeout=120)
    error = reply.json()["error"]
    assert reply.status_code == 500 and reply.headers["x-request-id"] in error["message"]
    assert "Traceback" not in reply.text and "generator's own bug" not in reply.text
