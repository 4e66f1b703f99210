"""Built-in modalities: image, audio and video, with their file loaders."""

from __future__ import annotations

import wave
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mmllm_sdk.components.modality import DIRECTORY, AudioClip, ModalitySpec, VideoClip
from mmllm_sdk.components.signals import SignalVocabulary
from mmllm_sdk.errors import InputError
from mmllm_sdk.hookspecs import hookimpl

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
AUDIO_SUFFIXES_SOUNDFILE = (".flac", ".ogg", ".mp3", ".aiff", ".aif")
VIDEO_SUFFIXES_AV = (".mp4", ".mov", ".avi", ".mkv", ".webm")
# what one item may decode to, so that one file cannot exhaust memory; module constants, so tests can lower them
MAX_AUDIO_SAMPLES = 1 << 28  # samples of all channels (1 GiB as float32; 46 minutes of 48 kHz stereo)
MAX_VIDEO_PIXELS = 1 << 30  # frames x height x width (3 GiB as RGB; 17 s of 1080p at 30 frames a second)


# image ---------------------------------------------------------------------------------------


def to_rgb(image: Any) -> Any:
    """Any PIL image (CMYK, 16-bit, palette, alpha, grey) or HWC uint8 array -> an RGB PIL image.

    Transparent pixels are composited over white, as a viewer shows them; 16-bit and
    float images are scaled to 8 bits from their own range.
    """
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = _array_to_image(image)
    if not isinstance(image, Image.Image):
        raise InputError(
            f"An image input must be a path, a PIL image or an HxWxC uint8 array; got {type(image).__name__}."
        )
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "L" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _array_to_image(array: np.ndarray) -> Any:
    from PIL import Image

    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(f"An image array must be HxW or HxWxC with C in 1, 3, 4; got shape {tuple(array.shape)}.")
    if array.dtype != np.uint8:
        raise InputError(
            f"An image array must be uint8 (0-255); got {array.dtype}. Convert it with (x * 255).astype('uint8')."
        )
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[array.shape[2]]
    return Image.fromarray(array[:, :, 0] if mode == "L" else array, mode=mode)


