"""The test tasks' functions: lmms-eval reads the SDK's messages JSONL, so both tools see the same conversations."""

from pathlib import Path

from PIL import Image

from mmllm_sdk.registry import get_registry

HERE = Path(__file__).parent


def _user_parts(doc):
    return doc["messages"][0]["content"]


def doc_to_visual(doc):
    """The user turn's images as PIL images (what lmms-eval's own tasks hand over), in order."""
    images = []
    for part in _user_parts(doc):
        if part["type"] == "image":
            with Image.open(HERE / part["path"]) as image:
                images.append(image.convert("RGB"))
    return images


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return " ".join(part["text"] for part in _user_parts(doc) if part["type"] == "text")


def doc_to_target(doc):
    """The last assistant turn: the reference of ``mmllm eval``."""
    return doc["messages"][-1]["content"]


def process_results(doc, results):
    """Scored with the SDK's own ``exact`` metric, so both tools normalise answers alike."""
    exact = get_registry().get("metrics", "exact").value
    return {"exact": float(exact(results[0], doc_to_target(doc)))}
