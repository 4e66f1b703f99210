"""A Python process that runs one docs page's python blocks in one namespace, as a reader's session would.

The docs harness (``doc_harness.py``) starts it in the page's folder and sends it JSON requests,
one per line on standard input; each reply is one JSON line on the file descriptor named by
``argv[1]`` (not standard output, which the code under test may write to at the C level).
Requests: ``{"op": "exec", "code": ..., "name": ..., "scope": "page" | "fresh"}``,
``{"op": "plugin", "name": ...}`` (register the page namespace's ``@hookimpl`` functions as a plugin)
and ``{"op": "cli", "argv": [...]}`` (``mmllm ARGV`` in this process, as the console script runs it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
import types


def main() -> None:
    replies = os.fdopen(int(sys.argv[1]), "w", encoding="utf-8")
    page: dict = {"__name__": "__main__"}
    for line in sys.stdin:
        request = json.loads(line)
        captured = io.StringIO()
        reply: dict = {"ok": True}
        try:
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                reply.update(handle(request, page))
        except SystemExit as exc:  # the CLI's exit status
            reply["code"] = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            reply = {"ok": False, "error": traceback.format_exc()}
        reply["output"] = captured.getvalue()
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def handle(request: dict, page: dict) -> dict:
    if request["op"] == "exec":
        scope = page if request.get("scope", "page") == "page" else {"__name__": "__main__"}
        shown: dict[str, str] = {}

        def __shown__(line: int, *args: object, **kwargs: object) -> None:  # print, and keep what it printed
            text = io.StringIO()
            print(*args, **{**kwargs, "file": text})
            sys.stdout.write(text.getvalue())
            shown[str(line)] = text.getvalue()

        scope["__shown__"] = __shown__
        exec(compile(request["code"], request["name"], "exec"), scope)
        return {"shown": shown}
    if request["op"] == "plugin":
        from mmllm_sdk.plugins import register_plugin

        module = types.ModuleType(request["name"])
        module.__dict__.update(page)
        register_plugin(module, request["name"])
        return {}
    if request["op"] == "cli":
        from mmllm_sdk.cli import main as mmllm

        stdin, sys.stdin = sys.stdin, io.StringIO(request.get("stdin", ""))  # never the request pipe
        try:
            return {"code": mmllm(request["argv"])}
        finally:
            sys.stdin = stdin
    raise ValueError(f"unknown request {request['op']!r}")


if __name__ == "__main__":
    main()
