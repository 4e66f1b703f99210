"""Sharded training on two CPU processes: DeepSpeed ZeRO-2 under torchrun trains the tensors one process trains with
the same global batch; FSDP, which accelerate runs on GPU-class devices only, is refused on the CPU instead of
silently running as plain DDP."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from training_helpers import recipe, write_conversations, write_images

from mmllm_sdk.default_plugins.recipes.run import train
from mmllm_sdk.errors import SpecError

ZERO_2 = {
    "zero_optimization": {"stage": 2},
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,  # the Trainer's torch SGD, which ZeRO shards like any torch optimizer
}


@pytest.fixture
def conversations(tmp_path):
    return write_conversations(tmp_path, write_images(tmp_path))


def test_deepspeed_zero2_on_two_cpu_processes_trains_what_one_process_trains(tmp_path, tokenizer_dir, conversations):
    # plain SGD: Adam divides each gradient by its own running scale, which turns float noise in a near-zero gradient
    # into a full-size step, so two correct runs summing in different orders could differ by a learning rate
    training = {
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "logging_steps": 1,
        "optim": "sgd",
        "learning_rate": 1.0,
    }
    saved = {"deepspeed": ZERO_2, "save_strategy": "steps", "save_steps": 4}
    spec = recipe(tmp_path, tokenizer_dir, "sft", conversations, training={**training, **saved})
    spec["training"]["output_dir"] = str(tmp_path / "zero2")
    del spec["training"]["use_cpu"]  # as a user writes it: the SDK finds that there is no GPU
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(spec))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "mmllm_sdk.cli", "train", "sft.yaml"]
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}  # DeepSpeed builds its CPU comm op here
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env(env))
    assert done.returncode == 0, done.stderr[-3000:]
    shards = sorted(path.name for path in (tmp_path / "zero2" / "checkpoint-4").rglob("*optim_states.pt"))
    assert len(shards) == 2, shards  # each process saved its own part of the optimizer state: it was sharded

    single = recipe(
        tmp_path, tokenizer_dir, "sft", conversations, training={**training, "per_device_train_batch_size": 4}
    )
    single["training"]["output_dir"] = str(tmp_path / "one")
    train(single)
    zero2, one = (
        load_file(tmp_path / "zero2" / "trainable.safetensors"),
        load_file(tmp_path / "one" / "trainable.safetensors"),
    )
    assert sorted(zero2) == sorted(one) and all(name.startswith("input_projectors.") for name in one)
    for name, tensor in one.items():
        torch.testing.assert_close(zero2[name], tensor, rtol=1e-5, atol=1e-6)  # summed in another order


def test_fsdp_without_a_gpu_is_refused_before_any_weight_loads(tmp_path, tokenizer_dir, conversations):
    spec = recipe(tmp_path, tokenizer_dir, "sft", conversations, training={"fsdp": "full_shard"})
    spec["model"] = str(tmp_path / "absent.yaml")  # never read
    with pytest.raises(
        SpecError,
        match=r"training.fsdp 'full_shard': there is no GPU here, and accelerate shards "
        r"with FSDP only on GPU-class devices .* plain data-parallel \(DDP\)",
    ):
        train(spec)


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, **extra}
