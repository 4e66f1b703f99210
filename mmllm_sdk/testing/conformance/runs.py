"""The conformance checks of a whole plugin: a short PT run aligns a model with it, and ``mmllm plugins``
finds it through its entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmllm_sdk.registry import get_registry
from mmllm_sdk.testing.conformance.shared import ConformanceError


def caption_loss(model: Any, examples: Sequence[Mapping[str, Any]]) -> float:
    """The model's loss on the answers of ``examples`` (``{"messages": …}`` dicts or bare conversations), in eval
    mode without gradients: compare it before and after a PT run to see that the run aligned something."""
    conversations = [e["messages"] if isinstance(e, Mapping) else e for e in examples]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(**model.processor(conversations), supervised_only=True).loss.item()
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class PTCheck:
    """What :func:`check_pt` measured: the run, and the caption loss before and after it."""

    result: Any  # the TrainResult: .model, .output_dir, .metrics
    loss_before: float
    loss_after: float


def check_pt(
    model_spec: dict[str, Any],
    data: str | os.PathLike[str] | Mapping[str, Any],
    output_dir: str | os.PathLike[str],
    *,
    trainable: Sequence[str] | None = None,
    steps: int = 24,
    learning_rate: float = 3e-2,
    batch_size: int = 4,
    min_drop: float = 0.5,
) -> PTCheck:
    """Check that a short run of the ``pt`` recipe aligns a model: it lowers the caption loss by ``min_drop``.

    ``data`` is a data file or a registered data source (``{"dataset": name, "params": {…}}``);
    ``trainable`` the recipe's trainable components (default: the recipe's, the projectors).
    Besides the loss, every tensor outside the trained components must come out of the run
    unchanged (a frozen encoder or LLM that moved is a defect). Use a tiny LLM with sharp
    logits, ``tiny_spec(..., initializer_range=0.2)``: the default one's loss barely moves.
    """
    import mmllm_sdk
    from mmllm_sdk.model.modeling import build_model

    recipe: dict[str, Any] = {
        "recipe": "pt",
        "model": model_spec,
        "data": {"train": dict(data) if isinstance(data, Mapping) else str(data)},
        "training": {
            "output_dir": str(output_dir),
            "per_device_train_batch_size": batch_size,
            "learning_rate": learning_rate,
            "max_steps": steps,
            "save_strategy": "no",
            "report_to": "none",
            "seed": 0,
            "use_cpu": True,
        },
    }
    if trainable is not None:
        recipe["trainable"] = list(trainable)
    result = mmllm_sdk.train(recipe)
    source = dict(data) if isinstance(data, Mapping) else {"dataset": "files", "params": {"paths": str(data)}}
    entry = get_registry().get("datasets", source["dataset"])  # data files: the built-in ``files`` data source
    examples = entry.build(dict(source.get("params", {}))).examples  # a data source gives the same examples again
    start = build_model(model_spec, progress=False)
    before, after = caption_loss(start, examples), caption_loss(result.model, examples)
    if not after <= before - min_drop:
        raise ConformanceError(
            f"PT lowered the caption loss from {before:.4f} to {after:.4f}, by less than {min_drop}; check that the "
            "encoder's features depend on its input and that gradients reach the trained components (a random LLM "
            "needs initializer_range=0.2 to respond)."
        )
    trained = {name for name, p in result.model.named_parameters() if p.requires_grad}
    initial = dict(start.named_parameters())
    moved = [
        name
        for name, p in result.model.named_parameters()
        if name not in trained and name in initial and not torch.equal(p.detach(), initial[name].detach())
    ]
    if moved:
        raise ConformanceError(f"PT changed frozen tensors: {', '.join(moved[:5])}; frozen components must not train.")
    return PTCheck(result, before, after)


# discovery -------------------------------------------------------------------------------------------------


def check_discovered(
    plugin: str, distribution: str | None = None, registers: Mapping[str, Sequence[str]] | None = None
) -> dict[str, Any]:
    """Check that ``mmllm plugins --json``, in a fresh process, finds ``plugin`` through its entry point.

    ``plugin`` is the entry point's name; ``distribution`` the pip distribution that must
    provide it; ``registers`` maps kinds to names the plugin must register, as the CLI lists
    them (``{"modalities": ["imu"], "encoders": ["imu/imu-patch"]}``). ``MMLLM_LOAD_PLUGINS``
    is cleared for the child, so the default discovery is what is checked. Returns the
    plugin's row.
    """
    env = {key: value for key, value in os.environ.items() if key != "MMLLM_LOAD_PLUGINS"}
    command = [sys.executable, "-m", "mmllm_sdk.cli", "plugins", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        raise ConformanceError(f"'mmllm plugins --json' failed (exit {done.returncode}): {done.stderr.strip()}")
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    row = rows.get(plugin)
    if row is None:
        raise ConformanceError(
            f"plugin {plugin!r} is not among the plugins 'mmllm plugins' finds ({', '.join(rows)}); is the package "
            "installed (pip install -e .), and does its pyproject.toml declare it under [project.entry-points.mmllm]?"
        )
    if row["builtin"]:
        raise ConformanceError(f"plugin {plugin!r} is a built-in, not a plugin found through an entry point.")
    if distribution is not None and row["distribution"] != distribution:
        raise ConformanceError(
            f"plugin {plugin!r} comes from distribution {row['distribution']!r}, not {distribution!r}."
        )
    for kind, names in (registers or {}).items():
        missing = sorted(set(names) - set(row["registers"].get(kind, [])))
        if missing:
            raise ConformanceError(
                f"plugin {plugin!r} does not register {kind} {', '.join(missing)}; it registers {row['registers']}."
            )
    return row
