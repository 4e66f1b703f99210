"""Built-in modality encoders: CLIP and SigLIP vision towers and the Whisper audio encoder."""

from __future__ import annotations

import importlib.util
import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from mmllm_sdk.components.encoder import ModalityEncoder
from mmllm_sdk.components.hf import HFSource, cached_call, is_skeleton, load_model
from mmllm_sdk.components.hf import reference as hf_reference
from mmllm_sdk.components.modality import AudioClip
from mmllm_sdk.errors import InputError, SpecError
from mmllm_sdk.validation import validate

# Band-limited resampling (see resample_audio).
RESAMPLE_ZERO_CROSSINGS = 16  # sinc lobes each side of the kernel centre: a sharper cut-off for more work
RESAMPLE_ROLLOFF = 0.945  # pass band as a fraction of the lower Nyquist frequency; the rest is transition band
RESAMPLE_KAISER_BETA = 8.6  # Kaiser window shape: about 80 dB of stop-band attenuation
RESAMPLE_CHUNK = 16_384  # output samples computed at once: memory is chunk x taps


def _check_items(items: list[Any], expected: type, noun: str, where: str) -> None:
    """Raise InputError unless ``items`` is a non-empty list of ``expected``."""
    if not items:
        raise InputError(f"{where}: preprocess() got no items; pass a non-empty list of {noun}s.")
    for index, item in enumerate(items):
        if not isinstance(item, expected):
            raise InputError(
                f"{where}: item {index} is a {type(item).__name__}, but this encoder takes {noun}s "
                f"({expected.__name__}); load inputs through the modality's loaders (ModalitySpec.load)."
            )


def _pretrained_processor(processor_cls: Any, source: HFSource, what: str) -> Any:
    """A preprocessor (image processor, feature extractor) saved next to the weights in ``source.model``."""
    kwargs = {"revision": source.revision} if source.revision else {}
    return cached_call(what, processor_cls.from_pretrained, source.model, **kwargs)


# image: Hugging Face vision towers ----------------------------------------------------------


def image_processor_class(name: str) -> Any:
    """transformers' image processor ``name``, or its PIL twin ``name + "Pil"`` when torchvision is missing.

    transformers v5 backs the plain class with torchvision and falls back (with a warning)
    to the PIL class without it; picking the PIL class ourselves gives the same result quietly.
    """
    import transformers

    suffix = "" if importlib.util.find_spec("torchvision") is not None else "Pil"
    return getattr(transformers, name + suffix)


class VisionTowerParams(HFSource):
    """Params shared by the Hugging Face vision towers."""

    feature_layer: int = (
        -1
    )  # index into hidden_states (0: the embeddings, then one per layer), as LLaVA's vision_feature_layer


