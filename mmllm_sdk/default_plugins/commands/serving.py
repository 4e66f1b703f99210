"""``mmllm serve``: a checkpoint (or a spec's model) behind an OpenAI-compatible API, with a chat page at ``/``."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path

from mmllm_sdk.default_plugins.commands.options import add_model, add_trust_remote_code, positive
from mmllm_sdk.errors import MMLLMError
from mmllm_sdk.hookspecs import hookimpl

API_KEY_VARIABLE = "MMLLM_API_KEY"  # the key from the environment keeps it off the process list


@hookimpl
def register_commands(cli):
    command = cli.command(
        "serve",
        run_serve,
        help="serve a model behind an OpenAI-compatible API, with a chat page",
        description="Serve CKPT_OR_SPEC at http://HOST:PORT: GET /v1/models, POST /v1/chat/completions (OpenAI's "
        "request and response shapes, streaming included) and a chat page at /. Requests that arrive within the "
        "batch window are answered by one batched generation. Needs the serve extra: pip install 'mmllm-sdk[serve]'.",
    )
    add_model(command)
    command.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    command.add_argument("--port", type=int, default=8000, help="the port (default 8000; 0: one the OS picks)")
    command.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"the key clients must send as 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE}, else none)",
    )
    command.add_argument(
        "--no-auth", action="store_true", help="serve on a non-loopback --host without an API key (not advised)"
    )
    command.add_argument("--model-name", default="mmllm", help="the model id clients name (default mmllm)")
    command.add_argument(
        "--max-batch-size", type=positive(int), default=8, help="the most requests answered at once (default 8)"
    )
    command.add_argument(
        "--batch-window-ms",
        type=float,
        default=10.0,
        help="how long the first waiting request waits for others to share its batch (default 10)",
    )
    command.add_argument(
        "--allowed-media-dir", help="requests may name local files (paths, file:// URLs) under this folder only"
    )
    command.add_argument(
        "--allow-remote-media", action="store_true", help="fetch http(s) media URLs (bounded in size and time)"
    )
    command.add_argument(
        "--max-request-mb", type=positive(float), default=32.0, help="the largest request body (default 32)"
    )
    add_trust_remote_code(command)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    """Check the flags, load the model, then serve until Ctrl-C."""
    if args.batch_window_ms < 0:
        raise MMLLMError(f"--batch-window-ms must be 0 or more; got {args.batch_window_ms:g}.")
    if not is_loopback(args.host) and not args.api_key and not args.no_auth:
        raise MMLLMError(
            f"--host {args.host} accepts connections from other machines, so it needs --api-key KEY (or "
            f"${API_KEY_VARIABLE}); pass --no-auth to serve without one anyway."
        )
    media_dir = Path(args.allowed_media_dir).resolve() if args.allowed_media_dir else None
    if media_dir is not None and not media_dir.is_dir():
        raise MMLLMError(f"--allowed-media-dir {args.allowed_media_dir!r} is not a folder.")
    try:
        import uvicorn

        from mmllm_sdk.default_plugins.serving.app import ServerSettings, build_app
        from mmllm_sdk.default_plugins.serving.media import MediaPolicy
    except ImportError as error:
        raise MMLLMError(
            f"mmllm serve needs the serve extra ({error.name} is missing): pip install 'mmllm-sdk[serve]'."
        ) from None
    from mmllm_sdk.default_plugins.commands.chat import load_any

    if args.no_auth and not args.api_key and not is_loopback(args.host):
        print(
            f"Warning: serving on {args.host} without an API key: anyone who can reach it can use it.", file=sys.stderr
        )
    listening = bind(args.host, args.port)  # a port in use fails before the model loads
    model = load_any(args.model, args.trust_remote_code)
    settings = ServerSettings(
        model_id=args.model_name,
        api_key=args.api_key or None,
        max_request_bytes=int(args.max_request_mb * 2**20),
        media=MediaPolicy(allowed_dir=media_dir, allow_remote=args.allow_remote_media),
        max_batch_size=args.max_batch_size,
        batch_window_ms=args.batch_window_ms,
    )
    host, port = listening.getsockname()[:2]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"Serving {args.model_name!r} on {url} (the chat page: {url}/; Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(build_app(model, settings), log_level="warning"))
    server.run(sockets=[listening])
    # stopped by Ctrl-C or SIGTERM: 130, as an interrupted command exits, also when the signal does not reach Python
    # as KeyboardInterrupt (a process started with SIGINT ignored, which uvicorn still catches)
    return 130 if server.should_exit else 0


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts so that its real port is known (``--port 0``) and a
    port in use is a sentence."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
    except OSError as error:
        raise MMLLMError(f"Cannot listen on {host}:{port} ({error.strerror}); pick another --host or --port.") from None
    return listening
