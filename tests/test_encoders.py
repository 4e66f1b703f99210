"""The built-in modality encoders: shapes, params, errors, resampling, frame sampling and loading paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmllm_sdk.components.hf import skeleton_mode
from mmllm_sdk.components.modality import AudioClip, VideoClip
from mmllm_sdk.default_plugins.encoders import (
    CLIPVisionEncoder,
    SiglipVisionEncoder,
    VideoFramesEncoder,
    WhisperAudioEncoder,
    resample_audio,
    sample_frame_indices,
)
from mmllm_sdk.errors import InputError, SpecError, UnknownComponentError
from mmllm_sdk.registry import get_registry
from mmllm_sdk.testing import tiny_clip_vision_config, tiny_siglip_vision_config, tiny_whisper_config

WHISPER_RATE = 16_000  # the feature extractor's sampling rate
WHISPER_WINDOW = 5_120  # samples in the tiny Whisper's window: 16 positions * 2 frames * hop 160


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def image(seed: int, size: tuple[int, int] = (40, 48)) -> Image.Image:
    """A random RGB image of ``size`` (height, width)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def tone(seconds: float, rate: int, frequency: float = 440.0) -> AudioClip:
    t = np.arange(round(seconds * rate)) / rate
    return AudioClip((0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), rate)


def solid_frames(count: int) -> list[Image.Image]:
    """Frames of distinct grey levels, so a sampled frame can be told apart by its brightness."""
    return [Image.new("RGB", (32, 32), (v, v, v)) for v in np.linspace(0, 250, count).astype(int)]


def video_params(num_frames: int = 2, temporal_pool: str = "mean") -> dict:
    frame_encoder = {"name": "hf-clip-vision", "params": {"config": tiny_clip_vision_config()}}
    return {"frame_encoder": frame_encoder, "num_frames": num_frames, "temporal_pool": temporal_pool}


ENCODERS = {  # name: (class, params from config:, a batch of two items)
    "hf-clip-vision": (
        CLIPVisionEncoder,
        {"config": tiny_clip_vision_config()},
        lambda: [image(0), image(1, (64, 30))],
    ),
    "hf-siglip-vision": (SiglipVisionEncoder, {"config": tiny_siglip_vision_config()}, lambda: [image(0), image(1)]),
    "hf-whisper-encoder": (
        WhisperAudioEncoder,
        {"config": tiny_whisper_config()},
        lambda: [tone(0.25, WHISPER_RATE), tone(0.1, WHISPER_RATE, 1000.0)],
    ),
    "video-frames": (
        VideoFramesEncoder,
        video_params(),
        lambda: [VideoClip(solid_frames(3)), VideoClip(solid_frames(5))],
    ),
}
HF_ENCODERS = ("hf-clip-vision", "hf-siglip-vision", "hf-whisper-encoder")
MODALITY = {
    "hf-clip-vision": "image",
    "hf-siglip-vision": "image",
    "hf-whisper-encoder": "audio",
    "video-frames": "video",
}


@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_built_from_config_maps_two_items_to_batch_of_features(name):
    cls, params, items = ENCODERS[name]
    encoder = cls(params)
    batch = encoder.preprocess(items())
    assert all(tensor.shape[0] == 2 for tensor in batch.values())
    features = encoder(**batch)
    assert features.shape == (2, encoder.num_tokens, encoder.output_dim)
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_passes_gradients_in_train_mode(name):
    cls, params, items = ENCODERS[name]
    encoder = cls(params).train()
    encoder(**encoder.preprocess(items())).square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_tiny_encoders_have_the_documented_sizes():
    encoders = {name: cls(params) for name, (cls, params, _) in ENCODERS.items()}
    sizes = {name: (encoder.num_tokens, encoder.output_dim) for name, encoder in encoders.items()}
    assert sizes == {
        "hf-clip-vision": (16, 24),
        "hf-siglip-vision": (16, 24),
        "hf-whisper-encoder": (16, 24),
        "video-frames": (16, 24),
    }


def test_clip_cls_patch_keeps_the_cls_token():
    patch = CLIPVisionEncoder({"config": tiny_clip_vision_config(), "select": "patch"})
    full = CLIPVisionEncoder({"config": tiny_clip_vision_config(), "select": "cls_patch"})
    full.load_state_dict(patch.state_dict())
    batch = patch.preprocess([image(0), image(1)])
    assert full.num_tokens == patch.num_tokens + 1
    assert torch.equal(full(**batch)[:, 1:], patch(**batch))


def test_feature_layer_picks_that_hidden_state():
    encoder = CLIPVisionEncoder({"config": tiny_clip_vision_config(), "feature_layer": 0})
    batch = encoder.preprocess([image(0)])
    hidden = encoder.model(**batch, output_hidden_states=True).hidden_states
    assert torch.equal(encoder(**batch), hidden[0][:, 1:])


@pytest.mark.parametrize(
    ("cls", "config"),
    [(CLIPVisionEncoder, tiny_clip_vision_config()), (SiglipVisionEncoder, tiny_siglip_vision_config())],
)
def test_feature_layer_out_of_range_names_field_value_and_range(cls, config):
    with pytest.raises(SpecError, match=r"feature_layer is 3\b.*from -3 to 2"):
        cls({"config": config, "feature_layer": 3})


