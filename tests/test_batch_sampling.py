"""Which examples share a batch: by default a recipe draws batches at random, so a label whose answer is longer than
another's still meets it in the same batch (length-grouped batches held one label each and left the LLM unable to
tell two of them apart: docs/alignment.md)."""

from __future__ import annotations

import json

from transformers import TrainerCallback

from mmllm_sdk.default_plugins.recipes.run import train
from mmllm_sdk.model.processor import IGNORE_INDEX
from mmllm_sdk.testing import tiny_spec

ANSWERS = ("Yes.", "No, it is not there at all.")  # two labels whose answers differ in length


class BatchRecorder(TrainerCallback):
    """The supervised token count of each row of each batch of the run's first epoch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        for batch in train_dataloader:
            self.batches.append((batch["labels"] != IGNORE_INDEX).sum(dim=-1).tolist())


def run(tmp_path, tokenizer_dir, **training):
    data = tmp_path / "labels.jsonl"
    records = [
        {"messages": [{"role": "user", "content": "Is it there?"}, {"role": "assistant", "content": ANSWERS[i % 2]}]}
        for i in range(128)
    ]
    data.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    spec = {
        "recipe": "sft",
        "model": tiny_spec(tokenizer_dir),
        "data": {"train": str(data)},
        "peft": {"method": "lora", "r": 4},
        "training": {
            "output_dir": str(tmp_path / "run"),
            "per_device_train_batch_size": 8,
            "max_steps": 1,
            "save_strategy": "no",
            "seed": 0,
            **training,
        },
    }
    recorder = BatchRecorder()
    train(spec, callbacks=[recorder])
    assert len(recorder.batches) == 16
    return recorder.batches


def test_default_batches_mix_answers_of_different_lengths(tmp_path, tokenizer_dir):
    batches = run(tmp_path, tokenizer_dir)
    assert sum(len(set(rows)) == 2 for rows in batches) >= 12, batches  # at random: 15.9 of 16 on average


def test_group_by_length_on_request_puts_each_length_in_batches_of_its_own(tmp_path, tokenizer_dir):
    batches = run(tmp_path, tokenizer_dir, train_sampling_strategy="group_by_length")
    assert sum(len(set(rows)) == 1 for rows in batches) >= 12, batches  # sorted in groups of 32: 13 or more
