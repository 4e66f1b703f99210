"""Options several commands share, defined once: a positive number, the model argument, a data source's params,
the opt-in to code from model folders."""

from __future__ import annotations

import argparse
from typing import Any


def positive(kind: type) -> Any:
    """An argparse ``type``: a finite number of ``kind`` above zero, or argparse's usage error (no traceback)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be above 0; got {text}")
        return value

    return parse


def add_trust_remote_code(parser: argparse.ArgumentParser) -> None:
    """``--trust-remote-code``: the per-call opt-in without which a model asking for it is refused."""
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a checkpoint or spec that sets trust_remote_code to run Python code from its model folders or "
        "hub repositories (without it, such a model is refused)",
    )


def add_model(parser: argparse.ArgumentParser) -> None:
    """``CKPT_OR_SPEC``: the model a command loads (``chat.load_any`` reads either)."""
    parser.add_argument(
        "model", metavar="CKPT_OR_SPEC", help="a checkpoint folder (with mmllm.json) or a YAML model spec"
    )


def add_data_params(parser: argparse.ArgumentParser, flag: str = "--data-param", of: str = "DATA") -> None:
    """``--data-param KEY=VALUE`` (repeatable): a param of the registered data source that ``of`` names."""
    parser.add_argument(
        flag,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a param of the data source named by {of} (the value is read as YAML), e.g. {flag} split=heldout",
    )
