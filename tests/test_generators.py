"""The built-in diffusers generators on tiny random pipelines: conformance, outputs, targets, skeletons and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmllm_sdk.components import AudioClip
from mmllm_sdk.components.hf import skeleton_mode
from mmllm_sdk.components.output_projector import ConditionSpec
from mmllm_sdk.default_plugins.generators import AudioLDMGenerator, StableDiffusionGenerator
from mmllm_sdk.default_plugins.generators import diffusers as diffusers_generators
from mmllm_sdk.errors import DimensionError, InputError, SpecError
from mmllm_sdk.registry import get_registry
from mmllm_sdk.testing import tiny_generators
from mmllm_sdk.testing.conformance import check_generator
from mmllm_sdk.testing.tiny_generators import tiny_audioldm_config, tiny_sd_config

STEPS = 2
CAPTIONS = ["a red circle", "a dog barks twice"]
KINDS = {  # class -> (modality, registered name, tiny config)
    StableDiffusionGenerator: ("image", "diffusers-sd", tiny_sd_config),
    AudioLDMGenerator: ("audio", "diffusers-audioldm", tiny_audioldm_config),
}
CLASSES = list(KINDS)


def params(cls, **extra):
    return {"config": KINDS[cls][2](), "num_inference_steps": STEPS, **extra}


def build(cls, seed=0, **extra):
    torch.manual_seed(seed)
    return cls(params(cls, **extra))


@pytest.fixture(scope="module")
def generators():
    return {cls: build(cls) for cls in CLASSES}


@pytest.fixture(scope="module")
def saved(generators, tmp_path_factory):
    """Each tiny pipeline saved with pipeline.save_pretrained, as a ``model:`` folder."""
    folders = {}
    for cls, generator in generators.items():
        folder = tmp_path_factory.mktemp(KINDS[cls][1])
        generator.pipeline.save_pretrained(folder)
        folders[cls] = str(folder)
    return folders


def as_array(item):
    return np.asarray(item, dtype=np.float64) if isinstance(item, Image.Image) else item.samples.astype(np.float64)


def test_generators_are_registered_for_their_modalities():
    registry = get_registry()
    for cls, (modality, name, _) in KINDS.items():
        assert registry.get("generators", name, modality=modality).value is cls


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_generator_passes_the_conformance_kit(cls):
    modality, name, _ = KINDS[cls]
    generator = check_generator(modality, name, params(cls))
    assert isinstance(generator, cls)


def test_stable_diffusion_generates_rgb_images_of_the_default_size(generators):
    generator = generators[StableDiffusionGenerator]
    images = generator.generate(generator.condition_targets(CAPTIONS), seed=0)
    assert len(images) == 2
    assert all(isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (32, 32) for image in images)
    assert generator.image_size == (32, 32)


def test_stable_diffusion_height_and_width_set_the_image_size():
    generator = build(StableDiffusionGenerator, height=16, width=24)
    (image,) = generator.generate(generator.condition_targets(CAPTIONS[:1]), seed=0)
    assert image.size == (24, 16)  # PIL: (width, height)


def test_audioldm_generates_finite_clips_at_the_vocoder_rate(generators):
    generator = generators[AudioLDMGenerator]
    clips = generator.generate(generator.condition_targets(CAPTIONS), seed=0)
    assert len(clips) == 2
    for clip in clips:
        assert isinstance(clip, AudioClip)
        assert clip.sampling_rate == generator.vocoder.config.sampling_rate == 16000
        assert clip.samples.dtype == np.float32 and clip.samples.shape == (64,)
        assert np.isfinite(clip.samples).all()


def test_audioldm_audio_length_sets_the_clip_length():
    generator = build(AudioLDMGenerator, audio_length_in_s=0.008)
    (clip,) = generator.generate(generator.condition_targets(CAPTIONS[:1]), seed=0)
    assert clip.samples.shape == (128,)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_condition_targets_differ_for_different_captions(generators, cls):
    targets = generators[cls].condition_targets(CAPTIONS)
    spec = generators[cls].condition_spec
    assert targets.shape == (2, spec.num_tokens, spec.dim)
    assert not torch.allclose(targets[0], targets[1])


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_condition_targets_are_what_the_pipeline_encodes_from_a_prompt(generators, cls):
    generator = generators[cls]
    if cls is StableDiffusionGenerator:
        encoded = generator.pipeline.encode_prompt(CAPTIONS, "cpu", 1, False)[0]  # (B, num_tokens, dim)
    else:
        encoded = generator.pipeline._encode_prompt(CAPTIONS, "cpu", 1, False).unsqueeze(1)  # (B, 1, dim)
    torch.testing.assert_close(generator.condition_targets(CAPTIONS), encoded)


def test_audioldm_targets_are_unit_vectors(generators):
    norms = generators[AudioLDMGenerator].condition_targets(CAPTIONS).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(2, 1))


def test_condition_spec_comes_from_the_components(generators):
    # SD: (the tokenizer's model_max_length, CLIP's hidden size); AudioLDM: one CLAP embedding of projection_dim
    assert generators[StableDiffusionGenerator].condition_spec == ConditionSpec(16, 16)
    assert generators[AudioLDMGenerator].condition_spec == ConditionSpec(1, 8)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_skeleton_has_the_same_condition_spec_and_only_meta_tensors(generators, cls):
    with skeleton_mode():
        skeleton = cls(params(cls))
    assert skeleton.condition_spec == generators[cls].condition_spec
    assert {t.device.type for t in [*skeleton.parameters(), *skeleton.buffers()]} == {"meta"}
    assert skeleton.pipeline is None


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_skeleton_of_a_model_folder_reads_configs_only(generators, saved, cls):
    with skeleton_mode():
        skeleton = cls({"model": saved[cls]})
    assert skeleton.condition_spec == generators[cls].condition_spec
    assert all(p.is_meta for p in skeleton.parameters())
    assert sum(p.numel() for p in skeleton.parameters()) == sum(p.numel() for p in generators[cls].parameters())


def test_skeleton_generator_cannot_generate():
    with skeleton_mode():
        skeleton = StableDiffusionGenerator(params(StableDiffusionGenerator))
    with pytest.raises(InputError, match="skeleton mode"):
        skeleton.generate(torch.zeros(1, 16, 16))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_model_folder_gives_the_same_condition_targets(generators, saved, cls):
    loaded = cls({"model": saved[cls], "num_inference_steps": STEPS})
    assert loaded.condition_spec == generators[cls].condition_spec
    expected = generators[cls].condition_targets(CAPTIONS)
    torch.testing.assert_close(loaded.condition_targets(CAPTIONS), expected, rtol=1e-5, atol=1e-6)


def test_the_tiny_configs_hold_the_byte_level_tokenizers_of_the_generators(generators):
    # mmllm_sdk.testing keeps its own copy of the sizes (it does not import default_plugins)
    clip, roberta = generators[StableDiffusionGenerator].tokenizer, generators[AudioLDMGenerator].tokenizer
    assert len(clip) == tiny_generators.BYTE_CLIP_VOCAB_SIZE == diffusers_generators.BYTE_CLIP_VOCAB_SIZE
    assert len(roberta) == tiny_generators.BYTE_ROBERTA_VOCAB_SIZE == diffusers_generators.BYTE_ROBERTA_VOCAB_SIZE
    assert roberta.pad_token_id == tiny_generators.BYTE_ROBERTA_PAD_ID == diffusers_generators.BYTE_ROBERTA_PAD_ID


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_tokenizer_folder_in_config_is_used(generators, saved, cls):
    config = {**KINDS[cls][2](), "tokenizer": f"{saved[cls]}/tokenizer"}
    torch.manual_seed(0)
    generator = cls({"config": config, "num_inference_steps": STEPS})
    torch.testing.assert_close(generator.condition_targets(CAPTIONS), generators[cls].condition_targets(CAPTIONS))


def test_model_and_config_together_is_a_spec_error(saved):
    with pytest.raises(SpecError, match="diffusers-sd.params") as error:
        StableDiffusionGenerator({"model": saved[StableDiffusionGenerator], "config": tiny_sd_config()})
    assert "exactly one of 'model'" in str(error.value)


def test_neither_model_nor_config_is_a_spec_error():
    with pytest.raises(SpecError, match="exactly one of 'model'"):
        AudioLDMGenerator({})


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_unknown_param_is_a_spec_error_naming_the_field(cls):
    with pytest.raises(SpecError, match="num_inference_step\\b") as error:
        cls({"config": KINDS[cls][2](), "num_inference_step": 2})
    assert "is not a known field" in str(error.value)


def test_unknown_config_part_is_a_spec_error_naming_it():
    config = {**tiny_sd_config(), "vocoder": {}}
    with pytest.raises(SpecError, match=r"diffusers-sd\.params\.config\.vocoder: is not a known field"):
        StableDiffusionGenerator({"config": config})


def test_bad_component_argument_is_a_spec_error_naming_the_component():
    config = tiny_sd_config()
    config["unet"]["block_out_channel"] = [8, 16]
    with pytest.raises(SpecError, match=r"params\.config\.unet.*block_out_channel"):
        StableDiffusionGenerator({"config": config})


def test_missing_model_folder_is_a_spec_error_naming_it(tmp_path):
    missing = str(tmp_path / "no-such-pipeline")
    with pytest.raises(SpecError, match="no-such-pipeline"):
        StableDiffusionGenerator({"model": missing})


def test_cross_attention_width_other_than_the_text_width_is_a_dimension_error():
    config = tiny_sd_config()
    config["unet"]["cross_attention_dim"] = 24
    with pytest.raises(DimensionError, match="cross_attention_dim is 24.*hidden_size is 16"):
        StableDiffusionGenerator({"config": config})


def test_audioldm_class_embedding_of_another_width_is_a_dimension_error():
    config = tiny_audioldm_config()
    config["unet"]["projection_class_embeddings_input_dim"] = 12
    with pytest.raises(DimensionError, match="projection_class_embeddings_input_dim 8"):
        AudioLDMGenerator({"config": config})


def test_text_encoder_vocabulary_smaller_than_the_tokenizer_is_a_dimension_error():
    config = tiny_sd_config()
    config["text_encoder"]["vocab_size"] = 100
    with pytest.raises(DimensionError, match="vocab_size is 100.*at least 514"):
        StableDiffusionGenerator({"config": config})


def test_image_side_that_is_not_a_multiple_of_8_is_a_spec_error():
    with pytest.raises(SpecError, match="params.height is 20.*multiples of 8"):
        build(StableDiffusionGenerator, height=20)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
@pytest.mark.parametrize("change", ["tokens", "dim", "rank"])
def test_wrong_conditioning_shape_is_an_input_error_naming_both_shapes(generators, cls, change):
    generator = generators[cls]
    n, d = generator.condition_spec.num_tokens, generator.condition_spec.dim
    shape = {"tokens": (2, n + 1, d), "dim": (2, n, d + 1), "rank": (n, d)}[change]
    with pytest.raises(InputError) as error:
        generator.generate(torch.zeros(shape))
    assert f"(B, {n}, {d})" in str(error.value)
    assert str(shape) in str(error.value)


def test_captions_not_in_a_list_are_an_input_error(generators):
    with pytest.raises(InputError, match="list of captions"):
        generators[StableDiffusionGenerator].condition_targets("a red circle")


def test_unknown_generate_option_is_an_input_error_listing_the_options(generators):
    generator = generators[AudioLDMGenerator]
    with pytest.raises(InputError, match="num_steps.*num_inference_steps, guidance_scale, audio_length_in_s, seed"):
        generator.generate(generator.condition_targets(CAPTIONS[:1]), num_steps=3)


def test_invalid_generate_option_is_an_input_error_naming_it(generators):
    generator = generators[StableDiffusionGenerator]
    with pytest.raises(InputError, match="num_inference_steps"):
        generator.generate(generator.condition_targets(CAPTIONS[:1]), num_inference_steps=0)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_same_seed_gives_the_same_items_and_another_seed_others(generators, cls):
    generator = generators[cls]
    conditioning = generator.condition_targets(CAPTIONS[:1])
    first, again, other = (generator.generate(conditioning, seed=s)[0] for s in (7, 7, 8))
    assert np.array_equal(as_array(first), as_array(again))
    assert not np.array_equal(as_array(first), as_array(other))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_without_a_seed_the_torch_seed_decides(generators, cls):
    generator = generators[cls]
    conditioning = generator.condition_targets(CAPTIONS[:1])
    items = []
    for _ in range(2):
        torch.manual_seed(11)
        items.append(as_array(generator.generate(conditioning)[0]))
    assert np.array_equal(*items)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_an_item_in_a_batch_is_the_item_generated_alone(generators, cls):
    generator = generators[cls]
    conditioning = generator.condition_targets(CAPTIONS)
    in_batch = generator.generate(conditioning, seed=5)[0]
    alone = generator.generate(conditioning[:1], seed=5)[0]
    tolerance = 1.0 if cls is StableDiffusionGenerator else 1e-9  # one uint8 level of a pixel
    np.testing.assert_allclose(as_array(in_batch), as_array(alone), atol=tolerance)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_guidance_above_one_changes_the_items(generators, cls):
    generator = generators[cls]
    conditioning = generator.condition_targets(CAPTIONS)
    plain = generator.generate(conditioning, seed=3)
    guided = generator.generate(conditioning, seed=3, guidance_scale=4.0)
    assert len(guided) == 2
    assert not np.array_equal(as_array(plain[0]), as_array(guided[0]))


def test_conditioning_is_cast_to_the_weights_dtype(generators):
    generator = generators[StableDiffusionGenerator]
    conditioning = generator.condition_targets(CAPTIONS[:1]).double()
    (image,) = generator.generate(conditioning, seed=0)
    assert image.size == (32, 32)


def test_scheduler_param_replaces_the_pipeline_scheduler():
    generator = build(StableDiffusionGenerator, scheduler="pndm")
    assert type(generator.pipeline.scheduler).__name__ == "PNDMScheduler"
    (image,) = generator.generate(generator.condition_targets(CAPTIONS[:1]), seed=0)
    assert image.size == (32, 32)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_generator_is_frozen_in_eval_mode(generators, cls):
    generator = generators[cls]
    assert not any(p.requires_grad for p in generator.parameters())
    assert not generator.training
    assert set(dict(generator.named_children())) >= {"unet", "vae", "text_encoder"}


def test_reference_of_a_config_generator_is_its_config(generators):
    reference = generators[AudioLDMGenerator].reference()
    assert json.loads(json.dumps(reference))["config"]["vocoder"]["sampling_rate"] == 16000


def test_reference_of_a_model_folder_records_a_content_hash(saved):
    reference = StableDiffusionGenerator({"model": saved[StableDiffusionGenerator]}).reference()
    assert reference["model"] == saved[StableDiffusionGenerator]
    assert len(reference["sha256"]) == 64
