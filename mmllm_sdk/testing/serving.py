"""A real server for tests and benchmarks: uvicorn serving an ASGI app on an ephemeral 127.0.0.1 port, in a thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

STARTUP_SECONDS = 30


@contextlib.contextmanager
def running_server(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 and a port the OS picks; yields the base URL (``http://127.0.0.1:N``)
    and stops the server (and its thread) on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_SECONDS)