class HFVisionEncoder(ModalityEncoder):
    """A Hugging Face vision tower whose hidden states at ``feature_layer`` are the features (as LLaVA).

    Subclasses name the transformers classes and say how many tokens precede the patches
    (a CLS token) and which of them are kept. The HF model is ``self.model``.
    """

    name: ClassVar[str]
    model_class: ClassVar[str]  # "CLIPVisionModel"
    config_class: ClassVar[str]  # "CLIPVisionConfig"
    processor_class: ClassVar[str]  # "CLIPImageProcessor" (the PIL twin is picked without torchvision)
    prefix_tokens: ClassVar[int] = 0  # tokens before the patch tokens in hidden_states (CLIP's CLS: 1)
    Params: ClassVar[type[VisionTowerParams]] = VisionTowerParams

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__()
        import transformers

        where = f"{self.name}.params"
        self.params = validate(self.Params, params or {}, where=where)
        what = f"encoder {self.name!r}"
        self.model = load_model(
            getattr(transformers, self.model_class), getattr(transformers, self.config_class), self.params, what
        )
        config = self.model.config
        self.feature_layer = _check_feature_layer(self.params.feature_layer, config.num_hidden_layers, where)
        self.skip_tokens = self.prefix_tokens - self.kept_prefix_tokens()  # dropped from the front of the sequence
        self.modality = "image"
        self.output_dim = config.hidden_size  # D
        self.num_tokens = (config.image_size // config.patch_size) ** 2 + self.kept_prefix_tokens()  # N
        processor_cls = image_processor_class(self.processor_class)
        if self.params.model is not None:
            self.image_processor = _pretrained_processor(processor_cls, self.params, what)
        else:
            self.image_processor = processor_cls(**self.processor_kwargs(config.image_size))

    def kept_prefix_tokens(self) -> int:
        """How many of the ``prefix_tokens`` the features keep (0: patch tokens only)."""
        return 0

    def processor_kwargs(self, image_size: int) -> dict[str, Any]:
        """Image processor settings for a ``config:`` tower (a pretrained one brings its own)."""
        return {"size": {"height": image_size, "width": image_size}}

    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        from PIL import Image

        _check_items(items, Image.Image, "RGB PIL image", f"encoder {self.name!r}")
        pixel_values = self.image_processor(images=items, return_tensors="pt")["pixel_values"]  # (B, 3, H, W)
        return {"pixel_values": pixel_values}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(device=self.model.device, dtype=self.model.dtype)  # (B, 3, H, W)
        outputs = self.model(pixel_values=pixel_values, output_hidden_states=True)
        hidden = outputs.hidden_states[self.feature_layer]  # (B, prefix_tokens + P, D)
        return hidden[:, self.skip_tokens :]  # (B, N, D)

    def reference(self) -> dict[str, Any]:
        return hf_reference(self.params)


def _check_feature_layer(layer: int, num_layers: int, where: str) -> int:
    entries = num_layers + 1  # hidden_states: the embeddings, then every layer's output
    if not -entries <= layer < entries:
        raise SpecError(
            f"{where}.feature_layer is {layer}, but this vision tower has {num_layers} layers, so hidden_states "
            f"has {entries} entries (the embeddings, then one per layer). Use an index from {-entries} to "
            f"{entries - 1}; -2 is the penultimate layer, as in LLaVA."
        )
    return layer


class CLIPVisionEncoder(HFVisionEncoder):
    """``hf-clip-vision``: a CLIP ViT; the penultimate layer's patch tokens by default (LLaVA-1.5)."""

    name = "hf-clip-vision"
    model_class = "CLIPVisionModel"
    config_class = "CLIPVisionConfig"
    processor_class = "CLIPImageProcessor"
    prefix_tokens = 1  # the CLS token

    class Params(VisionTowerParams):
        feature_layer: int = -2  # index into hidden_states, as LLaVA's vision_feature_layer
        select: Literal["patch", "cls_patch"] = (
            "patch"  # patch: drop CLS (LLaVA "default"); cls_patch: keep it ("full")
        )

    def kept_prefix_tokens(self) -> int:
        return 1 if self.params.select == "cls_patch" else 0

    def processor_kwargs(self, image_size: int) -> dict[str, Any]:
        # CLIP's recipe: shortest edge to image_size, then a centre crop; the class brings CLIP's mean/std
        return {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}}


class SiglipVisionEncoder(HFVisionEncoder):
    """``hf-siglip-vision``: a SigLIP ViT (no CLS token); the last layer's patch tokens by default."""

    name = "hf-siglip-vision"
    model_class = "SiglipVisionModel"
    config_class = "SiglipVisionConfig"
    processor_class = "SiglipImageProcessor"

    class Params(VisionTowerParams):
        feature_layer: int = -1  # index into hidden_states


# audio: Whisper -------------------------------------------------------------------------------


