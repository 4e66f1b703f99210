"""Built-in training recipes: pt, sft, dpo and align-output."""

from __future__ import annotations

from mmllm_sdk.hookspecs import hookimpl


@hookimpl
def register_recipes(register):
    from mmllm_sdk.training.recipes import ALIGN_OUTPUT, DPO, PT, SFT

    register("pt", PT)
    register("sft", SFT)
    register("dpo", DPO)
    register("align-output", ALIGN_OUTPUT)
