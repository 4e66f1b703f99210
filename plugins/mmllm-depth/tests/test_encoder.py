"""depth-vit: the conformance kit, units, the RGB -> one-channel conversion, skeleton mode and its errors."""

import numpy as np
import pytest
import torch
from mmllm_sdk import build_model
from mmllm_sdk.components.hf import skeleton_mode
from mmllm_sdk.errors import InputError, SpecError
from mmllm_sdk.testing import check_encoder, tiny_spec
from samples import TINY_VISION, save_png16, scene_millimetres, tiny_encoder_params

from mmllm_depth import DEPTH, DepthMap
from mmllm_depth.encoder import DepthViTEncoder, patch_embedding


@pytest.fixture
def items(depth_files):
    return [DEPTH.load(path) for path in (depth_files["png"], depth_files["npy_mm"])]


@pytest.fixture
def rgb_tower(tmp_path):
    """A folder holding a random three-channel CLIP vision tower, as save_pretrained writes it."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION))
    model.save_pretrained(tmp_path / "rgb-tower")
    return tmp_path / "rgb-tower", model


def test_depth_vit_passes_the_conformance_kit(items):
    encoder = check_encoder("depth", "depth-vit", tiny_encoder_params(), items)
    assert encoder.num_tokens == (32 // 8) ** 2 and encoder.output_dim == 24
    assert patch_embedding(encoder.model).in_channels == 1
    assert encoder.reference() == {"config": TINY_VISION}


def test_depth_representation_passes_the_conformance_kit(items):
    params = tiny_encoder_params(representation="depth", units="mm", max_depth=4.0, feature_layer=-2)
    check_encoder("depth", "depth-vit", params, items)


def test_millimetres_and_metres_give_the_same_features(tmp_path):
    millimetres = scene_millimetres()
    png = DEPTH.load(save_png16(tmp_path / "scene.png", millimetres))
    np.save(tmp_path / "scene.npy", millimetres.astype(np.float32) / 1000.0)
    npy = DEPTH.load(tmp_path / "scene.npy")
    torch.manual_seed(0)
    in_mm = DepthViTEncoder(tiny_encoder_params(units="mm")).eval()
    in_m = DepthViTEncoder(tiny_encoder_params(units="m")).eval()
    in_m.load_state_dict(in_mm.state_dict())
    with torch.no_grad():
        features_mm = in_mm(**in_mm.preprocess([png]))
        features_m = in_m(**in_m.preprocess([npy]))
        wrong_units = in_mm(**in_mm.preprocess([npy]))  # metres read as millimetres: everything 1000x nearer
    torch.testing.assert_close(features_m, features_mm, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(wrong_units, features_mm, atol=1e-3)


def test_preprocess_scales_clips_and_keeps_missing_depth_at_zero():
    values = np.full((8, 8), 2000.0, dtype=np.float32)  # 2 m everywhere ...
    values[:4] = 0.0  # ... but the top half missing
    values[:4, :4] = 0.0
    item = DepthMap(values=values, integer=True)
    disparity = DepthViTEncoder(tiny_encoder_params(mean=0.0, std=1.0, min_depth=0.5))
    depth = DepthViTEncoder(tiny_encoder_params(representation="depth", mean=0.0, std=1.0, max_depth=4.0))
    far = DepthViTEncoder(tiny_encoder_params(representation="depth", mean=0.5, std=0.25, max_depth=1.0))
    x = disparity.preprocess([item])["depth_values"]  # (1, 1, 32, 32)
    assert x.shape == (1, 1, 32, 32)
    torch.testing.assert_close(x[0, 0, -8:], torch.full((8, 32), 0.25))  # 0.5 m / 2 m
    torch.testing.assert_close(x[0, 0, :8], torch.zeros(8, 32))  # missing stays 0
    torch.testing.assert_close(depth.preprocess([item])["depth_values"][0, 0, -8:], torch.full((8, 32), 0.5))
    torch.testing.assert_close(far.preprocess([item])["depth_values"][0, 0, -8:], torch.full((8, 32), 2.0))  # clipped


def test_a_model_folder_of_an_rgb_tower_loads_with_one_summed_channel(rgb_tower):
    folder, rgb = rgb_tower
    encoder = DepthViTEncoder({"model": str(folder)})
    weight = patch_embedding(encoder.model).weight  # (D, 1, P, P)
    assert weight.shape == (24, 1, 8, 8)
    torch.testing.assert_close(weight, patch_embedding(rgb).weight.sum(dim=1, keepdim=True))
    assert encoder.model.config.num_channels == 1
    assert encoder.reference()["model"] == str(folder) and "sha256" in encoder.reference()
    grey = torch.rand(1, 1, 32, 32)
    with torch.no_grad():  # a grey image: the RGB tower on three equal channels == the depth tower on one
        expected = rgb(pixel_values=grey.expand(1, 3, 32, 32), output_hidden_states=True).hidden_states[-1][:, 1:]
        torch.testing.assert_close(encoder.eval()(depth_values=grey), expected, rtol=1e-4, atol=1e-5)


def test_a_model_folder_builds_in_skeleton_mode_without_reading_weights(rgb_tower):
    folder, _ = rgb_tower
    (folder / "model.safetensors").write_bytes(b"not weights")  # would fail if anything read it
    with skeleton_mode():
        encoder = DepthViTEncoder({"model": str(folder)})
    weight = patch_embedding(encoder.model).weight
    assert weight.device.type == "meta" and weight.shape == (24, 1, 8, 8)
    assert (encoder.num_tokens, encoder.output_dim) == (16, 24)


def test_a_feature_layer_out_of_range_is_a_spec_error():
    with pytest.raises(SpecError, match="feature_layer is 3, but this vision tower has 2 layers"):
        DepthViTEncoder(tiny_encoder_params(feature_layer=3))


def test_a_config_with_three_channels_is_a_spec_error():
    with pytest.raises(SpecError, match="depth-vit takes one channel"):
        DepthViTEncoder({"config": {**TINY_VISION, "num_channels": 3}})


def test_a_spec_with_unknown_units_fails_validation_with_its_path(tokenizer_dir):
    encoder = {"name": "depth-vit", "params": tiny_encoder_params(units="cm")}
    spec = tiny_spec(tokenizer_dir, encoders={"depth": encoder})
    with pytest.raises(SpecError, match=r"inputs\.depth\.encoder\.params\.units"):
        build_model(spec, skeleton=True, progress=False)


def test_min_depth_beyond_max_depth_is_a_spec_error():
    with pytest.raises(SpecError, match=r"min_depth .* must be less than max_depth"):
        DepthViTEncoder(tiny_encoder_params(min_depth=12.0))


def test_preprocess_refuses_what_is_not_a_depth_map():
    encoder = DepthViTEncoder(tiny_encoder_params())
    with pytest.raises(InputError, match="encoder 'depth-vit': item 1 is a ndarray"):
        encoder.preprocess([DEPTH.load(scene_millimetres()), scene_millimetres()])
    bad = DepthMap(values=np.full((4, 4), np.nan, dtype=np.float32), integer=False)
    with pytest.raises(InputError, match="encoder 'depth-vit': item 0 has 16 non-finite values"):
        encoder.preprocess([bad])
    with pytest.raises(InputError, match="got no items"):
        encoder.preprocess([])