def resampled_length(num_samples: int, from_rate: int, to_rate: int) -> int:
    """How many samples ``num_samples`` at ``from_rate`` Hz become at ``to_rate`` Hz (rounded)."""
    return (num_samples * to_rate + from_rate // 2) // from_rate


def resample_audio(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling by windowed-sinc interpolation (Kaiser window), in numpy.

    Each output sample is a weighted sum of the input samples within ``RESAMPLE_ZERO_CROSSINGS``
    lobes of a sinc whose cut-off is ``RESAMPLE_ROLLOFF`` times the lower of the two Nyquist
    frequencies, so downsampling does not alias (linear interpolation would). This is the
    method of resampy and torchaudio's ``sinc_interp_kaiser``; the weights are computed once per
    phase of the rate ratio (polyphase), so 30 s of 44.1 kHz audio takes a fraction of a second.
    Samples beyond either end count as silence. Returns float32 of ``resampled_length(...)`` samples.
    """
    if min(from_rate, to_rate) <= 0 or from_rate != int(from_rate) or to_rate != int(to_rate):
        raise InputError(
            f"Sampling rates must be positive whole numbers of Hz; got {from_rate} Hz -> {to_rate} Hz; fix the clip's sampling_rate."
        )
    from_rate, to_rate = int(from_rate), int(to_rate)
    signal = np.asarray(samples, dtype=np.float64)  # (T_in,)
    if from_rate == to_rate:
        return signal.astype(np.float32)
    cutoff = RESAMPLE_ROLLOFF * min(1.0, to_rate / from_rate)  # as a fraction of the input Nyquist frequency
    half_width = RESAMPLE_ZERO_CROSSINGS / cutoff  # kernel half-width in input samples
    reach = int(np.ceil(half_width))
    offsets = np.arange(-reach + 1, reach + 1)  # (K,) taps after floor(position)
    padded = np.pad(signal, (reach, reach + 1)).astype(np.float32)  # silence beyond the ends
    num_out = resampled_length(len(signal), from_rate, to_rate)
    # Output n sits at input position n * down / up; its fractional part repeats every `up`
    # outputs, so the kernel weights are computed once per phase (polyphase).
    divisor = math.gcd(from_rate, to_rate)
    up, down = to_rate // divisor, from_rate // divisor
    phases = np.arange(min(up, num_out), dtype=np.int64)
    fraction = (phases * down % up) / up  # (P,) in [0, 1)
    distance = fraction[:, None] - offsets  # (P, K) from each tap to the output position
    weights = (cutoff * np.sinc(cutoff * distance) * _kaiser(distance / half_width)).astype(np.float32)  # (P, K)
    out = np.empty(num_out, dtype=np.float32)  # (T_out,)
    for start in range(0, num_out, RESAMPLE_CHUNK):
        n = np.arange(start, min(start + RESAMPLE_CHUNK, num_out), dtype=np.int64)  # (n,)
        taps = (n * down // up)[:, None] + offsets + reach  # (n, K) indices into padded
        out[start : start + len(n)] = np.einsum("nk,nk->n", weights[n % up], padded[taps])
    return out


def _kaiser(x: np.ndarray) -> np.ndarray:
    """The continuous Kaiser window on [-1, 1] (0 outside)."""
    inside = np.clip(1.0 - x * x, 0.0, None)
    return np.where(np.abs(x) <= 1.0, np.i0(RESAMPLE_KAISER_BETA * np.sqrt(inside)) / np.i0(RESAMPLE_KAISER_BETA), 0.0)


class WhisperAudioEncoder(ModalityEncoder):
    """``hf-whisper-encoder``: Whisper's encoder over log-mel features of one fixed-length window.

    Clips are resampled to the feature extractor's rate and padded with silence to the
    window (2 * max_source_positions mel frames: 30 s for the released models); a longer
    clip is an error, never truncated. Every item gives ``max_source_positions`` tokens.
    The HF encoder (``WhisperModel.encoder``; the decoder is dropped) is ``self.model``.
    """

    name: ClassVar[str] = "hf-whisper-encoder"

    class Params(HFSource):
        """Where the Whisper weights come from (``model:``) or the config to build (``config:``)."""

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__()
        from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        self.params = validate(self.Params, params or {}, where=f"{self.name}.params")
        what = f"encoder {self.name!r}"
        if self.params.config is not None or is_skeleton():
            self.model = load_model(WhisperEncoder, WhisperConfig, self.params, what)  # no decoder to build
        else:
            whole = load_model(WhisperModel, WhisperConfig, self.params, what)
            self.model = whole.encoder
            del whole  # the decoder goes with it
        config = self.model.config
        self.modality = "audio"
        self.output_dim = config.d_model  # D
        self.num_tokens = config.max_source_positions  # N
        if self.params.model is not None:
            extractor = _pretrained_processor(WhisperFeatureExtractor, self.params, what)
        else:
            extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
        # The encoder takes exactly 2 * max_source_positions mel frames (its two convs halve them once).
        extractor.n_samples = config.max_source_positions * 2 * extractor.hop_length
        extractor.nb_max_frames = extractor.n_samples // extractor.hop_length
        self.feature_extractor = extractor

    @property
    def max_seconds(self) -> float:
        """The longest clip one item may be, in seconds."""
        return self.feature_extractor.n_samples / self.feature_extractor.sampling_rate

    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        where = f"encoder {self.name!r}"
        _check_items(items, AudioClip, "audio clip", where)
        rate, window = self.feature_extractor.sampling_rate, self.feature_extractor.n_samples
        waves = []
        for index, clip in enumerate(items):
            if resampled_length(len(clip.samples), clip.sampling_rate, rate) > window:
                raise InputError(
                    f"{where}: audio item {index} is {clip.seconds:.2f} s long, but this Whisper encoder takes at most "
                    f"{self.max_seconds:.2f} s per clip (max_source_positions={self.num_tokens}). Split the clip into "
                    f"pieces of at most {self.max_seconds:.2f} s and pass each as its own audio input."
                )
            waves.append(resample_audio(clip.samples, clip.sampling_rate, rate))
        features = self.feature_extractor(
            waves,
            sampling_rate=rate,
            padding="max_length",
            max_length=window,
            truncation=False,
            return_attention_mask=False,
            return_tensors="pt",
        )
        return {"input_features": features["input_features"]}  # (B, num_mel_bins, 2 * max_source_positions)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        input_features = input_features.to(device=self.model.device, dtype=self.model.dtype)  # (B, M, 2N)
        return self.model(input_features=input_features).last_hidden_state  # (B, N, D)

    def reference(self) -> dict[str, Any]:
        return hf_reference(self.params)
