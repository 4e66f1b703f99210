"""The ``hf-llava`` exporter: a folder that transformers' LlavaForConditionalGeneration loads, with our logits."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmllm_sdk.default_plugins.exporters import refuse_existing, staged_output
from mmllm_sdk.errors import ExportError

if TYPE_CHECKING:
    from mmllm_sdk import MMLLM

# LLaVA's name for each way of selecting vision features (transformers' vision_feature_select_strategy)
SELECT_STRATEGY = {"patch": "default", "cls_patch": "full"}


def llava_state_dict(model: MMLLM) -> tuple[dict[str, torch.Tensor], str]:
    """Our weights under LlavaForConditionalGeneration's names, and the projector activation to declare."""
    from mmllm_sdk.default_plugins.projectors.builtin import LinearProjector, MLPProjector

    encoder, projector = model.encoders["image"], model.input_projectors["image"]
    state = {f"model.vision_tower.{k}": v for k, v in encoder.model.state_dict().items()}
    if isinstance(projector, MLPProjector):
        state.update({f"model.multi_modal_projector.{k}": v for k, v in projector.state_dict().items()})
        activation = "gelu"
    elif isinstance(projector, LinearProjector):  # ours as linear_1; identity activation and linear_2 keep it exact
        eye = torch.eye(projector.out_dim, dtype=projector.linear.weight.dtype)
        state["model.multi_modal_projector.linear_1.weight"] = projector.linear.weight
        state["model.multi_modal_projector.linear_1.bias"] = projector.linear.bias
        state["model.multi_modal_projector.linear_2.weight"] = eye
        state["model.multi_modal_projector.linear_2.bias"] = torch.zeros(projector.out_dim, dtype=eye.dtype)
        activation = "linear"
    else:
        raise ExportError(f"The {type(projector).__name__} projector has no LLaVA equivalent; use 'linear' or 'mlp'.")
    for key, value in merged_llm_state(model.llm).items():
        if key.startswith("model."):
            state[f"model.language_model.{key.removeprefix('model.')}"] = value
        elif key.startswith("lm_head."):
            state[key] = value
        else:
            raise ExportError(
                f"The LLM's weight {key!r} has no place in a LLaVA model (expected 'model.*' and 'lm_head.*')."
            )
    return state, activation


def merged_llm_state(llm: Any) -> dict[str, torch.Tensor]:
    """The LLM's weights under its base model's names, its peft adapters merged in: LoRA's scaled B·A added to each
    targeted weight, LN tuning's trained norms in place of the originals.

    Each adapted layer is merged by peft in a copy of that layer, so the model in memory is not changed; the merged
    copies of the adapted layers are held beside it until the export is written.
    """
    from mmllm_sdk.model.peft import has_adapters

    if not has_adapters(llm):
        return llm.model.state_dict()
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = llm.model.get_base_model()
    state, adapted = {}, ()
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, BaseTunerLayer) and not name.startswith(adapted):
                layer = copy.deepcopy(module)
                layer.merge()
                state.update({f"{name}.{k}": v for k, v in layer.get_base_layer().state_dict().items()})
                adapted += (f"{name}.",)
    state.update({k: v for k, v in base.state_dict().items() if not k.startswith(adapted)})
    return state


