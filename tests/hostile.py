"""What the hostile-input test modules share: running a call that must end, within a deadline."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def finishes(function: Callable[[], Any], seconds: float = 20.0) -> BaseException | None:
    """``function()``'s exception (or None), asserting it ends within ``seconds`` (a hang fails, never blocks)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            function()
            outcome.append(None)
        except BaseException as exc:  # handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s"
    return outcome[0]
