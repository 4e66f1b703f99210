"""The server's ASGI app: ``/v1/models`` and ``/v1/chat/completions`` in OpenAI's shapes, the chat page at ``/``,
an API key when one is set, bounded request bodies, one log line per request, and errors as OpenAI's error object
(never a traceback)."""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mmllm_sdk.default_plugins.serving.batching import Answer, Batcher, Options
from mmllm_sdk.default_plugins.serving.media import MediaPolicy, to_messages
from mmllm_sdk.default_plugins.serving.protocol import (
    DEFAULT_MAX_TOKENS,
    APIError,
    ChatRequest,
    chunk,
    completion,
    new_id,
    parse_request,
    usage,
)
from mmllm_sdk.errors import MMLLMError
from mmllm_sdk.files import check_depth

STATIC = Path(__file__).parent / "static"
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".wav": "audio/wav", ".mp4": "video/mp4"}
log = logging.getLogger("mmllm.serve")


@dataclass
class ServerSettings:
    """What ``mmllm serve``'s flags set."""

    model_id: str = "mmllm"
    api_key: str | None = None  # clients send "Authorization: Bearer KEY"; None: no key asked
    max_request_bytes: int = 32 * 2**20
    media: MediaPolicy = field(default_factory=MediaPolicy)
    max_batch_size: int = 8
    batch_window_ms: float = 10.0