def load_image(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        image.load()  # decode fully now: a truncated file fails here, not later in a batch
        return to_rgb(image)


# audio ---------------------------------------------------------------------------------------


def load_wav(path: Path) -> AudioClip:
    """PCM WAV (8/16/24/32-bit) with the standard library, mixed down to mono float32."""
    with wave.open(str(path), "rb") as handle:
        width, channels, rate = handle.getsampwidth(), handle.getnchannels(), handle.getframerate()
        _check_samples(path, handle.getnframes() * channels)
        frames = handle.readframes(handle.getnframes())
    if width == 1:
        samples = (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        raw = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3)
        ints = raw[:, 0].astype(np.int32) | (raw[:, 1].astype(np.int32) << 8) | (raw[:, 2].astype(np.int32) << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        samples = ints.astype(np.float32) / float(1 << 23)
    elif width == 4:
        samples = np.frombuffer(frames, dtype="<i4").astype(np.float32) / float(1 << 31)
    else:
        raise InputError(
            f"The WAV file {str(path)!r} has {width * 8}-bit samples; only 8, 16, 24 and 32-bit PCM are read."
        )
    if samples.size == 0:
        raise InputError(f"The WAV file {str(path)!r} holds no samples; re-record or remove it.")
    return AudioClip(samples.reshape(-1, channels).mean(axis=1).astype(np.float32), rate)


def load_soundfile(path: Path) -> AudioClip:
    try:
        import soundfile
    except ImportError as exc:
        raise InputError(f"Reading {path.suffix} audio needs soundfile: pip install 'mmllm-sdk[audio]'.") from exc
    info = soundfile.info(str(path))
    _check_samples(path, info.frames * info.channels)
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    if samples.size == 0:
        raise InputError(f"The audio file {str(path)!r} holds no samples; re-record or remove it.")
    return AudioClip(samples.mean(axis=1).astype(np.float32), int(rate))


def _check_samples(path: Path, samples: int) -> None:
    if samples > MAX_AUDIO_SAMPLES:
        raise InputError(
            f"The audio file {str(path)!r} holds {samples:,} samples, over the {MAX_AUDIO_SAMPLES:,} one item may "
            "hold; cut it into shorter clips."
        )


def to_audio_clip(item: Any) -> AudioClip:
    """An AudioClip, a ``{"array", "sampling_rate"}`` dict (🤗 datasets) or an ``(array, rate)`` pair."""
    if isinstance(item, AudioClip):
        return item
    if isinstance(item, dict) and {"array", "sampling_rate"} <= set(item):
        array, rate = item["array"], item["sampling_rate"]
    elif isinstance(item, tuple) and len(item) == 2:
        array, rate = item
    else:
        raise InputError(
            "An audio input must be a path, an AudioClip, a {'array': ..., 'sampling_rate': ...} dict or an "
            f"(array, sampling_rate) pair; got {type(item).__name__}. A bare array is ambiguous without its rate."
        )
    samples = np.asarray(array, dtype=np.float32)
    if samples.ndim == 2:  # (T, C)
        samples = samples.mean(axis=1)
    if samples.ndim != 1 or samples.size == 0:
        raise InputError(f"Audio samples must be a non-empty 1-D (or T x channels) array; got shape {samples.shape}.")
    return AudioClip(samples, int(rate))


# video ---------------------------------------------------------------------------------------


def load_animated_image(path: Path) -> VideoClip:
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        frames = _bounded(path, (to_rgb(frame.copy()) for frame in ImageSequence.Iterator(image)))
        duration = image.info.get("duration")
    return VideoClip(frames, fps=1000.0 / duration if duration else None)


def load_av_video(path: Path) -> VideoClip:
    try:
        import av
    except ImportError as exc:
        raise InputError(f"Reading {path.suffix} video needs PyAV: pip install 'mmllm-sdk[video]'.") from exc
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = _bounded(path, (frame.to_image() for frame in container.decode(stream)))
        fps = float(stream.average_rate) if stream.average_rate else None
    if not frames:
        raise InputError(f"The video {str(path)!r} has no decodable frames.")
    return VideoClip(frames, fps=fps)


def load_frame_folder(path: Path) -> VideoClip:
    """A folder of frames, in file-name order."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"The video folder {str(path)!r} holds no image frames ({', '.join(IMAGE_SUFFIXES)}).")
    return VideoClip(_bounded(path, (IMAGE.load_file(f) for f in files)))


def _bounded(path: Path, frames: Iterable[Any]) -> list[Any]:
    """The frames (PIL images), decoded one at a time until they hold more than :data:`MAX_VIDEO_PIXELS` pixels."""
    kept, pixels = [], 0
    for frame in frames:
        pixels += frame.width * frame.height
        if pixels > MAX_VIDEO_PIXELS:
            raise InputError(
                f"The video {str(path)!r} decodes to over {MAX_VIDEO_PIXELS:,} pixels (frames x height x width) by "
                f"frame {len(kept) + 1}; cut it into shorter clips or lower its resolution."
            )
        kept.append(frame)
    return kept


def to_video_clip(item: Any) -> VideoClip:
    """A VideoClip, a list of frames (PIL images or arrays) or a (T, H, W, C) uint8 array."""
    if isinstance(item, VideoClip):
        return item
    if isinstance(item, np.ndarray) and item.ndim == 4:
        item = list(item)
    if isinstance(item, (list, tuple)) and item:
        return VideoClip([IMAGE.load(frame) for frame in item])
    raise InputError(
        f"A video input must be a path, a VideoClip, a non-empty list of frames or a (T, H, W, C) array; got {type(item).__name__}."
    )


def save_png(image: Any, path: Path) -> None:
    """A generated image as PNG."""
    if not (hasattr(image, "save") and hasattr(image, "mode")):
        raise InputError(f"A generated image must be a PIL image to be saved as PNG; got a {type(image).__name__}.")
    image.save(path, format="PNG")


def write_wav(clip: AudioClip, path: Path) -> None:
    """A generated clip as mono 16-bit PCM at its rate; samples are clipped to [-1, 1]."""
    if not isinstance(clip, AudioClip):
        raise InputError(f"Generated audio must be an AudioClip to be saved as WAV; got a {type(clip).__name__}.")
    samples = np.clip(np.asarray(clip.samples, dtype=np.float32), -1.0, 1.0)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(int(clip.sampling_rate))
        handle.writeframes((samples * 32767).round().astype("<i2").tobytes())


IMAGE = ModalitySpec(
    name="image",
    placeholder="<image>",
    loaders={suffix: load_image for suffix in IMAGE_SUFFIXES},
    normalize=to_rgb,
    saver=(".png", save_png),
    description="Still images; any PIL mode is converted to RGB.",
)
AUDIO = ModalitySpec(
    name="audio",
    placeholder="<audio>",
    loaders={".wav": load_wav, **{suffix: load_soundfile for suffix in AUDIO_SUFFIXES_SOUNDFILE}},
    normalize=to_audio_clip,
    saver=(".wav", write_wav),
    description="Mono audio clips; multi-channel audio is mixed down.",
)
VIDEO = ModalitySpec(
    name="video",
    placeholder="<video>",
    loaders={
        ".gif": load_animated_image,
        ".webp": load_animated_image,
        DIRECTORY: load_frame_folder,
        **{suffix: load_av_video for suffix in VIDEO_SUFFIXES_AV},
    },
    normalize=to_video_clip,
    description="Videos as frame sequences: animated GIF/WebP, a folder of frames, or mp4/mkv/… with PyAV.",
)


@hookimpl
def register_modalities(register):
    register(IMAGE)
    register(AUDIO)
    register(VIDEO)


@hookimpl
def register_signal_tokens(register):
    # the spec's signal_tokens sets k; these give the names: <img_0> … <img_{k-1}>, <aud_0> …, <vid_0> …
    register("image", SignalVocabulary("image", num_tokens=1, prefix="img"))
    register("audio", SignalVocabulary("audio", num_tokens=1, prefix="aud"))
    register("video", SignalVocabulary("video", num_tokens=1, prefix="vid"))
