"""The examples/ folder works as its README says: each script is run as a user runs it, offline, in a temp folder."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmllm_sdk.components import AudioClip, VideoClip
from mmllm_sdk.default_plugins.datasets.shapes import PALETTE
from mmllm_sdk.registry import get_registry

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
INPUTS = EXAMPLES / "inputs"
# every committed sample input and the modality that reads it; `ecg` is the docs' plugin (docs/writing-plugins.md)
MODALITY_OF = {
    "red-circle.png": "image",
    "blue-square.png": "image",
    "green-triangle.png": "image",
    "yellow-star.png": "image",
    "tone.wav": "audio",
    "bouncing-ball.gif": "video",
    "patient.npy": "ecg",
}


def run_example(script: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python examples/SCRIPT ARGS`` in ``cwd``, offline, with its output captured."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_make_inputs_reproduces_the_committed_files_byte_for_byte(tmp_path):
    done = run_example("make_inputs.py", str(tmp_path / "inputs"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    made = sorted(p.name for p in (tmp_path / "inputs").iterdir())
    assert made == sorted(p.name for p in INPUTS.iterdir()) == sorted(MODALITY_OF)
    for name in made:
        assert (tmp_path / "inputs" / name).read_bytes() == (INPUTS / name).read_bytes(), name
        assert (INPUTS / name).stat().st_size < 64 * 1024, f"{name} is too large to commit"


@pytest.mark.parametrize("name", [n for n, modality in MODALITY_OF.items() if modality == "image"])
def test_each_shape_image_loads_as_an_rgb_image_showing_its_colour(name):
    image = get_registry().modality("image").load(INPUTS / name)
    assert image.mode == "RGB" and image.size == (224, 224)
    colour = PALETTE[name.split("-")[0]]
    assert (np.asarray(image) == colour).all(axis=-1).sum() > 200  # the shape, in exactly its palette colour


def test_the_tone_loads_as_half_a_second_of_16_khz_audio():
    clip = get_registry().modality("audio").load(INPUTS / "tone.wav")
    assert isinstance(clip, AudioClip) and clip.sampling_rate == 16_000 and clip.samples.shape == (8000,)
    assert 0.5 < np.abs(clip.samples).max() <= 0.61


def test_the_gif_loads_as_a_video_of_eight_frames():
    clip = get_registry().modality("video").load(INPUTS / "bouncing-ball.gif")
    assert isinstance(clip, VideoClip) and len(clip.frames) == 8 and clip.fps == pytest.approx(10.0)
    assert {frame.size for frame in clip.frames} == {(64, 64)} and {frame.mode for frame in clip.frames} == {"RGB"}


def test_patient_npy_loads_through_the_docs_ecg_plugin(tmp_path, monkeypatch):
    """The plugin of docs/writing-plugins.md (`mmllm new-plugin ecg --set channels=12`), registered by hand."""
    from mmllm_sdk.default_plugins.scaffold import new_plugin
    from mmllm_sdk.plugins import register_plugin, unregister_plugin

    folder = new_plugin("ecg", tmp_path, no_input=True, context={"channels": "12"})
    monkeypatch.syspath_prepend(str(folder))
    plugin = importlib.import_module("mmllm_ecg")
    register_plugin(plugin, "ecg-examples-test", distribution="mmllm-ecg", version="0.1.0")
    try:
        signal = get_registry().modality("ecg").load(INPUTS / "patient.npy")
    finally:
        unregister_plugin("ecg-examples-test")
        for module in [m for m in sys.modules if m == "mmllm_ecg" or m.startswith("mmllm_ecg.")]:
            del sys.modules[module]  # the package lives in tmp_path, which goes away
    assert signal.shape == (512, 12) and signal.dtype == np.float32
    assert 0.8 < signal[:, 1].max() < 2.0  # lead II's R waves, in millivolts


def test_real_weights_writes_a_spec_that_mmllm_validate_accepts(tmp_path):
    done = run_example("real_weights.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "mmllm validate real-weights.yaml" in done.stdout
    assert "mmllm chat real-weights.yaml --input image=" in done.stdout and "red-circle.png" in done.stdout
    validated = subprocess.run(
        [sys.executable, "-m", "mmllm_sdk.cli", "validate", "real-weights.yaml"],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert validated.returncode == 0, validated.stderr
    assert "real-weights.yaml: valid" in validated.stdout
    assert "hidden size 576" in validated.stdout and "timm-vision (196 x 128) -> pool" in validated.stdout


def test_real_weights_refuses_to_overwrite_a_spec_without_force(tmp_path):
    (tmp_path / "mine.yaml").write_text("keep me\n")
    refused = run_example("real_weights.py", "mine.yaml", cwd=tmp_path)
    assert refused.returncode == 1
    assert "mine.yaml already exists; pass --force to replace it" in refused.stderr
    assert (tmp_path / "mine.yaml").read_text() == "keep me\n"
    forced = run_example("real_weights.py", "mine.yaml", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "mine.yaml").read_text().startswith("# SmolLM2-135M-Instruct (GGUF)")


def test_any_to_any_trains_in_stages_and_saves_a_generated_png(tmp_path):
    done = run_example("any_to_any.py", str(tmp_path / "work"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "$ mmllm train align.yaml" in done.stdout and "$ mmllm train sft.yaml" in done.stdout
    (saved,) = re.findall(r"^image: (.+) \(\d+ x \d+ PNG\)$", done.stdout, flags=re.MULTILINE)
    assert Path(saved).parent == tmp_path / "work" / "out"
    with Image.open(saved) as image:
        assert image.format == "PNG" and image.size == (32, 32)


def test_the_tour_exports_to_llava_with_the_same_logits(tmp_path):
    # bfloat16 for `dtype: auto`, as on a CPU with native bf16: the tour pins float32, so the comparison still holds
    done = run_example("tiny_demo.py", str(tmp_path / "tour"), cwd=tmp_path, MMLLM_AUTO_DTYPE="bfloat16")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for command in ("$ mmllm validate", "$ mmllm chat", "$ mmllm export"):
        assert command in done.stdout
    (difference,) = re.findall(r"largest difference from the SDK model's (\S+): match", done.stdout)
    assert float(difference) < 1e-4
    assert (tmp_path / "tour" / "llava" / "config.json").is_file()
