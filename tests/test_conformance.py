"""The conformance kit (mmllm_sdk.testing): the built-ins pass it, and each check catches the defect it names."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mmllm_sdk.components import ModalityEncoder, ModalityGenerator, ModalitySpec
from mmllm_sdk.components.modality import AudioClip
from mmllm_sdk.components.output_projector import ConditionSpec
from mmllm_sdk.default_plugins.projectors.builtin import LinearProjector
from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.plugins import register_plugin, unregister_plugin
from mmllm_sdk.testing import (
    ConformanceError,
    check_discovered,
    check_encoder,
    check_generator,
    check_modality,
    check_projector,
    check_pt,
    tiny_clip_vision_config,
    tiny_siglip_vision_config,
    tiny_spec,
    tiny_whisper_config,
)


@pytest.fixture
def plugin():
    """Register plugin objects for one test and always remove them afterwards."""
    names = []

    def add(name: str, **hooks: Any) -> None:
        register_plugin(type(name, (), {k: staticmethod(hookimpl(v)) for k, v in hooks.items()})(), name)
        names.append(name)

    yield add
    for name in names:
        unregister_plugin(name)


def images(count: int = 3) -> list[Image.Image]:
    return [
        Image.fromarray((np.random.default_rng(i).random((40, 48, 3)) * 255).astype(np.uint8)) for i in range(count)
    ]


# the built-ins pass ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modality", "name", "params", "items"),
    [
        ("image", "hf-clip-vision", {"config": tiny_clip_vision_config()}, images()),
        ("image", "hf-siglip-vision", {"config": tiny_siglip_vision_config()}, images()),
        (
            "audio",
            "hf-whisper-encoder",
            {"config": tiny_whisper_config()},
            [
                AudioClip(np.random.default_rng(i).uniform(-0.3, 0.3, 2000 + 700 * i).astype(np.float32), 16000)
                for i in range(3)
            ],
        ),
        (
            "video",
            "video-frames",
            {
                "num_frames": 2,
                "frame_encoder": {"name": "hf-clip-vision", "params": {"config": tiny_clip_vision_config()}},
            },
            None,  # built from frames below
        ),
    ],
)
def test_the_builtin_encoders_conform(modality, name, params, items):
    if items is None:
        from mmllm_sdk.components.modality import VideoClip

        items = [VideoClip(images(3 + i)) for i in range(2)]
    encoder = check_encoder(modality, name, params, items)
    assert encoder.modality == modality


@pytest.mark.parametrize("name", ["linear", "mlp", "qformer", "resampler", "pool"])
def test_the_builtin_projectors_conform(name):
    projector = check_projector(name)
    assert projector.out_dim == 24


def test_the_builtin_image_and_audio_modalities_conform(tmp_path, image_file, wav_file):
    jpeg = tmp_path / "photo.jpg"
    images(1)[0].save(jpeg)
    loaded = check_modality("image", [image_file, jpeg])
    assert [item.size for item in loaded] == [(48, 40), (48, 40)]
    clip = check_modality("audio", [wav_file])[0]
    assert clip.sampling_rate == 16000


def test_bad_files_must_raise_the_named_error(tmp_path, image_file):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    check_modality("image", [image_file], bad_files={text: "which no loader reads"})
    with pytest.raises(ConformanceError, match=r"raised InputError without 'upside down'"):
        check_modality("image", [image_file], bad_files={text: "upside down"})


# a generator: a small real one, byte-level text conditioning and a linear decoder to RGB images -------------


class TinyImageGenerator(ModalityGenerator):
    """Captions -> (num_tokens, dim) byte embeddings; conditioning -> size x size RGB images (plus seeded noise)."""

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__()
        self.modality = "image"
        self.size = params.get("size", 8)
        self.condition_spec = ConditionSpec(num_tokens=4, dim=12)
        self.bytes = nn.Embedding(257, 12)  # 256 byte values and padding
        self.decoder = nn.Linear(4 * 12, 3 * self.size * self.size)

    def condition_targets(self, captions: list[str]) -> torch.Tensor:
        ids = torch.full((len(captions), 4), 256)
        for row, caption in enumerate(captions):
            data = list(caption.encode()[:4])
            ids[row, : len(data)] = torch.tensor(data)
        return self.bytes(ids.to(self.bytes.weight.device))  # (B, 4, 12)

    def generate(self, conditioning: torch.Tensor, **kwargs: Any) -> list[Any]:
        weight = self.decoder.weight
        pixels = self.decoder(conditioning.to(weight.device, weight.dtype).flatten(1))  # (B, 3 * S * S)
        pixels = torch.sigmoid(pixels + 0.1 * torch.randn(pixels.shape)).reshape(-1, 3, self.size, self.size)
        arrays = (pixels.permute(0, 2, 3, 1) * 255).to(torch.uint8).cpu().numpy()
        return [Image.fromarray(array) for array in arrays]


def test_a_generator_that_keeps_its_contract_conforms(plugin):
    plugin("tiny-gen", register_generators=lambda register: register("image", "tiny-gen", TinyImageGenerator))
    generator = check_generator("image", "tiny-gen", {"size": 8})
    assert generator.condition_spec == ConditionSpec(4, 12)


def test_a_generator_whose_output_count_is_wrong_fails(plugin):
    class OneImage(TinyImageGenerator):
        def generate(self, conditioning, **kwargs):
            return super().generate(conditioning)[:1]

    plugin("one-image", register_generators=lambda register: register("image", "one-image", OneImage))
    with pytest.raises(ConformanceError, match=r"generate\(\) on 2 conditionings returned 1 items"):
        check_generator("image", "one-image")


# each check catches its defect ----------------------------------------------------------------------------


class PatchEncoder(ModalityEncoder):
    """A tiny image encoder (4 patches of a 16x16 grey image) to break in the tests below."""

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__()
        self.modality, self.num_tokens, self.output_dim = "image", 4, 8
        self.embed = nn.Linear(64, 8)

    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        pixels = [np.asarray(item.convert("L").resize((16, 16)), dtype=np.float32) / 255 for item in items]
        return {"pixels": torch.from_numpy(np.stack(pixels))}  # (B, 16, 16)

    def patches(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.embed.weight.dtype)
        return pixels.reshape(-1, 2, 8, 2, 8).permute(0, 1, 3, 2, 4).reshape(-1, 4, 64)  # (B, 4, 64)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed(self.patches(pixels))  # (B, 4, 8)


def test_a_well_behaved_encoder_conforms(plugin):
    plugin("patch", register_encoders=lambda register: register("image", "patch", PatchEncoder))
    assert check_encoder("image", "patch", {}, images()).num_tokens == 4


class BatchNormalised(PatchEncoder):
    def forward(self, pixels):
        features = super().forward(pixels)
        return features - features.mean(dim=0)  # depends on the other items of the batch


class PlainTensor(PatchEncoder):
    def __init__(self, params):
        super().__init__(params)
        self.scale = torch.ones(8)  # not a buffer: .to() leaves it behind

    def forward(self, pixels):
        return super().forward(pixels) * self.scale.to(pixels.device)


class NoCast(PatchEncoder):
    def forward(self, pixels):
        return self.embed(pixels.reshape(-1, 2, 8, 2, 8).permute(0, 1, 3, 2, 4).reshape(-1, 4, 64))


class Noisy(PatchEncoder):
    def forward(self, pixels):
        return super().forward(pixels) + torch.rand(1)


class WrongShape(PatchEncoder):
    def forward(self, pixels):
        return super().forward(pixels)[:, :3]


class LoadsInSkeleton(PatchEncoder):
    def __init__(self, params):
        super().__init__(params)
        self.register_buffer("table", torch.zeros(3, device="cpu"))


class RandomInit(PatchEncoder):
    def __init__(self, params):
        super().__init__(params)
        # a parameter whose size depends on the random seed: the state dicts of two builds differ
        self.extra = nn.Parameter(torch.zeros(1 + torch.initial_seed() % 3))


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        (BatchNormalised, r"item 0 alone and in a batch do not match"),
        (PlainTensor, r"holds the tensor 'scale' as a plain attribute"),
        (NoCast, r"after \.to\(torch\.float64\) it fails"),
        (Noisy, r"is not deterministic in eval mode"),
        (WrongShape, r"returned shape \(3, 3, 8\); expected \(B, num_tokens, output_dim\) = \(3, 4, 8\)"),
        (LoadsInSkeleton, r"in skeleton mode its factory created tensors on cpu"),
        (RandomInit, r"does not load back into a freshly built instance"),
    ],
)
def test_an_encoder_that_breaks_its_contract_fails_with_the_check_named(plugin, encoder, message):
    plugin("broken", register_encoders=lambda register: register("image", "broken", encoder))
    with pytest.raises(ConformanceError, match=message):
        check_encoder("image", "broken", {}, images())


def test_a_projector_with_an_unused_parameter_fails(plugin):
    class Unused(LinearProjector):
        def __init__(self, in_dim, out_dim, num_input_tokens, params):
            super().__init__(in_dim, out_dim, num_input_tokens, params)
            self.spare = nn.Linear(2, 2)

    plugin("unused", register_projectors=lambda register: register("unused", Unused))
    with pytest.raises(ConformanceError, match=r"spare.weight, spare.bias get no gradient"):
        check_projector("unused")


def test_a_loader_that_accepts_garbage_fails(plugin, tmp_path):
    raw = ModalitySpec("raw", "<raw>", loaders={".raw": lambda path: path.read_bytes()})
    plugin("raw", register_modalities=lambda register: register(raw))
    good = tmp_path / "a.raw"
    good.write_bytes(b"\x01\x02")
    with pytest.raises(ConformanceError, match=r"a \.raw file of garbage bytes loaded without an error"):
        check_modality("raw", [good])


def test_a_plugin_that_is_not_installed_is_not_discovered():
    with pytest.raises(
        ConformanceError, match=r"plugin 'mmllm-nowhere' is not among the plugins 'mmllm plugins' finds"
    ):
        check_discovered("mmllm-nowhere")


# check_pt -------------------------------------------------------------------------------------------------

SHAPES = {"dataset": "synthetic-shapes", "params": {"task": "captions", "num_examples": 8, "image_size": 32}}


def test_check_pt_passes_when_a_short_pt_run_lowers_the_caption_loss(tmp_path, tokenizer_dir):
    spec = tiny_spec(tokenizer_dir, initializer_range=0.2)
    data = {**SHAPES, "params": {**SHAPES["params"], "out_dir": str(tmp_path / "shapes")}}
    check = check_pt(spec, data, tmp_path / "run")
    assert check.loss_after <= check.loss_before - 0.5
    assert {n.split(".")[0] for n, p in check.result.model.named_parameters() if p.requires_grad} == {
        "input_projectors"
    }


def test_check_pt_fails_when_the_loss_barely_moves(tmp_path, tokenizer_dir):
    spec = tiny_spec(tokenizer_dir)  # initializer_range 0.02: nearly uniform logits that no soft prompt moves far
    data = {**SHAPES, "params": {**SHAPES["params"], "out_dir": str(tmp_path / "shapes")}}
    with pytest.raises(ConformanceError, match=r"PT lowered the caption loss from \S+ to \S+, by less than 0.5"):
        check_pt(spec, data, tmp_path / "run", steps=4)
