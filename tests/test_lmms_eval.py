"""The lmms-eval model plugin: lmms-eval's own CLI scores a checkpoint exactly as ``mmllm eval`` does, item by item,
and every modality lmms-eval hands over reaches the model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml
from lmms_eval.api.instance import Instance  # the eval extra: `make test` installs it
from PIL import Image, ImageDraw

from mmllm_sdk.cli import main
from mmllm_sdk.errors import InputError

TASK_FOLDER = Path(__file__).parent / "lmms_eval_task"
COLOURS = {"red": (220, 30, 30), "green": (30, 190, 30), "blue": (30, 30, 220)}
MAX_NEW_TOKENS = 6  # the task YAML's generation_kwargs


TONE = (0.3 * np.sin(2 * np.pi * 440 * np.arange(4000) / 16000.0) * 32767).astype("<i2")  # 0.25 s at 16 kHz


def shape_image(colour: str, shape: int) -> Image.Image:
    """A square (0), a circle (1) or a triangle (2) of ``colour`` on white, 32 x 32."""
    image = Image.new("RGB", (32, 32), "white")
    draw, fill = ImageDraw.Draw(image), COLOURS[colour]
    if shape == 0:
        draw.rectangle((6, 6, 26, 26), fill=fill)
    elif shape == 1:
        draw.ellipse((6, 6, 26, 26), fill=fill)
    else:
        draw.polygon([(16, 4), (28, 28), (4, 28)], fill=fill)
    return image


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    """The task YAMLs copied next to a messages JSONL of 8 shapes, the data of both lmms-eval and ``mmllm eval``."""
    folder = tmp_path_factory.mktemp("lmms") / "task"
    shutil.copytree(TASK_FOLDER, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "images").mkdir()
    rows = []
    for index in range(8):
        colour = list(COLOURS)[index % 3]
        shape_image(colour, index // 3).save(folder / "images" / f"{index}.png")
        question = {"type": "text", "text": "What colour is the shape?"}
        user = {"role": "user", "content": [{"type": "image", "path": f"images/{index}.png"}, question]}
        messages = [user, {"role": "assistant", "content": colour}]
        rows.append({"messages": messages, "choices": list(COLOURS), "category": "colour"})
    (folder / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tokenizer_dir, tmp_path_factory):
    """A tiny random image model, saved as a checkpoint folder."""
    from mmllm_sdk import build_model
    from mmllm_sdk.testing import tiny_spec

    folder = tmp_path_factory.mktemp("ckpt") / "ckpt"
    build_model(tiny_spec(tokenizer_dir, inputs=("image",)), progress=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lmms_run(task_folder, checkpoint, tmp_path_factory):
    """One lmms-eval CLI run of both tasks: its results JSON and its samples per task, in document order."""
    out = tmp_path_factory.mktemp("lmms-out")
    command = [
        *(sys.executable, "-m", "lmms_eval", "--model", "mmllm"),
        *("--model_args", f"pretrained={checkpoint},max_new_tokens=32"),
        *("--tasks", "mmllm_colours,mmllm_colours_mc", "--include_path", str(task_folder)),
        *("--batch_size", "3", "--device", "cpu", "--output_path", str(out / "results")),
        *("--log_samples", "--verbosity", "DEBUG"),  # DEBUG: a failure exits non-zero (else lmms-eval exits 0)
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(out / "hf"), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    (results,) = (out / "results").glob("*/*_results.json")
    samples = {}
    for task in ("mmllm_colours", "mmllm_colours_mc"):
        (path,) = results.parent.glob(f"*_samples_{task}.jsonl")
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        samples[task] = sorted(rows, key=lambda row: row["doc_id"])
    return json.loads(results.read_text()), samples


def mmllm_eval(checkpoint, data, folder, metric: str) -> list[dict]:
    """``mmllm eval`` on the same data (another batch size than lmms-eval's): its predictions, in order."""
    argv = ["eval", str(checkpoint), str(data), "--metric", metric, "--batch-size", "8", "--no-plots"]
    assert main([*argv, "--max-new-tokens", str(MAX_NEW_TOKENS), "--output-dir", str(folder)]) == 0
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def test_lmms_eval_generates_the_answers_of_mmllm_eval_item_by_item(lmms_run, checkpoint, task_folder, tmp_path):
    results, samples = lmms_run
    ours = mmllm_eval(checkpoint, task_folder / "data.jsonl", tmp_path / "exact", "exact")
    theirs = samples["mmllm_colours"]
    answers = [row["filtered_resps"] for row in theirs]  # one str per document (a list in some versions)
    answers = [answer[0] if isinstance(answer, list) else answer for answer in answers]
    assert [answer.strip() for answer in answers] == [row["prediction"].strip() for row in ours]
    assert [row["target"] for row in theirs] == [row["reference"] for row in ours]
    score = results["results"]["mmllm_colours"]["exact,none"]
    assert results["n-samples"]["mmllm_colours"]["effective"] == len(ours) == 8
    assert score == pytest.approx(sum(row["score"] for row in ours) / len(ours))


def test_lmms_eval_multiple_choice_picks_the_options_of_loglik_choice(lmms_run, checkpoint, task_folder, tmp_path):
    results, samples = lmms_run
    ours = mmllm_eval(checkpoint, task_folder / "data.jsonl", tmp_path / "choice", "loglik-choice")
    losses = [[float(pair[0]) for pair in row["filtered_resps"]] for row in samples["mmllm_colours_mc"]]
    assert [list(COLOURS)[int(np.argmin(row))] for row in losses] == [row["prediction"] for row in ours]
    assert losses == [pytest.approx([-value for value in row["logprobs"]], abs=1e-4) for row in ours]
    assert results["results"]["mmllm_colours_mc"]["acc,none"] == pytest.approx(
        sum(row["score"] for row in ours) / len(ours)
    )


# in process: the other modalities, and what is refused ------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The tone as a 16-bit WAV and a 4-frame mp4 (PyAV)."""
    import av

    folder = tmp_path_factory.mktemp("media")
    with wave.open(str(folder / "tone.wav"), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(TONE.tobytes())
    with av.open(str(folder / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for index in range(4):
            frame = av.VideoFrame.from_ndarray(np.asarray(shape_image(list(COLOURS)[index % 3], index % 3)))
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return folder


@pytest.fixture(scope="module")
def av_spec(tokenizer_dir, tmp_path_factory):
    """A tiny audio-and-video model as a YAML spec (``pretrained`` takes a spec as well as a checkpoint)."""
    from mmllm_sdk.testing import tiny_spec

    spec = tmp_path_factory.mktemp("av") / "model.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(tokenizer_dir, inputs=("audio", "video"))))
    return spec


def recorded(lmms):
    """``lmms`` with each conversation batch it hands ``generate_batch`` kept in ``lmms.seen``."""
    lmms.seen, generate = [], lmms.model.generate_batch

    def recording(conversations, **kwargs):
        lmms.seen.append(conversations)
        return generate(conversations, **kwargs)

    lmms.model.generate_batch = recording
    return lmms


@pytest.fixture(scope="module")
def av_lmms(av_spec):
    from mmllm_sdk.default_plugins.evaluation.lmms_eval import MMLLMLmms

    return recorded(MMLLMLmms(pretrained=str(av_spec), batch_size="2", device="cpu", max_batch_size=None))


def instances(lmms, visuals: list, gen_kwargs: dict | None = None) -> list[Instance]:
    """One generate_until request per visual, as lmms-eval's simple tasks build them; each document is its visual."""
    lmms.task_dict = {"t": {"test": visuals}}
    gen_kwargs = {"max_new_tokens": 4, "until": []} if gen_kwargs is None else gen_kwargs
    meta = [{"task": "t", "doc_id": i, "repeats": 1} for i in range(len(visuals))]
    return [
        Instance("generate_until", ("Describe it.", gen_kwargs, lambda doc: [doc], i, "t", "test"), i, meta[i])
        for i in range(len(visuals))
    ]


def user(*parts, text="Describe it."):
    return {
        "role": "user",
        "content": [*({"type": kind, "path": path} for kind, path in parts), {"type": "text", "text": text}],
    }


def test_audio_dicts_wav_paths_and_mp4_paths_reach_the_model_as_mmllm_eval_gives_them(av_lmms, media):
    wav, mp4 = str(media / "tone.wav"), str(media / "clip.mp4")
    audio = {"array": TONE.astype(np.float32) / 32768, "sampling_rate": 16000, "path": None}  # a 🤗 datasets Audio
    av_lmms.seen.clear()
    answers = av_lmms.generate_until(instances(av_lmms, [audio, wav, mp4]))
    parts = [conversation[0]["content"][0] for batch in av_lmms.seen for conversation in batch]
    assert [part["type"] for part in parts] == ["audio", "audio", "video"]
    assert parts[1]["path"] == wav and parts[2]["path"] == mp4
    as_files = [[user(("audio", wav))], [user(("audio", wav))], [user(("video", mp4))]]
    expected = [reply.text for reply in av_lmms.model.generate_batch(as_files, max_new_tokens=4, do_sample=False)]
    assert answers == expected


def test_multi_round_requests_grow_one_conversation_until_the_task_ends_it(av_lmms, media):
    wav = str(media / "tone.wav")

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        if round_idx >= 2:
            return None, None, True, previous_output, None
        return [], "Are you sure?", False, previous_output, {"round": round_idx}

    av_lmms.task_dict, av_lmms.seen = {"t": {"test": [wav]}}, []
    gen_kwargs = {"max_new_tokens": 3, "until": []}
    args = ("Describe it.", gen_kwargs, lambda doc: [doc], doc_to_text, 0, "t", "test")
    request = Instance("generate_until_multi_round", args, 0, {"task": "t", "doc_id": 0, "repeats": 1})
    (answers,) = av_lmms.generate_until_multi_round([request])
    assert len(answers) == 2 and len(av_lmms.seen) == 2
    (last,) = av_lmms.seen[1]
    assert [turn["role"] for turn in last] == ["user", "assistant", "user"] and last[1]["content"] == answers[0]
    assert last[2]["content"] == [{"type": "text", "text": "Are you sure?"}]


def test_the_chat_class_reads_lmms_eval_messages_typed_by_what_they_hold(av_spec, media):
    from mmllm_sdk.default_plugins.evaluation.lmms_eval import MMLLMLmmsChat

    wav, mp4 = str(media / "tone.wav"), str(media / "clip.mp4")
    audio = {"array": TONE.astype(np.float32) / 32768, "sampling_rate": 16000, "path": "tone.wav"}

    def doc_to_messages(doc, round_idx=None, previous_output=None, previous_round_info=None):
        if round_idx is None:
            media_parts = [
                {"type": "video", "url": audio},
                {"type": "video", "url": mp4},
            ]  # lmms-eval: a dict is a video
            return [{"role": "user", "content": [*media_parts, {"type": "text", "text": "Describe it."}]}]
        follow_up = [{"role": "user", "content": [{"type": "text", "text": "Are you sure?"}]}]
        return (None, True, previous_output, None) if round_idx >= 2 else (follow_up, False, previous_output, None)

    chat = MMLLMLmmsChat(pretrained=str(av_spec), device="cpu")
    chat.task_dict = {"t": {"test": [{}]}}
    args = ("", doc_to_messages, {"max_new_tokens": 4, "until": []}, 0, "t", "test")
    meta = {"task": "t", "doc_id": 0, "repeats": 1}
    (answer,) = chat.generate_until([Instance("generate_until", args, 0, meta)])
    expected = chat.model.generate_batch([[user(("audio", wav), ("video", mp4))]], max_new_tokens=4, do_sample=False)
    assert answer == expected[0].text
    (rounds,) = chat.generate_until_multi_round([Instance("generate_until_multi_round", args, 0, meta)])
    assert len(rounds) == 2 and rounds[0] == answer


def test_an_image_for_a_model_without_an_image_input_names_the_modality_and_the_inputs(av_lmms):
    with pytest.raises(InputError, match=r"image input .*inputs are audio, video"):
        av_lmms.generate_until(instances(av_lmms, [Image.new("RGB", (8, 8))]))


def test_sampling_is_refused_with_the_options_that_make_it_greedy(av_lmms, media):
    with pytest.raises(InputError, match="temperature=0,do_sample=False"):
        av_lmms.generate_until(instances(av_lmms, [str(media / "tone.wav")], gen_kwargs={"temperature": 0.7}))


def test_answers_are_cut_at_the_first_until_string(av_lmms, media):
    wav = str(media / "tone.wav")
    whole = av_lmms.generate_until(instances(av_lmms, [wav], gen_kwargs={"max_new_tokens": 6}))[0]
    assert len(whole) >= 2, "the tiny model's answer is too short to cut"
    stop = whole[len(whole) // 2]
    cut = av_lmms.generate_until(instances(av_lmms, [wav], gen_kwargs={"max_new_tokens": 6, "until": [stop]}))[0]
    assert cut == whole[: whole.index(stop)]


def test_the_entry_point_registers_both_classes_without_importing_torch():
    code = (
        "import sys, lmms_eval.models as m; "
        "assert 'torch' not in sys.modules, 'the manifest imported torch'; "
        "r = m.MODEL_REGISTRY_V2; print(r.resolve('mmllm').class_path, r.resolve('mmllm_chat').class_path)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [
        "mmllm_sdk.default_plugins.evaluation.lmms_eval.MMLLMLmms",
        "mmllm_sdk.default_plugins.evaluation.lmms_eval.MMLLMLmmsChat",
    ]
