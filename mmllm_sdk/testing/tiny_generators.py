"""Tiny random diffusers pipelines, as ``config:`` params of the built-in generators, for offline tests.

``{"config": tiny_sd_config(), "num_inference_steps": 2}`` is a ``diffusers-sd`` generator
making 32x32 images from (B, 16, 16) conditioning; ``tiny_audioldm_config()`` a
``diffusers-audioldm`` one making 64-sample clips at 16 kHz from (B, 1, 8) conditioning.
Both generate in a few hundredths of a second on a CPU. Without a ``tokenizer`` folder the
generators build a byte-level tokenizer in memory (every byte a token), deterministic and offline;
its sizes below are what the text encoders' configs must hold (the generators check them when
they are built).
"""

from __future__ import annotations

from typing import Any

# The byte-level tokenizers of the built-in generators (no merges: every byte is one token):
BYTE_CLIP_VOCAB_SIZE = 514  # diffusers-sd: 256 bytes, 256 bytes ending a word ("</w>"), <|startoftext|>, <|endoftext|>
BYTE_ROBERTA_VOCAB_SIZE = 261  # diffusers-audioldm: <s>, <pad>, </s>, <unk>, 256 bytes, <mask>
BYTE_ROBERTA_PAD_ID = 1  # RoBERTa's <pad>; the CLAP text config's pad_token_id must match it

TINY_TEXT_TOKENS = 16  # captions are padded to 16 tokens (num_tokens of the SD conditioning)
TINY_SD_TEXT_DIM = 16  # CLIP hidden size: the SD conditioning's dim and the UNet's cross-attention width
TINY_CLAP_DIM = 8  # CLAP projection_dim: the AudioLDM conditioning's dim


def tiny_sd_config(tokenizer: str | None = None) -> dict[str, Any]:
    """A Stable Diffusion pipeline on 32x32 images: an 8x8x4 latent (VAE scale 4), a two-block UNet, one CLIP layer.

    ``tokenizer``: a CLIP tokenizer folder (None: the byte-level one, 514 tokens).
    """
    return {
        "unet": {
            "sample_size": 8,  # latent side; x4 (the VAE's scale) = 32-pixel images
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": [8, 16],
            "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "cross_attention_dim": TINY_SD_TEXT_DIM,
            "attention_head_dim": 2,
            "norm_num_groups": 4,
        },
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 4,
            "block_out_channels": [8, 8, 8],  # three blocks: two downsamplings, scale 4
            "layers_per_block": 1,
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "norm_num_groups": 4,
            "sample_size": 32,
        },
        "text_encoder": {
            "vocab_size": BYTE_CLIP_VOCAB_SIZE,
            "hidden_size": TINY_SD_TEXT_DIM,
            "intermediate_size": 2 * TINY_SD_TEXT_DIM,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": TINY_TEXT_TOKENS,  # the byte-level tokenizer pads to this length
            "projection_dim": TINY_SD_TEXT_DIM,
            "bos_token_id": BYTE_CLIP_VOCAB_SIZE - 2,
            "eos_token_id": BYTE_CLIP_VOCAB_SIZE - 1,
            "pad_token_id": BYTE_CLIP_VOCAB_SIZE - 1,
        },
        "tokenizer": tokenizer,
    }


def tiny_audioldm_config(tokenizer: str | None = None) -> dict[str, Any]:
    """An AudioLDM pipeline making 64 samples at 16 kHz: 16 frames x 8 mel bins, a 4x vocoder, one CLAP layer.

    ``tokenizer``: a RoBERTa tokenizer folder (None: the byte-level one, 261 tokens).
    """
    return {
        "unet": {
            "sample_size": 8,  # latent frames; x2 (the VAE's scale) = 16 mel frames, x4 (the vocoder) = 64 samples
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": [8, 16],
            "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "cross_attention_dim": [8, 16],  # AudioLDM's attention has no text: it attends to the block itself
            "attention_head_dim": 2,
            "norm_num_groups": 4,
            "class_embed_type": "simple_projection",  # the CLAP embedding enters as the class embedding
            "projection_class_embeddings_input_dim": TINY_CLAP_DIM,
            "class_embeddings_concat": True,
        },
        "vae": {
            "in_channels": 1,
            "out_channels": 1,
            "latent_channels": 4,
            "block_out_channels": [8, 8],  # two blocks: one downsampling, scale 2
            "layers_per_block": 1,
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2,
            "norm_num_groups": 4,
            "sample_size": 16,
        },
        "text_encoder": {
            "vocab_size": BYTE_ROBERTA_VOCAB_SIZE,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": TINY_TEXT_TOKENS + BYTE_ROBERTA_PAD_ID + 1,  # positions start after the pad id
            "type_vocab_size": 1,
            "projection_dim": TINY_CLAP_DIM,
            "pad_token_id": BYTE_ROBERTA_PAD_ID,
            "bos_token_id": 0,
            "eos_token_id": 2,
        },
        "vocoder": {
            "model_in_dim": 8,  # mel bins, a multiple of the VAE's scale
            "sampling_rate": 16000,
            "upsample_initial_channel": 16,
            "upsample_rates": [2, 2],
            "upsample_kernel_sizes": [4, 4],
            "resblock_kernel_sizes": [3],
            "resblock_dilation_sizes": [[1, 3]],
            "normalize_before": False,
        },
        "tokenizer": tokenizer,
    }
