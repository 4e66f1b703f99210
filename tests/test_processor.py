"""The processor: chat template, placeholder expansion, labels, LLaVA records, several items and modalities."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmllm_sdk import build_model
from mmllm_sdk.data.examples import FEATURES_KEY, Conversation, MediaPart, TextPart
from mmllm_sdk.model.processor import IGNORE_INDEX
from mmllm_sdk.testing import tiny_spec


def ask(image, question="What is in this image?", answer="A gradient."):
    return [
        {"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": answer},
    ]


def test_each_placeholder_becomes_the_projectors_token_count(image_model, image_file):
    batch = image_model.processor([ask(image_file)])
    image_id = image_model.placeholder_ids["image"]
    assert int((batch["input_ids"] == image_id).sum()) == image_model.input_projectors["image"].num_tokens == 16
    positions = (batch["input_ids"][0] == image_id).nonzero().flatten()
    assert positions.tolist() == list(range(int(positions[0]), int(positions[0]) + 16))  # one contiguous run
    assert batch["image"]["pixel_values"].shape == (1, 3, 32, 32)


def test_labels_cover_only_the_assistant_answer_and_its_end_of_turn(image_model, image_file):
    batch = image_model.processor([ask(image_file, answer="A gradient.")])
    labels = batch["labels"][0]
    supervised = labels[labels != IGNORE_INDEX]
    assert image_model.processor.tokenizer.decode(supervised) == "A gradient.<|im_end|>\n"
    assert (labels[batch["input_ids"][0] == image_model.placeholder_ids["image"]] == IGNORE_INDEX).all()


def test_every_assistant_turn_is_supervised_in_a_multi_turn_conversation(image_model, image_file):
    conversation = [
        *ask(image_file, answer="Colours."),
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": "No."},
    ]
    labels = image_model.processor([conversation])["labels"][0]
    decoded = image_model.processor.tokenizer.decode(labels[labels != IGNORE_INDEX])
    assert decoded == "Colours.<|im_end|>\nNo.<|im_end|>\n"


def test_a_llava_record_gives_the_same_batch_as_chat_messages(image_model, image_file):
    record = {
        "image": str(image_file),
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is in this image?"},
            {"from": "gpt", "value": "A gradient."},
        ],
    }
    from_record = image_model.processor([record])
    from_messages = image_model.processor([ask(image_file)])
    assert torch.equal(from_record["input_ids"], from_messages["input_ids"])
    assert torch.equal(from_record["labels"], from_messages["labels"])
    assert torch.equal(from_record["image"]["pixel_values"], from_messages["image"]["pixel_values"])


def test_two_images_in_one_message_fill_two_runs_in_order(image_model, image_file, tmp_path):
    from PIL import Image

    dark = tmp_path / "dark.png"
    Image.new("RGB", (32, 32), (10, 10, 10)).save(dark)
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(image_file)},
                {"type": "image", "image": str(dark)},
                {"type": "text", "text": "Compare these two images."},
            ],
        }
    ]
    batch = image_model.processor([conversation])
    assert int((batch["input_ids"] == image_model.placeholder_ids["image"]).sum()) == 32
    assert batch["image"]["pixel_values"].shape[0] == 2
    features = image_model.get_modality_features("image", **batch["image"])
    embeds = image_model.embed_inputs(batch["input_ids"], {"image": batch["image"]})
    mask = batch["input_ids"][0] == image_model.placeholder_ids["image"]
    assert torch.allclose(embeds[0][mask], features.reshape(-1, features.shape[-1]))


def test_image_and_audio_in_one_sample(tokenizer_dir, image_file, wav_file):
    model = build_model(tiny_spec(tokenizer_dir, inputs=("image", "audio")), progress=False)
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(image_file)},
                {"type": "audio", "path": str(wav_file)},
                {"type": "text", "text": "Describe both."},
            ],
        },
        {"role": "assistant", "content": "A gradient and a tone."},
    ]
    batch = model.processor([conversation])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "image", "audio"}
    assert (
        int((batch["input_ids"] == model.placeholder_ids["audio"]).sum()) == model.input_projectors["audio"].num_tokens
    )
    assert torch.isfinite(model(**batch).loss)


def test_a_batch_is_padded_and_each_row_matches_its_unbatched_logits(image_model, image_file):
    short = ask(image_file, question="Hi?", answer="Yes.")
    long = ask(image_file, question="What colours are in this picture, from left to right?", answer="Red then blue.")
    batch = image_model.processor([short, long])
    lengths = batch["attention_mask"].sum(dim=1)
    assert lengths[0] < lengths[1] and batch["attention_mask"][0, -1] == 0  # right padding for training
    assert (batch["labels"][0, int(lengths[0]) :] == IGNORE_INDEX).all()
    with torch.no_grad():
        batched = image_model(**batch).logits
        alone = image_model(**image_model.processor([short])).logits
    n = int(lengths[0])
    assert torch.allclose(batched[0, :n], alone[0, :n], atol=1e-5)


def test_a_generation_prompt_is_left_padded_without_labels(image_model, image_file):
    batch = image_model.processor(
        [ask(image_file)[:1], [{"role": "user", "content": "Hi"}]], add_generation_prompt=True
    )
    assert "labels" not in batch
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1
    text = image_model.processor.tokenizer.decode(batch["input_ids"][0])
    assert text.endswith("<|im_start|>assistant\n")


def test_a_too_long_conversation_is_refused_not_cut(image_model, image_file):
    from mmllm_sdk.errors import InputError

    with pytest.raises(InputError, match=r"takes \d+ tokens \(placeholders expanded\), more than max_length=10"):
        image_model.processor([ask(image_file)], max_length=10)


def test_a_video_goes_through_the_model_from_an_animated_gif(tokenizer_dir, tmp_path):
    from PIL import Image

    frames = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(5)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:], duration=100)
    model = build_model(tiny_spec(tokenizer_dir, inputs=("video",)), progress=False)
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "video", "path": str(tmp_path / "clip.gif")},
                {"type": "text", "text": "What happens?"},
            ],
        },
        {"role": "assistant", "content": "It turns red."},
    ]
    batch = model.processor([conversation])
    assert batch["video"]["pixel_values"].shape == (1, 2, 3, 32, 32)  # (B, num_frames, C, H, W)
    assert torch.isfinite(model(**batch).loss)


def test_train_on_last_assistant_supervises_only_the_final_answer(image_model, image_file):
    conversation = [
        *ask(image_file, answer="Colours."),
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": "No."},
    ]
    labels = image_model.processor([conversation], train_on="last_assistant")["labels"][0]
    assert image_model.processor.tokenizer.decode(labels[labels != IGNORE_INDEX]) == "No.<|im_end|>\n"


def test_a_typed_conversation_gives_the_same_batch_as_its_messages(image_model, image_file):
    typed = image_model.processor.parse(ask(image_file))
    assert isinstance(typed, Conversation) and [type(p) for p in typed.messages[0].parts] == [MediaPart, TextPart]
    from_typed, from_messages = image_model.processor([typed]), image_model.processor([ask(image_file)])
    assert torch.equal(from_typed["input_ids"], from_messages["input_ids"])
    assert torch.equal(from_typed["labels"], from_messages["labels"])


def test_items_that_carry_features_are_neither_loaded_nor_encoded(image_model, image_file):
    encoder = image_model.encoders["image"]
    features = torch.randn(encoder.num_tokens, encoder.output_dim)
    plain = image_model.processor.parse(ask(image_file))
    cached = plain.with_media(lambda item: dataclasses.replace(item, features=features))
    batch = image_model.processor([cached, cached])
    assert set(batch["image"]) == {FEATURES_KEY} and torch.equal(batch["image"][FEATURES_KEY][1], features)
    mixed = image_model.processor([cached, plain])["image"]  # an item without features: every item is loaded
    assert FEATURES_KEY not in mixed and mixed["pixel_values"].shape[0] == 2
    assert not hasattr(image_model.processor, "feature_cache")  # the processor holds no cache state
