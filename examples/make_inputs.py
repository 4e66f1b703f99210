"""Regenerate the sample inputs in ``examples/inputs/``, byte for byte (numpy, Pillow and the standard library only).

    python examples/make_inputs.py            # rewrites examples/inputs/
    python examples/make_inputs.py OUT_DIR    # writes the same files into OUT_DIR

One file per built-in modality, readable without any extra (``mmllm chat CKPT --input
image=examples/inputs/red-circle.png "question"``), and one for the docs' ECG plugin:

``red-circle.png``, ``blue-square.png``, ``green-triangle.png``, ``yellow-star.png`` (image)
    224 x 224 RGB scenes from the SDK's own shape renderer (``mmllm_sdk.default_plugins.datasets.shapes``): one
    shape in the centre cell of the 3 x 3 grid, on a neutral grey background (plain or
    striped). They are the first held-out scenes of seed 0 with that shape, colour and
    position, so the checkpoint ``mmllm demo`` trains has never seen them and can be asked
    about them ("What colour is the shape?"). Written by this script's own PNG writer (Python's
    zlib, not Pillow's encoder), so the bytes depend on the pixels only.
``tone.wav`` (audio)
    0.5 s of a bell at 880 Hz (three partials, exponential decay), 16 kHz, mono, 16-bit PCM:
    the rate Whisper-style audio encoders expect.
``bouncing-ball.gif`` (video)
    8 frames of 64 x 64 pixels, 10 frames a second, looping: a red ball falling onto a floor
    and bouncing back. A palette image, so no colour quantisation is involved.
``patient.npy`` (the ``ecg`` modality of docs/writing-plugins.md)
    A synthetic 12-lead electrocardiogram: a ``(512, 12)`` float32 array in millivolts,
    250 samples a second (2.05 s, three beats at 75 beats a minute), leads in the order
    I, II, III, aVR, aVL, aVF, V1-V6. Leads III, aVR, aVL and aVF follow from I and II by
    Einthoven's and Goldberger's relations; a little baseline wander and seeded noise are added.
    It is what ``mmllm chat runs/ecg-pt --input ecg=patient.npy "Describe this recording."``
    reads once the page's ``mmllm-ecg`` plugin (``mmllm new-plugin ecg --set channels=12``) is installed.

Every file is a function of this script alone: running it twice, or on another machine,
writes the same bytes (``tests/test_examples.py`` checks that against the committed files).
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
import wave
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mmllm_sdk.default_plugins.datasets.shapes import generate_scene

INPUTS = Path(__file__).resolve().parent / "inputs"

# shape images --------------------------------------------------------------------------------------------------

SHAPE_IMAGES = {  # file name -> (shape, colour); each drawn in the centre cell
    "red-circle.png": ("circle", "red"),
    "blue-square.png": ("square", "blue"),
    "green-triangle.png": ("triangle", "green"),
    "yellow-star.png": ("star", "yellow"),
}
IMAGE_SIZE = 224
SCENE_SEED = 0
MAX_SCENES = 5000  # how far to look for a matching scene; each is found within the first thousand
PNG_COMPRESSION = 9  # zlib level: fixed, so the same pixels give the same file


def png_bytes(image) -> bytes:
    """An RGB image as PNG bytes: no metadata, filter 0 on every row, zlib level 9 (Python's own zlib).

    Written here rather than by Pillow so that the committed files depend only on the pixels and on
    zlib's deflate (stable across zlib 1.2 and 1.3), not on Pillow's encoder or the zlib it bundles.
    """
    array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    height, width, _ = array.shape
    rows = np.concatenate([np.zeros((height, 1), dtype=np.uint8), array.reshape(height, width * 3)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, filter set 0, no interlace
    chunks = [(b"IHDR", header), (b"IDAT", zlib.compress(rows.tobytes(), PNG_COMPRESSION)), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data)) for tag, data in chunks
    )


def shape_image(shape: str, colour: str) -> bytes:
    """The first held-out one-shape scene of seed 0 showing ``colour`` ``shape`` in the centre, as PNG bytes."""
    for index in range(MAX_SCENES):
        image, scene = generate_scene(SCENE_SEED, index, IMAGE_SIZE, num_shapes=1, split="heldout")
        drawn = scene.shapes[0]
        if (drawn.shape, drawn.colour, drawn.position) == (shape, colour, "center"):
            return png_bytes(image)
    raise RuntimeError(
        f"None of the first {MAX_SCENES} held-out scenes shows a {colour} {shape} in the center; "
        "the shape renderer has changed, so raise MAX_SCENES or pick another scene."
    )


# audio ---------------------------------------------------------------------------------------------------------

SAMPLE_RATE = 16_000
TONE_SECONDS = 0.5
BELL_PARTIALS = ((880.0, 1.0), (1760.0, 0.4), (2640.0, 0.2))  # (frequency in Hz, relative amplitude)
BELL_DECAY = 6.0  # per second: the bell fades to about 5 % by the end
PEAK = 0.6  # of full scale


def bell_wav() -> bytes:
    """A 16 kHz mono 16-bit WAV of a decaying bell."""
    t = np.arange(round(SAMPLE_RATE * TONE_SECONDS)) / SAMPLE_RATE
    wave_sum = sum(amplitude * np.sin(2 * np.pi * frequency * t) for frequency, amplitude in BELL_PARTIALS)
    signal = wave_sum * np.exp(-BELL_DECAY * t)
    signal *= PEAK / np.abs(signal).max()
    samples = np.round(signal * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE)
        handle.writeframes(samples.tobytes())
    return buffer.getvalue()


# video ---------------------------------------------------------------------------------------------------------

GIF_SIZE, GIF_FRAMES, FRAME_MS = 64, 8, 100
BALL_RADIUS = 7
FLOOR_Y = 56  # the floor's top row
GIF_PALETTE = (235, 235, 235, 220, 38, 38, 90, 90, 90)  # index 0 background, 1 the ball, 2 the floor


def bouncing_ball_gif() -> bytes:
    """An animated GIF: a ball on a parabola from the top, hitting the floor at frame 4 and rising again."""
    from PIL import Image, ImageDraw

    frames = []
    lowest = FLOOR_Y - BALL_RADIUS - 1  # the ball's centre when it touches the floor
    highest = BALL_RADIUS + 2
    for k in range(GIF_FRAMES):
        phase = abs(k - GIF_FRAMES // 2)  # 4 3 2 1 0 1 2 3: distance in frames from the bounce
        y = lowest - (lowest - highest) * phase * phase // (GIF_FRAMES // 2) ** 2  # integers only
        x = 8 + k * (GIF_SIZE - 16) // (GIF_FRAMES - 1)
        frame = Image.new("P", (GIF_SIZE, GIF_SIZE), 0)
        frame.putpalette(GIF_PALETTE)
        draw = ImageDraw.Draw(frame)
        draw.rectangle([0, FLOOR_Y, GIF_SIZE - 1, GIF_SIZE - 1], fill=2)
        draw.ellipse([x - BALL_RADIUS, y - BALL_RADIUS, x + BALL_RADIUS, y + BALL_RADIUS], fill=1)
        frames.append(frame)
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:], duration=FRAME_MS, loop=0, optimize=False
    )
    return buffer.getvalue()


# ECG -----------------------------------------------------------------------------------------------------------

ECG_RATE, ECG_SAMPLES = 250, 512  # samples per second, samples
HEART_RATE = 75  # beats per minute
FIRST_BEAT_S = 0.3  # the first R peak
# one beat in lead II as Gaussian waves: (name, amplitude in mV, offset from the R peak in s, width in s)
BEAT = (
    ("P", 0.15, -0.20, 0.025),
    ("Q", -0.10, -0.035, 0.008),
    ("R", 1.20, 0.0, 0.010),
    ("S", -0.25, 0.035, 0.008),
    ("T", 0.30, 0.25, 0.040),
)
LEAD_I_GAIN = 0.6  # lead I as a share of lead II's beat (the heart's axis is about 60 degrees)
CHEST_GAINS = (-0.5, 0.3, 0.8, 1.2, 1.0, 0.7)  # V1-V6: deep S in V1, the R wave growing towards V4
WANDER_MV, WANDER_HZ = 0.05, 0.3  # baseline wander (breathing)
NOISE_MV = 0.01
RESOLUTION_MV = 0.001  # values are rounded to a microvolt, as an ECG recorder stores them


def patient_npy() -> bytes:
    """A (512, 12) float32 12-lead ECG in millivolts, as .npy bytes."""
    t = np.arange(ECG_SAMPLES) / ECG_RATE
    period = 60.0 / HEART_RATE
    beat = np.zeros_like(t)
    peak = FIRST_BEAT_S
    while peak - 0.5 < t[-1]:
        for _name, amplitude, offset, width in BEAT:
            beat += amplitude * np.exp(-0.5 * ((t - peak - offset) / width) ** 2)
        peak += period
    wander = WANDER_MV * np.sin(2 * np.pi * WANDER_HZ * t)
    lead_ii = beat + wander
    lead_i = LEAD_I_GAIN * beat + 0.5 * wander
    limb = [
        lead_i,
        lead_ii,
        lead_ii - lead_i,  # III (Einthoven)
        -(lead_i + lead_ii) / 2,  # aVR (Goldberger)
        lead_i - lead_ii / 2,  # aVL
        lead_ii - lead_i / 2,  # aVF
    ]
    chest = [gain * beat + wander for gain in CHEST_GAINS]
    signal = np.stack(limb + chest, axis=1)
    signal += np.random.default_rng(0).normal(0.0, NOISE_MV, size=signal.shape)
    signal = np.round(signal / RESOLUTION_MV) * RESOLUTION_MV
    buffer = io.BytesIO()
    np.save(buffer, signal.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------------


def all_inputs() -> dict[str, Callable[[], bytes]]:
    """File name -> the function that makes its bytes."""
    makers: dict[str, Callable[[], bytes]] = {
        name: (lambda shape=shape, colour=colour: shape_image(shape, colour))
        for name, (shape, colour) in SHAPE_IMAGES.items()
    }
    makers["tone.wav"] = bell_wav
    makers["bouncing-ball.gif"] = bouncing_ball_gif
    makers["patient.npy"] = patient_npy
    return makers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the sample inputs of examples/inputs/.")
    parser.add_argument("out_dir", nargs="?", default=str(INPUTS), help=f"where to write them (default {INPUTS})")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, make in all_inputs().items():
        data = make()
        (out_dir / name).write_bytes(data)
        print(f"{out_dir / name}  ({len(data) / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