@pytest.mark.parametrize("name", list(ENCODERS))
def test_unknown_param_is_rejected_by_name(name):
    cls, params, _ = ENCODERS[name]
    with pytest.raises(SpecError, match="feature_layr: is not a known field"):
        cls({**params, "feature_layr": -2})


@pytest.mark.parametrize("name", HF_ENCODERS)
@pytest.mark.parametrize("sources", [{}, {"model": "some/model"}], ids=["neither", "both"])
def test_model_and_config_must_be_exactly_one(name, sources):
    cls, params, _ = ENCODERS[name]
    with pytest.raises(SpecError, match="exactly one of 'model'"):
        cls({**sources, **({"config": params["config"]} if sources else {})})


def test_whisper_rejects_a_clip_longer_than_its_window():
    encoder = WhisperAudioEncoder({"config": tiny_whisper_config()})
    with pytest.raises(InputError, match=r"item 1 is 0\.50 s long.*at most 0\.32 s.*Split the clip"):
        encoder.preprocess([tone(0.1, WHISPER_RATE), tone(0.5, WHISPER_RATE)])


def test_whisper_accepts_a_clip_exactly_one_window_long():
    encoder = WhisperAudioEncoder({"config": tiny_whisper_config()})
    clip = AudioClip(np.zeros(WHISPER_WINDOW, dtype=np.float32), WHISPER_RATE)
    assert encoder.preprocess([clip])["input_features"].shape == (1, 16, 32)


def test_whisper_resamples_8khz_input_to_the_same_features():
    encoder = WhisperAudioEncoder({"config": tiny_whisper_config()})
    native = encoder.preprocess([tone(0.25, WHISPER_RATE)])["input_features"]
    resampled = encoder.preprocess([tone(0.25, 8_000)])["input_features"]
    assert resampled.shape == native.shape
    frequencies = np.linspace(0, WHISPER_RATE / 2, encoder.feature_extractor.mel_filters.shape[0])
    below_4khz = torch.from_numpy(encoder.feature_extractor.mel_filters[frequencies > 3_800].sum(axis=0) == 0)
    interior = slice(1, 24)  # mel frames of the 25-frame tone away from its two ends
    # 8 kHz audio holds nothing above 4 kHz: compare the mel bands below it
    close = resampled[0, below_4khz, interior], native[0, below_4khz, interior]
    torch.testing.assert_close(*close, atol=0.05, rtol=0)
    assert encoder(input_features=resampled).shape == (1, encoder.num_tokens, encoder.output_dim)


def test_whisper_rejects_items_that_are_not_audio_clips():
    encoder = WhisperAudioEncoder({"config": tiny_whisper_config()})
    with pytest.raises(InputError, match="item 0 is a ndarray.*audio clip"):
        encoder.preprocess([np.zeros(100, dtype=np.float32)])


def test_resample_keeps_a_tone_below_the_new_nyquist():
    clip = tone(0.5, 8_000)
    upsampled = resample_audio(clip.samples, 8_000, WHISPER_RATE)
    expected = tone(0.5, WHISPER_RATE).samples
    assert upsampled.shape == expected.shape
    interior = slice(200, -200)  # the ends see the silence assumed beyond the clip
    np.testing.assert_allclose(upsampled[interior], expected[interior], atol=1e-4)


def test_resample_removes_a_tone_above_the_new_nyquist_instead_of_aliasing():
    high = tone(0.5, 48_000, frequency=12_000.0)  # above 8 kHz: would alias to 4 kHz
    downsampled = resample_audio(high.samples, 48_000, WHISPER_RATE)
    assert np.sqrt(np.mean(downsampled[200:-200] ** 2)) < 1e-3


def test_frame_sampling_spreads_uniformly_and_repeats_short_clips():
    assert sample_frame_indices(3, 8) == [0, 0, 1, 1, 1, 1, 2, 2]
    assert sample_frame_indices(10, 8) == [0, 1, 3, 4, 5, 6, 8, 9]
    assert sample_frame_indices(5, 1) == [0]


def test_video_frames_samples_num_frames_from_short_and_long_clips():
    encoder = VideoFramesEncoder(video_params(num_frames=8))
    clips = [VideoClip(solid_frames(3)), VideoClip(solid_frames(10))]
    pixel_values = encoder.preprocess(clips)["pixel_values"]
    assert pixel_values.shape == (2, 8, 3, 32, 32)
    for clip, frames in zip(clips, pixel_values, strict=True):
        chosen = [clip.frames[i] for i in sample_frame_indices(len(clip.frames), 8)]
        assert torch.equal(frames, encoder.frame_encoder.preprocess(chosen)["pixel_values"])
    assert encoder(pixel_values=pixel_values).shape == (2, encoder.num_tokens, encoder.output_dim)


