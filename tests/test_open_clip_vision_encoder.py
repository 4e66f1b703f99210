"""open-clip-vision: shapes, the image embedding, weight files, skeletons, its cache identity and its errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

open_clip = pytest.importorskip("open_clip")  # the `vision` extra: timm, open_clip and torchvision

from test_vision_extra_encoders import CLIP, images, seed  # noqa: E402, F401 (seed: autouse)

from mmllm_sdk.components.hf import content_hash, skeleton_mode  # noqa: E402
from mmllm_sdk.default_plugins.encoders.open_clip_vision import OpenClipVisionEncoder  # noqa: E402
from mmllm_sdk.errors import SpecError  # noqa: E402


@pytest.mark.parametrize(("features", "expected"), [("spatial", (4, 384)), ("pooled", (1, 256))])
def test_open_clip_random_init_maps_two_images_to_features(features, expected):
    encoder = OpenClipVisionEncoder({**CLIP, "features": features})
    batch = encoder.preprocess(images())
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    with torch.no_grad():
        out = encoder(**batch)
    assert (encoder.modality, encoder.num_tokens, encoder.output_dim) == ("image", *expected)
    assert out.shape == (2, *expected) and torch.isfinite(out).all()
    assert encoder.reference() == {"open_clip": "ViT-S-32-alt", "config": "random"}
    assert not hasattr(encoder, "transformer")  # the text tower is dropped


def test_open_clip_pooled_feature_is_the_image_embedding():
    encoder = OpenClipVisionEncoder({**CLIP, "features": "pooled"})
    torch.manual_seed(0)
    clip, _, _ = open_clip.create_model_and_transforms("ViT-S-32-alt", force_image_size=64)
    pixels = encoder.preprocess(images())["pixel_values"]
    with torch.no_grad():
        assert torch.allclose(encoder(pixel_values=pixels)[:, 0], clip.encode_image(pixels), atol=1e-6)


@pytest.mark.parametrize("prefix", ["visual.", ""], ids=["whole-clip", "vision-tower"])
def test_open_clip_checkpoint_round_trip(prefix, tmp_path):
    source = OpenClipVisionEncoder(CLIP)
    save_file({prefix + k: v.contiguous() for k, v in source.model.state_dict().items()}, tmp_path / "clip.safetensors")
    torch.manual_seed(1)
    loaded = OpenClipVisionEncoder({**CLIP, "checkpoint": str(tmp_path / "clip.safetensors")})
    batch = source.preprocess(images())
    with torch.no_grad():
        assert torch.equal(loaded(**batch), source(**batch))
    assert loaded.reference()["sha256"] == content_hash(tmp_path / "clip.safetensors")


def test_open_clip_skeleton_has_meta_weights_and_the_real_sizes():
    with skeleton_mode():
        spatial = OpenClipVisionEncoder(CLIP)
        pretrained = OpenClipVisionEncoder({"model_name": "ViT-B-32", "pretrained": "openai", "features": "pooled"})
    assert {p.device.type for p in spatial.parameters()} == {"meta"}
    assert (spatial.num_tokens, spatial.output_dim) == (4, 384)
    assert (pretrained.num_tokens, pretrained.output_dim) == (1, 512)
    assert pretrained.reference() == {"open_clip": "ViT-B-32", "pretrained": "openai"}


def test_open_clip_cache_identity_holds_the_preprocessing():
    identity = OpenClipVisionEncoder(CLIP).cache_identity()
    assert identity["open_clip"] == open_clip.__version__
    assert tuple(identity["preprocess_cfg"]["size"]) == (64, 64)
    assert "Resize(size=64" in identity["transform"]
    assert identity["class"].endswith("OpenClipVisionEncoder") and identity["num_tokens"] == 4  # the default's part


def test_unknown_open_clip_model_and_tag_are_named():
    with pytest.raises(SpecError, match=r"no model config 'ViT-B-33'.*ViT-B-32"):
        OpenClipVisionEncoder({"model_name": "ViT-B-33"})
    with pytest.raises(SpecError, match=r"no pretrained tag 'opneai' for 'ViT-B-32'; its tags are: openai"):
        OpenClipVisionEncoder({"model_name": "ViT-B-32", "pretrained": "opneai"})


def test_open_clip_spatial_needs_a_tower_that_returns_tokens():
    with pytest.raises(SpecError, match=r"ModifiedResNet\) does not return its patch tokens.*features: pooled"):
        OpenClipVisionEncoder({"model_name": "RN50", "image_size": 64})
