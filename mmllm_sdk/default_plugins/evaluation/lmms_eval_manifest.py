"""Where lmms-eval finds the SDK's model classes: the target of the ``lmms_eval.models`` entry point.

lmms-eval imports every entry point of that group whenever it starts (even ``lmms-eval --help``), so this module
imports neither torch nor the SDK's model code; the classes in :mod:`.lmms_eval` load only when a run names them.
"""

from __future__ import annotations

from typing import Any

MODELS = "mmllm_sdk.default_plugins.evaluation.lmms_eval"


def manifest() -> list[Any]:
    """``--model mmllm``: the simple class (every task type, log-likelihood included); ``--model mmllm_chat``: the
    chat class, for tasks that build their prompts as messages (``doc_to_messages``; generation only)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id="mmllm", simple_class_path=f"{MODELS}.MMLLMLmms"),
        ModelManifest(model_id="mmllm_chat", chat_class_path=f"{MODELS}.MMLLMLmmsChat"),
    ]