def test_video_frames_mean_pool_averages_the_frame_features():
    encoder = VideoFramesEncoder(video_params(num_frames=3))
    clip = VideoClip(solid_frames(3))
    per_frame = encoder.frame_encoder(**encoder.frame_encoder.preprocess(clip.frames))  # (T, N, D)
    torch.testing.assert_close(encoder(**encoder.preprocess([clip]))[0], per_frame.mean(dim=0))


def test_video_frames_without_pooling_concatenates_the_frames():
    encoder = VideoFramesEncoder(video_params(num_frames=3, temporal_pool="none"))
    features = encoder(**encoder.preprocess([VideoClip(solid_frames(4)), VideoClip(solid_frames(2))]))
    assert encoder.num_tokens == 3 * encoder.frame_encoder.num_tokens
    assert features.shape == (2, 3 * encoder.frame_encoder.num_tokens, encoder.frame_encoder.output_dim)


def test_video_frames_uses_any_registered_image_encoder():
    params = {"frame_encoder": {"name": "hf-siglip-vision", "params": {"config": tiny_siglip_vision_config()}}}
    encoder = VideoFramesEncoder(params)
    assert isinstance(encoder.frame_encoder, SiglipVisionEncoder)
    assert encoder.reference() == {"frame_encoder": {"config": tiny_siglip_vision_config()}}


def test_video_frames_unknown_frame_encoder_suggests_the_near_name():
    params = {"frame_encoder": {"name": "hf-clip-vison", "params": {}}}
    with pytest.raises(
        UnknownComponentError, match=r"frame_encoder\.name: 'hf-clip-vison'.*Did you mean 'hf-clip-vision'"
    ):
        VideoFramesEncoder(params)


def test_video_frames_rejects_zero_frames():
    with pytest.raises(SpecError, match="num_frames"):
        VideoFramesEncoder(video_params(num_frames=0))


def test_clip_saved_and_loaded_with_model_path_gives_identical_features(tmp_path):
    built = CLIPVisionEncoder({"config": tiny_clip_vision_config()}).eval()
    built.model.save_pretrained(tmp_path)
    built.image_processor.save_pretrained(tmp_path)
    loaded = CLIPVisionEncoder({"model": str(tmp_path)}).eval()
    items = [image(0), image(1, (64, 30))]
    with torch.no_grad():
        assert torch.equal(loaded(**loaded.preprocess(items)), built(**built.preprocess(items)))
    assert loaded.reference()["model"] == str(tmp_path) and "sha256" in loaded.reference()


def test_whisper_loaded_with_model_path_keeps_only_the_encoder(tmp_path):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    whole = WhisperModel(WhisperConfig(**tiny_whisper_config())).eval()
    whole.save_pretrained(tmp_path)
    WhisperFeatureExtractor(feature_size=tiny_whisper_config()["num_mel_bins"]).save_pretrained(tmp_path)
    encoder = WhisperAudioEncoder({"model": str(tmp_path)}).eval()
    batch = encoder.preprocess([tone(0.25, WHISPER_RATE)])
    assert batch["input_features"].shape == (1, 16, 32)  # the window follows max_source_positions, not 30 s
    assert not any(key.startswith("decoder") for key in encoder.model.state_dict())
    with torch.no_grad():
        assert torch.equal(encoder(**batch), whole.encoder(**batch).last_hidden_state)


def test_missing_model_folder_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="could not load"):
        CLIPVisionEncoder({"model": str(tmp_path / "absent")})


@pytest.mark.parametrize("name", list(ENCODERS))
def test_skeleton_mode_builds_on_meta_with_the_right_sizes(name):
    cls, params, _ = ENCODERS[name]
    with skeleton_mode():
        encoder = cls(params)
    reference = cls(params)
    assert all(p.is_meta for p in encoder.parameters())
    assert (encoder.num_tokens, encoder.output_dim) == (reference.num_tokens, reference.output_dim)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_builtin_encoders_are_registered_through_the_plugin_hook(name):
    entry = get_registry().get("encoders", name, modality=MODALITY[name])
    assert entry.value is ENCODERS[name][0]
    assert entry.plugin == "mmllm_sdk.default_plugins.encoders"


def test_a_vision_tower_read_from_a_whole_clip_folder_loads_without_a_table_of_its_text_weights(tmp_path, capfd):
    import warnings

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(text_config=text, vision_config=tiny_clip_vision_config(), projection_dim=8)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(tmp_path / "clip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is missing: no warning either
        CLIPVisionEncoder({"model": str(tmp_path / "clip")})
    printed = capfd.readouterr()
    assert "LOAD REPORT" not in printed.err + printed.out and "text_model" not in printed.err + printed.out


def test_weights_a_checkpoint_lacks_are_named_in_one_warning(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(**tiny_clip_vision_config())).save_pretrained(tmp_path / "tower")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(tmp_path / "tower")
    weights = load_file(tmp_path / "tower" / "model.safetensors")
    del weights["post_layernorm.weight"]
    save_file(weights, tmp_path / "tower" / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"1 weight\(s\) are not in .* start from random values: .*post_layernorm"):
        CLIPVisionEncoder({"model": str(tmp_path / "tower")})