def check_exportable(model: MMLLM) -> None:
    """A LLaVA model has exactly: a CLIP vision tower, a linear or 2-layer mlp projector and a causal LM."""
    from transformers import CLIPVisionModel

    from mmllm_sdk.default_plugins.projectors.builtin import LinearProjector, MLPProjector

    problems = []
    if set(model.encoders) != {"image"}:
        problems.append(f"it must have exactly one input, 'image' (it has: {', '.join(model.encoders) or 'none'})")
    else:
        encoder, projector = model.encoders["image"], model.input_projectors["image"]
        if not isinstance(getattr(encoder, "model", None), CLIPVisionModel):
            problems.append(
                f"the image encoder must be hf-clip-vision (it is {model.spec.inputs['image'].encoder.name})"
            )
        is_mlp = isinstance(projector, MLPProjector) and projector.params.num_layers == 2
        if not (is_mlp or isinstance(projector, LinearProjector)):
            problems.append(
                f"the projector must be 'linear' or a 2-layer 'mlp' (it is {model.spec.inputs['image'].projector.name})"
            )
    if model.signal_ids:
        problems.append(
            f"it generates {', '.join(model.signal_ids)} (an outputs section), and LLaVA has no output side; export "
            "is for understanding models"
        )
    peft = getattr(model.llm.model, "active_peft_config", None)
    if peft is not None and peft.is_prompt_learning:
        problems.append(
            f"its LLM is trained with {peft.peft_type.value.lower().replace('_', ' ')} (llm.peft), whose virtual "
            "key/value tokens have no place in a LlavaForConditionalGeneration, which has no prefix; train with "
            "llm.peft method 'lora' or 'ln-tuning' (merged into the export)"
        )
    if not hasattr(model.llm.model, "lm_head") or not hasattr(model.llm.model, "model"):
        problems.append("the LLM must be a decoder-only causal LM with 'model' and 'lm_head' (Llama, Mistral, Qwen2 …)")
    if problems:
        raise ExportError("This model cannot be exported as hf-llava: " + "; ".join(problems) + ".")


def export_hf_llava(model: MMLLM, output_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``output_dir`` so that ``LlavaForConditionalGeneration.from_pretrained(output_dir)`` gives our logits.

    The image placeholder id becomes ``image_token_id``, so ``model.processor``'s
    ``input_ids`` feed the exported model unchanged. A ``LlavaProcessor`` (tokenizer, image
    processor, chat template) is saved beside the weights (safetensors), so
    ``AutoProcessor.from_pretrained(output_dir)`` works too. LoRA or LN-tuning adapters (``llm.peft``) are merged
    into the LLM's weights; ``model`` itself is not changed. An existing ``output_dir`` (a file, a symlink, a folder
    that is not empty) is an ExportError unless ``overwrite``; then it is replaced atomically.
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    check_exportable(model)
    refuse_existing(output_dir, overwrite)  # before the work: staged_output checks again at the end
    encoder = model.encoders["image"]
    state, activation = llava_state_dict(model)
    text_config = model.llm.model.config
    config = LlavaConfig(
        vision_config=encoder.model.config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=model.placeholder_ids["image"],
        image_seq_length=model.input_projectors["image"].num_tokens,
        vision_feature_layer=encoder.feature_layer,
        vision_feature_select_strategy=SELECT_STRATEGY[encoder.params.select],
        projector_hidden_act=activation,
        multimodal_projector_bias=True,
        tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False),
    )
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config)
    expected = set(llava.state_dict())
    missing = sorted(expected - set(state) - _tied_keys(llava))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ExportError(f"The LLaVA weights do not line up: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    llava.load_state_dict(state, strict=False, assign=True)
    llava.tie_weights()
    llava.eval()

    with staged_output(output_dir, overwrite=overwrite) as staging:
        llava.save_pretrained(staging)
        llava_processor(model).save_pretrained(staging)
    return Path(output_dir).resolve()


def llava_processor(model: MMLLM) -> Any:
    """A LlavaProcessor that expands ``<image>`` exactly as our processor does (same ids, same pixels)."""
    from transformers import LlavaProcessor

    encoder = model.encoders["image"]
    tokenizer = model.llm.tokenizer
    return LlavaProcessor(
        image_processor=encoder.image_processor,
        tokenizer=tokenizer,
        patch_size=encoder.model.config.patch_size,
        vision_feature_select_strategy=SELECT_STRATEGY[encoder.params.select],
        num_additional_image_tokens=encoder.prefix_tokens,  # CLIP's CLS token
        image_token=model.processor.inputs["image"].spec.placeholder,
        chat_template=tokenizer.chat_template,
    )


def _tied_keys(model: torch.nn.Module) -> set[str]:
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    return {"lm_head.weight"}