def build_app(model: Any, settings: ServerSettings | None = None) -> Starlette:
    """The app serving ``model``; ``app.state.batcher`` is its worker (``calls``: generation calls so far)."""
    settings = settings or ServerSettings()
    server = _Server(model, settings)
    routes = [
        Route("/", server.page),
        Route("/health", server.health),
        Route("/v1/models", server.models),
        Route("/v1/models/{model_id:path}", server.model),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {APIError: _api_error, HTTPException: _http_error, Exception: _internal_error}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        server.batcher.close()  # the worker thread ends with the server

    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.batcher = server.batcher
    return RequestLog(app, settings)


class _Server:
    def __init__(self, model: Any, settings: ServerSettings) -> None:
        self.model, self.settings = model, settings
        self.batcher = Batcher(model, max_batch_size=settings.max_batch_size, window_ms=settings.batch_window_ms)
        self.inputs = {name: value.spec for name, value in model.processor.inputs.items()}
        room = model.llm.max_positions
        self.default_tokens = DEFAULT_MAX_TOKENS if room is None else min(DEFAULT_MAX_TOKENS, max(room // 4, 1))

    # pages and listings -------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def card(self) -> dict[str, Any]:
        return {
            "id": self.settings.model_id,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "mmllm-sdk",
            "modalities": {"input": ["text", *self.inputs], "output": ["text", *self.model.output_heads]},
        }

    async def models(self, request: Request) -> Response:
        self.authorise(request)
        return JSONResponse({"object": "list", "data": [self.card()]})

    async def model(self, request: Request) -> Response:
        self.authorise(request)
        self.known(request.path_params["model_id"], "model_id")
        return JSONResponse(self.card())

    # chat completions ---------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        self.authorise(request)
        chat = parse_request(await self.body(request))
        if chat.model is not None:
            self.known(chat.model, "model")
        scratch = tempfile.TemporaryDirectory(prefix="mmllm-request-")
        try:
            messages = await run_in_threadpool(
                to_messages, chat.messages, self.inputs, self.settings.media, Path(scratch.name)
            )
            options = Options(
                chat.max_completion_tokens or chat.max_tokens or self.default_tokens,
                chat.temperature,
                chat.top_p,
                chat.seed,
            )
            request_id = completion_id(request)
            if chat.stream:
                events = self.events(request, chat, messages, options, scratch)
                scratch = None  # the stream owns it now
                return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            answer = await _answered(self.batcher.answer(messages, options))
        finally:
            if scratch is not None:
                scratch.cleanup()
        text, finished = cut(answer.response.text, chat.stop, answer.finished)
        counts = usage(answer.response.prompt_tokens, len(answer.response.token_ids))
        request.state.tokens = counts
        return JSONResponse(completion(request_id, self.settings.model_id, message(text, answer), finished, counts))

    async def events(
        self, request: Request, chat: ChatRequest, messages: list[dict[str, Any]], options: Options, scratch: Any
    ) -> AsyncIterator[str]:
        """The server-sent events of a streamed answer: a role chunk, text chunks, a last chunk with the finish
        reason, any generated items and the usage, then ``[DONE]``. An error after the first byte is sent as an
        error event (the status is already 200)."""
        request_id, model_id = completion_id(request), self.settings.model_id
        stream = self.batcher.stream(messages, options)
        try:
            yield sse(chunk(request_id, model_id, {"role": "assistant", "content": ""}))
            text, sent, stopped = "", 0, False
            async for piece in stream:
                if stopped:
                    continue  # generation ends at its next token
                text += piece
                kept, finished = cut(text, chat.stop, None)
                stopped = finished == "stop"
                safe = len(kept) if stopped else len(kept) - held_back(kept, chat.stop)
                if safe > sent:
                    yield sse(chunk(request_id, model_id, {"content": kept[sent:safe]}))
                    sent = safe
                if stopped:
                    stream.stop()
            answer = await _answered(stream.answer())
            final, finished = cut(answer.response.text, chat.stop, answer.finished)
            final = final if not stopped else kept
            delta = {key: value for key, value in message(final[sent:], answer).items() if key != "role"}
            counts = usage(answer.response.prompt_tokens, len(answer.response.token_ids))
            request.state.tokens = counts
            yield sse(chunk(request_id, model_id, delta, "stop" if stopped else finished, counts))
            yield "data: [DONE]\n\n"
        except APIError as error:
            request.state.stream_error = error.status
            yield sse(error.body())
        except Exception:
            log.exception("request %s failed while streaming", request.state.request_id)
            request.state.stream_error = 500
            yield sse(internal_error(request.state.request_id).body())
        finally:
            stream.stop()
            scratch.cleanup()

    # checks -------------------------------------------------------------------------------------------

    def authorise(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(
                401,
                "This server needs an API key: send the header 'Authorization: Bearer KEY' (the openai client's "
                "api_key) with the key mmllm serve was started with.",
                code="invalid_api_key",
            )

    def known(self, name: str, param: str) -> None:
        if name != self.settings.model_id:
            raise APIError(
                404,
                f"The model {name!r} is not served here; this server serves {self.settings.model_id!r}.",
                param=param,
                code="model_not_found",
            )

    async def body(self, request: Request) -> Any:
        """The JSON body, refused (413) past ``max_request_bytes`` before it is all read."""
        limit = self.settings.max_request_bytes
        too_big = APIError(
            413,
            f"The request body is over {limit / 2**20:g} MB, the limit of this server (--max-request-mb); send "
            "smaller or fewer media items.",
            code="request_too_large",
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > limit:
                raise too_big
        try:
            body = json.loads(data)
            check_depth(body, "the request body")
        except (ValueError, MMLLMError) as error:
            raise APIError(400, f"The request body is not valid JSON: {error}.") from None
        return body


async def _answered(awaitable: Any) -> Answer:
    """The worker's answer; an SDK error from generation (a prompt too long for the context …) is a 400."""
    try:
        return await awaitable
    except APIError:
        raise
    except MMLLMError as error:
        raise APIError(400, str(error)) from None


def completion_id(request: Request) -> str:
    """The answer's id: ``chatcmpl-`` and the hex of the request id its log line and ``x-request-id`` show."""
    return "chatcmpl-" + request.state.request_id.removeprefix("req-")


def cut(text: str, stops: list[str], finished: str | None) -> tuple[str, str | None]:
    """``text`` up to the first stop string in it (finished "stop"), else all of it (``finished`` as given)."""
    ends = [text.index(stop) for stop in stops if stop in text]
    return (text[: min(ends)], "stop") if ends else (text, finished)


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string (not streamed yet)."""
    return max((n for stop in stops for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)


def message(text: str, answer: Answer) -> dict[str, Any]:
    """The assistant message: its text, generated images as ``image_url`` data URLs in ``images``, generated audio
    in OpenAI's ``audio`` shape, and any other modality's items under ``outputs``."""
    body: dict[str, Any] = {"role": "assistant", "content": text}
    for modality, items in answer.items.items():
        encoded = [(suffix, base64.b64encode(data).decode("ascii")) for suffix, data in items]
        if modality == "image":
            mime = lambda suffix: MIME.get(suffix, "application/octet-stream")  # noqa: E731
            body["images"] = [
                {"type": "image_url", "image_url": {"url": f"data:{mime(suffix)};base64,{data}"}}
                for suffix, data in encoded
            ]
        elif modality == "audio":
            suffix, data = encoded[0]
            body["audio"] = {
                "id": new_id("audio"),
                "data": data,
                "format": suffix.lstrip("."),
                "expires_at": int(time.time()) + 3600,
                "transcript": text,
            }
        else:
            body.setdefault("outputs", {})[modality] = [{"data": d, "format": s.lstrip(".")} for s, d in encoded]
    return body


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def internal_error(request_id: str) -> APIError:
    return APIError(
        500,
        f"The server failed on request {request_id}; its log has the details under that id.",
        type="server_error",
        code="internal_error",
    )


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, APIError)
    return JSONResponse(error.body(), status_code=error.status)


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's own refusals (an unknown path, a wrong method) in OpenAI's error shape."""
    assert isinstance(error, HTTPException)
    what = {404: "There is no such endpoint", 405: "This endpoint does not take that method"}.get(
        error.status_code, str(error.detail)
    )
    message = f"{what}: {request.method} {request.url.path}. The API is GET /v1/models and POST /v1/chat/completions."
    return JSONResponse(APIError(error.status_code, message).body(), status_code=error.status_code)


async def _internal_error(request: Request, error: Exception) -> Response:
    request_id = request.state.request_id
    log.error("request %s failed", request_id, exc_info=error)
    return JSONResponse(internal_error(request_id).body(), status_code=500)


class RequestLog:
    """ASGI middleware: a request id for each request (``x-request-id``), errors as OpenAI's error object, and
    one log line per request: id, method, path, status, tokens, seconds."""

    def __init__(self, app: Starlette, settings: ServerSettings) -> None:
        self.app, self.settings = app, settings
        self.state = app.state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, started, status = new_id("req"), time.perf_counter(), [0]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id

        async def sending(event: dict[str, Any]) -> None:
            if event["type"] == "http.response.start":
                status[0] = event["status"]
                event["headers"] = [*event.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(event)

        try:
            await self.app(scope, receive, sending)
        except Exception:  # answered with a 500 by the app's handler, which logged it; the server need not see it
            if not status[0]:
                await JSONResponse(internal_error(request_id).body(), status_code=500)(scope, receive, sending)
        finally:
            tokens = state.get("tokens") or {}
            log.info(
                "%s %s %s %s prompt_tokens=%s completion_tokens=%s %.3fs",
                request_id,
                scope["method"],
                scope["path"],
                state.get("stream_error", status[0]),
                tokens.get("prompt_tokens", "-"),
                tokens.get("completion_tokens", "-"),
                time.perf_counter() - started,
            )
