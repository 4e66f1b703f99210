"""Built-in training recipes: pt, sft and dpo."""

from __future__ import annotations

from mmllm_sdk.hookspecs import hookimpl


@hookimpl
def register_recipes(register):
    from mmllm_sdk.training.recipes import DPO, PT, SFT

    register("pt", PT)
    register("sft", SFT)
    register("dpo", DPO)
