"""The OpenAI chat-completions protocol as the server speaks it: the request it validates, the responses and
stream chunks it builds, and the error object every failure becomes."""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import Field, ValidationError, field_validator

from mmllm_sdk.errors import MMLLMError
from mmllm_sdk.validation import StrictModel, describe_validation_error

MAX_STOP_STRINGS, MAX_STOP_CHARS = 4, 200  # OpenAI allows up to 4 stop sequences
DEFAULT_MAX_TOKENS = 256  # new tokens when a request names no max_tokens (the context bounds it further)


class APIError(MMLLMError):
    """A failure the API answers with: its HTTP status and OpenAI's error object (``message``, ``type``,
    ``param``: the JSON path of the field at fault, ``code``)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # OpenAI's field name
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(StrictModel):
    include_usage: bool = False  # usage is in the last chunk whatever this says


class ChatRequest(StrictModel):
    """``POST /v1/chat/completions``: the fields OpenAI defines. Those the server cannot honour are refused with a
    400 that says so (``n`` > 1, tools, log-probabilities, penalties, a JSON response format) rather than ignored;
    ``user``, ``store``, ``metadata`` and ``service_tier`` are accepted and ignored."""

    messages: list[dict[str, Any]] = Field(min_length=1)  # each checked by the media module
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = Field(None, validate_default=True)  # up to 4 strings; the answer ends before one
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    modalities: list[str] | None = None
    user: str | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_STRINGS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(
                f"stop takes up to {MAX_STOP_STRINGS} non-empty strings of at most {MAX_STOP_CHARS} characters"
            )
        return stops

    def refuse_unsupported(self) -> None:
        """A 400 for each asked-for feature the server does not have, naming the field and what to send."""
        unsupported = [
            ("n", self.n > 1, "one answer per request; send n=1 (or several requests)"),
            ("tools", bool(self.tools or self.functions), "no tool calls; leave out tools and functions"),
            ("tool_choice", self.tool_choice not in (None, "none"), "no tool calls; leave out tool_choice"),
            ("logprobs", bool(self.logprobs or self.top_logprobs), "no log-probabilities; leave out logprobs"),
            ("presence_penalty", self.presence_penalty != 0, "no penalties; send 0 or leave it out"),
            ("frequency_penalty", self.frequency_penalty != 0, "no penalties; send 0 or leave it out"),
            ("logit_bias", bool(self.logit_bias), "no logit_bias; leave it out"),
            ("response_format", (self.response_format or {"type": "text"}).get("type") != "text", "text only"),
        ]
        for field, asked, answer in unsupported:
            if asked:
                raise APIError(400, f"{field}: this server gives {answer}.", param=field, code="unsupported")


def parse_request(body: Any) -> ChatRequest:
    """The request body as a :class:`ChatRequest`, or a 400 naming each wrong field and what fits."""
    if not isinstance(body, dict):
        raise APIError(400, f"The request body must be a JSON object; got a JSON {type(body).__name__}.")
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise APIError(400, describe_validation_error(error, ChatRequest), param=param) from None
    request.refuse_unsupported()
    return request


def new_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    request_id: str, model: str, message: dict[str, Any], finish_reason: str, counts: dict[str, int]
) -> dict[str, Any]:
    """A whole ``chat.completion`` object: one choice holding ``message``, and the usage."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": counts,
    }


def chunk(
    request_id: str,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of a stream; the last carries the finish reason and the usage."""
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    if counts is not None:
        body["usage"] = counts
    return body
