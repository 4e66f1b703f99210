"""Which process of a launch talks: one set of lines for the person running the job, not one per process."""

from __future__ import annotations

import os
import sys


def is_main_process() -> bool:
    """True in a plain run and in the first process of a torchrun / accelerate launch (the one that talks)."""
    return int(os.environ.get("RANK", "0")) == 0


def say(line: str) -> None:
    """A line for the person running the job, on standard error, once per torchrun launch."""
    if is_main_process():
        print(line, file=sys.stderr, flush=True)
