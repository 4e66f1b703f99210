"""Tiny configs and a tiny real tokenizer, for tests and examples that must run offline in seconds."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = """
A photo of a cat sitting on a red mat. Describe the image in detail.
The dog runs across the green field while the sun sets behind the hills.
What is shown in this picture? There is a small house next to a tall tree.
Listen to the audio clip and tell me what you hear: a bird sings, a car passes.
The video shows a person walking down the street, then turning left at the corner.
Compare these two images. The first one is bright, the second one is dark.
User: hello! Assistant: Hi, how can I help you today? Please answer briefly.
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000, punctuation . , ; : ! ? ( ) [ ] { } " ' - _ / \\ < > = + * & % $ # @
"""


def configure_test_environment() -> None:
    """Set the environment a test session of the SDK or of a plugin runs in (call it at the top of ``conftest.py``).

    Only variables that are not set already: ``HF_HUB_OFFLINE=1`` (nothing reaches a hub),
    ``MMLLM_CACHE`` a new temporary folder (never the user's ``~/.cache``),
    ``TOKENIZERS_PARALLELISM=false`` and ``MMLLM_AUTO_DTYPE=float32`` (``dtype: auto`` would pick
    bfloat16 on CPUs with native bf16; tests compare float32 results on every machine).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MMLLM_CACHE", tempfile.mkdtemp(prefix="mmllm-test-cache-"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MMLLM_AUTO_DTYPE", "float32")


def tiny_tokenizer(directory: str | os.PathLike[str] | None = None, vocab_size: int = 400) -> str:
    """A real byte-level BPE tokenizer with a ChatML chat template, saved as a folder; returns its path.

    Trained on a small built-in corpus (deterministic), so it encodes any text. The folder
    is reused when it already exists.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    target = (
        Path(directory) if directory is not None else Path(tempfile.gettempdir()) / f"mmllm-tiny-tokenizer-{vocab_size}"
    )
    if (target / "tokenizer.json").exists():
        return str(target)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.strip().splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    staging = Path(tempfile.mkdtemp(prefix=".tok-", dir=target.parent if target.parent.exists() else None))
    fast.save_pretrained(staging)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(target)
    except OSError:  # another process won the race; its folder is as good as ours
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def tiny_llm_config(vocab_size: int = 400, hidden_size: int = 32, initializer_range: float = 0.02) -> dict[str, Any]:
    """A two-layer Llama config (random init) small enough for unit tests.

    With the default ``initializer_range`` the random LLM's next-token distribution is almost
    uniform whatever its input, so soft prompts can lower a caption loss only a little; tests
    that train projectors and compare losses use ``initializer_range=0.2``, whose sharper
    logits respond to the soft prompt as a pretrained LLM's do.
    """
    return {
        "initializer_range": initializer_range,
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    }


def tiny_clip_vision_config() -> dict[str, Any]:
    """A CLIP vision tower on 32x32 images in 8x8 patches: 16 patch tokens of size 24."""
    return {
        "hidden_size": 24,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
    }


def tiny_siglip_vision_config() -> dict[str, Any]:
    """A SigLIP vision tower of the same sizes (SigLIP's config takes the same fields; no CLS token)."""
    return tiny_clip_vision_config()


def tiny_whisper_config() -> dict[str, Any]:
    """A Whisper encoder on 16 mel bins with 16 positions (0.32 s of audio at 16 kHz)."""
    return {
        "d_model": 24,
        "encoder_layers": 2,
        "encoder_attention_heads": 4,
        "encoder_ffn_dim": 48,
        "decoder_layers": 1,
        "decoder_attention_heads": 4,
        "decoder_ffn_dim": 48,
        "num_mel_bins": 16,
        "max_source_positions": 16,
        "max_target_positions": 16,
        "vocab_size": 64,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "decoder_start_token_id": 1,
    }


def tiny_spec(
    tokenizer_dir: str,
    inputs: tuple[str, ...] | None = None,
    projector: str = "mlp",
    *,
    encoders: dict[str, dict[str, Any]] | None = None,
    initializer_range: float = 0.02,
) -> dict[str, Any]:
    """A model spec (as a dict) with tiny random components for the given input modalities.

    The built-in modalities (image, audio, video) get tiny built-in encoders; ``encoders``
    adds or replaces encoder entries (``{"imu": {"name": "imu-patch", "params": {…}}}``), as a
    plugin's tests do. ``inputs`` defaults to ``("image",)``, or to the keys of ``encoders``.
    ``initializer_range`` is the random LLM's (see :func:`tiny_llm_config`).
    """
    builtin = {
        "image": {"name": "hf-clip-vision", "params": {"config": tiny_clip_vision_config()}},
        "audio": {"name": "hf-whisper-encoder", "params": {"config": tiny_whisper_config()}},
        "video": {
            "name": "video-frames",
            "params": {
                "num_frames": 2,
                "frame_encoder": {"name": "hf-clip-vision", "params": {"config": tiny_clip_vision_config()}},
            },
        },
    }
    chosen = {**builtin, **(encoders or {})}
    if inputs is None:
        inputs = tuple(encoders) if encoders else ("image",)
    llm_config = tiny_llm_config(initializer_range=initializer_range)
    return {
        "llm": {"name": "hf-causal-lm", "params": {"config": llm_config, "tokenizer": str(tokenizer_dir)}},
        "inputs": {m: {"encoder": chosen[m], "projector": {"name": projector}} for m in inputs},
    }


def tiny_gguf(directory: str | os.PathLike[str], tokenizer_dir: str, name: str = "tiny-llama.gguf") -> str:
    """A two-layer Llama with random float32 weights and ``tokenizer_dir``'s tokenizer, as a GGUF file.

    transformers reads it with ``from_pretrained(directory, gguf_file=name)``, as it reads
    SmolLM2's GGUF; tests use it to cover the GGUF path of ``hf-causal-lm`` offline.
    Returns the file's path. Needs the ``gguf`` package (the ``gguf`` extra).
    """
    import json

    import gguf
    import numpy as np
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_llm_config(vocab_size=len(tokenizer))
    hidden, layers, inner = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(inner)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(len(tokenizer))
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    vocab = tokenizer.get_vocab()
    writer.add_token_list(sorted(vocab, key=vocab.get))
    writer.add_token_types([1] * len(vocab))
    merges = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    rng = np.random.default_rng(0)
    kv_width = kv_heads * hidden // heads

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    tensor("token_embd.weight", len(vocab), hidden)
    tensor("output_norm.weight", hidden)
    tensor("output.weight", len(vocab), hidden)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", hidden)
        tensor(f"blk.{i}.ffn_norm.weight", hidden)
        tensor(f"blk.{i}.attn_q.weight", hidden, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv_width, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv_width, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden)
        tensor(f"blk.{i}.ffn_gate.weight", inner, hidden)
        tensor(f"blk.{i}.ffn_up.weight", inner, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, inner)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)
