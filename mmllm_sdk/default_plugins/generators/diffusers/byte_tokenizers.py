"""The byte-level tokenizers a ``config:`` pipeline gets when it names no tokenizer folder.

No merges, so every byte is one token; built in memory, deterministic and offline. Their sizes
are what a ``config:`` text encoder's ``vocab_size`` must hold.
"""

from __future__ import annotations

from typing import Any

BYTE_CLIP_VOCAB_SIZE = 514  # 256 bytes, 256 bytes ending a word ("</w>"), <|startoftext|>, <|endoftext|>
BYTE_ROBERTA_VOCAB_SIZE = 261  # <s>, <pad>, </s>, <unk>, 256 bytes, <mask>
BYTE_ROBERTA_PAD_ID = 1  # RoBERTa's <pad>; the CLAP text config's pad_token_id must match it


def byte_level_clip_tokenizer(model_max_length: int) -> Any:
    """A CLIP tokenizer without merges (``BYTE_CLIP_VOCAB_SIZE`` tokens), built in memory, deterministic."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())  # the 256 byte-level symbols
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab.update({symbol + "</w>": len(symbols) + i for i, symbol in enumerate(symbols)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def byte_level_roberta_tokenizer(model_max_length: int) -> Any:
    """A RoBERTa tokenizer without merges (``BYTE_ROBERTA_VOCAB_SIZE`` tokens), built in memory, deterministic."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": BYTE_ROBERTA_PAD_ID, "</s>": 2, "<unk>": 3}
    vocab.update({symbol: len(vocab) + i for i, symbol in enumerate(sorted(ByteLevel.alphabet()))})
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


__all__ = [
    "BYTE_CLIP_VOCAB_SIZE",
    "BYTE_ROBERTA_PAD_ID",
    "BYTE_ROBERTA_VOCAB_SIZE",
    "byte_level_clip_tokenizer",
    "byte_level_roberta_tokenizer",
]
