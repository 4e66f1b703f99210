"""``answer_logprobs``: the log-likelihood of a conversation's last answer, as DPO, loglik-choice and lmms-eval use it."""

from __future__ import annotations

import pytest
import torch

from mmllm_sdk.errors import InputError
from mmllm_sdk.model.processor import IGNORE_INDEX
from mmllm_sdk.model.scoring import answer_logprobs


def conversation(image_file, answer, earlier="Yes."):
    return [
        {
            "role": "user",
            "content": [{"type": "image", "path": str(image_file)}, {"type": "text", "text": "Is it red?"}],
        },
        {"role": "assistant", "content": earlier},
        {"role": "user", "content": "And the shape?"},
        {"role": "assistant", "content": answer},
    ]


def by_full_logits(model, messages):
    """The same number from every position's logits: the last answer's labelled tokens, summed."""
    batch = model.processor([messages], train_on="last_assistant")
    with torch.no_grad():
        logits = model(**batch).logits[0, :-1].float()  # position t predicts token t + 1
    targets = batch["labels"][0, 1:]
    picked = torch.log_softmax(logits, dim=-1)[targets != IGNORE_INDEX].gather(
        -1, targets[targets != IGNORE_INDEX, None]
    )
    greedy = bool((logits.argmax(-1)[targets != IGNORE_INDEX] == targets[targets != IGNORE_INDEX]).all())
    return picked.sum().item(), int((targets != IGNORE_INDEX).sum()), greedy


def test_each_answer_scores_its_last_turn_as_every_positions_logits_do(image_model, image_file):
    answers = ["A circle.", "Three small red squares in a row.", "No."]
    image_model.eval()
    scores = answer_logprobs(image_model, [conversation(image_file, a) for a in answers], batch_size=2)
    for answer, got in zip(answers, scores, strict=True):
        logprob, tokens, greedy = by_full_logits(image_model, conversation(image_file, answer))
        assert got.logprob == pytest.approx(logprob, abs=1e-4) and got.tokens == tokens and got.greedy == greedy


def test_earlier_answers_do_not_count(image_model, image_file):
    first, second = answer_logprobs(
        image_model, [conversation(image_file, "A circle.", "Yes."), conversation(image_file, "A circle.", "No, blue.")]
    )
    assert first.tokens == second.tokens and first.logprob != second.logprob  # the context differs, the answer not


def test_the_models_mode_is_restored(image_model, image_file):
    image_model.train()
    answer_logprobs(image_model, [conversation(image_file, "A circle.")])
    assert image_model.training


def test_a_batch_size_below_one_is_refused(image_model, image_file):
    with pytest.raises(InputError, match="batch_size of at least 1"):
        answer_logprobs(image_model, [conversation(image_file, "A circle.")], batch_size=0)
