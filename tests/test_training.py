"""Training recipes on tiny random models: PT, SFT with each PEFT method, DPO, resume, data-parallel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import recipe, write_conversations, write_images, write_jsonl, write_preferences

from mmllm_sdk import MMLLM, build_model
from mmllm_sdk.default_plugins.recipes.run import train
from mmllm_sdk.errors import SpecError
from mmllm_sdk.testing import caption_loss, tiny_spec


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path)


@pytest.fixture
def conversations(tmp_path, images):
    return write_conversations(tmp_path, images)


@pytest.fixture
def preferences(tmp_path, images):
    return write_preferences(tmp_path, images)


@pytest.fixture
def captions(tmp_path, images):
    return write_jsonl(
        tmp_path / "captions.jsonl", [{"image": str(p), "text": f"A {name} square."} for name, p in images.items()]
    )


def parameters(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def caption_conversations(data_path):
    records = [json.loads(line) for line in data_path.read_text().splitlines()]
    return [
        [
            {"role": "user", "content": [{"type": "image", "path": r["image"]}]},
            {"role": "assistant", "content": r["text"]},
        ]
        for r in records
    ]


def test_pt_lowers_the_caption_loss_and_changes_only_the_projector(tmp_path, tokenizer_dir, captions):
    from mmllm_sdk import build_model

    before_model = build_model(tiny_spec(tokenizer_dir), progress=False)
    before = parameters(before_model)
    result = train(recipe(tmp_path, tokenizer_dir, "pt", captions, training={"max_steps": 40}))
    after = parameters(result.model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {name for name in before if name.startswith("input_projectors.image.")}
    # a frozen random 2-layer LLM leaves the projector little room: ln(vocab) ≈ 5.99 is where it starts
    assert (
        caption_loss(result.model, caption_conversations(captions))
        < caption_loss(before_model, caption_conversations(captions)) - 0.05
    )


def test_an_encoder_the_model_spec_marks_trainable_trains_under_the_recipe_defaults(tmp_path, tokenizer_dir, captions):
    spec = tiny_spec(tokenizer_dir)
    spec["inputs"]["image"]["encoder"]["trainable"] = True  # opted in, e.g. an encoder with random weights
    from mmllm_sdk import build_model

    result = train(recipe(tmp_path, tokenizer_dir, "pt", captions, model=spec))
    before = parameters(build_model(spec, progress=False))
    changed = {
        name.split(".")[0] for name, value in parameters(result.model).items() if not torch.equal(value, before[name])
    }
    assert changed == {"encoders", "input_projectors"}


def test_a_recipe_trainable_list_replaces_what_the_model_spec_opts_in(tmp_path, tokenizer_dir, captions):
    spec = tiny_spec(tokenizer_dir)
    spec["inputs"]["image"]["encoder"]["trainable"] = True
    result = train(recipe(tmp_path, tokenizer_dir, "pt", captions, model=spec, trainable=["inputs.*.projector"]))
    assert not any(p.requires_grad for p in result.model.encoders["image"].parameters())


@pytest.mark.parametrize(
    ("peft", "adapter_marker"),
    [
        ({"method": "lora", "r": 4}, "lora_"),
        ({"method": "prefix", "num_virtual_tokens": 4}, "prompt_encoder"),
        ({"method": "ln-tuning"}, "ln_tuning"),
    ],
)
def test_sft_with_peft_trains_the_projector_and_the_adapters_only(
    tmp_path, tokenizer_dir, conversations, peft, adapter_marker
):
    result = train(recipe(tmp_path, tokenizer_dir, "sft", conversations, peft=peft))
    trainable = {name for name, p in result.model.named_parameters() if p.requires_grad}
    assert any(adapter_marker in name for name in trainable)
    assert all(name.startswith("input_projectors.") or adapter_marker in name for name in trainable)
    saved = load_file(result.output_dir / "trainable.safetensors")
    assert set(saved) == trainable
    reloaded = MMLLM.from_pretrained(result.output_dir, progress=False)
    for name, tensor in saved.items():
        assert torch.equal(dict(reloaded.named_parameters())[name], tensor)


def test_a_recipe_on_the_wrong_kind_of_data_is_refused(tmp_path, tokenizer_dir, preferences):
    with pytest.raises(
        SpecError, match="recipe 'sft' trains on conversation examples, but .* holds preference examples"
    ):
        train(recipe(tmp_path, tokenizer_dir, "sft", preferences))


def test_frozen_encoder_features_are_cached_reused_and_invalidated(tmp_path, tokenizer_dir, captions):
    cache = {"dir": str(tmp_path / "cache")}
    first = train(
        recipe(tmp_path, tokenizer_dir, "pt", captions, cache=cache, training={"num_train_epochs": 2, "max_steps": -1})
    )
    assert first.encoded_for_cache == {"image": 4}
    # the new projector's initialisation reads every image's features once, then both epochs do: all from disk
    assert first.cache_stats.hits == 12 and first.cache_stats.misses == 0
    again = train(recipe(tmp_path, tokenizer_dir, "pt", captions, cache=cache), overwrite=True)
    assert again.encoded_for_cache == {"image": 0}  # another run: nothing is encoded again
    changed = recipe(tmp_path, tokenizer_dir, "pt", captions, cache=cache)
    changed["model"]["inputs"]["image"]["encoder"]["params"]["feature_layer"] = -1
    assert train(changed, overwrite=True).encoded_for_cache == {
        "image": 4
    }  # another encoder output: the old entries do not apply


def test_cached_features_give_the_same_loss_as_running_the_encoder(image_model, image_file, tmp_path):
    from mmllm_sdk.default_plugins.recipes.feature_cache import FeatureCache, encoder_fingerprint, fill_cache

    conversation = [
        {"role": "user", "content": [{"type": "image", "path": str(image_file)}]},
        {"role": "assistant", "content": "A gradient."},
    ]
    with torch.no_grad():
        direct = image_model(**image_model.processor([conversation]), supervised_only=True).loss
    cache = FeatureCache(tmp_path / "cache")
    fingerprint = encoder_fingerprint(image_model.encoders["image"], image_model.spec.inputs["image"].encoder, 0)
    fill_cache(
        image_model.encoders["image"],
        cache,
        fingerprint,
        [str(image_file)],
        image_model.processor.inputs["image"].spec.load,
    )
    from mmllm_sdk.default_plugins.recipes.run import CachedFeatures, ExampleDataset

    encoder = image_model.encoders["image"]
    features = CachedFeatures(cache, {"image": (fingerprint, (encoder.num_tokens, encoder.output_dim))})
    example = ExampleDataset([image_model.processor.parse(conversation)], [0], features)[0]  # items carry features
    batch = image_model.processor([example])
    assert "encoder_features" in batch["image"] and "pixel_values" not in batch["image"]
    with torch.no_grad():
        assert torch.allclose(image_model(**batch, supervised_only=True).loss, direct, atol=1e-6)


KILLING_RUN = """
import os, signal, sys
from transformers import TrainerCallback
from mmllm_sdk.default_plugins.recipes.run import train

class KillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as a crash or an OOM kill

train(sys.argv[1], callbacks=[KillAt()])
"""


@pytest.mark.parametrize("sampling", ["random", "group_by_length"])
def test_a_run_killed_mid_training_resumes_to_bitwise_equal_weights(tmp_path, tokenizer_dir, conversations, sampling):
    import subprocess
    import sys

    import yaml

    def spec_file(name):
        spec = recipe(
            tmp_path,
            tokenizer_dir,
            "sft",
            conversations,
            peft={"method": "lora", "r": 4},
            training={
                "max_steps": 12,
                "save_strategy": "steps",
                "save_steps": 2,
                "save_total_limit": 2,
                "learning_rate": 5e-3,
                "output_dir": str(tmp_path / name),
                "train_sampling_strategy": sampling,
            },
        )
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    uninterrupted = train(spec_file("straight"))
    killed = spec_file("killed")
    script = tmp_path / "killing_run.py"
    script.write_text(KILLING_RUN)
    crashed = subprocess.run([sys.executable, str(script), str(killed), "5"], capture_output=True, text=True)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    run_dir = tmp_path / "killed"
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (run_dir / "trainable.safetensors").exists()  # it never finished

    resumed = subprocess.run(
        [sys.executable, "-m", "mmllm_sdk.cli", "train", str(killed), "--resume"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = load_file(uninterrupted.output_dir / "trainable.safetensors")
    got = load_file(run_dir / "trainable.safetensors")
    assert set(got) == set(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == [
        "checkpoint-10",
        "checkpoint-12",
    ]  # save_total_limit


def test_a_save_cut_short_leaves_the_previous_checkpoint_to_resume_from(tmp_path, tokenizer_dir, conversations):
    spec = recipe(
        tmp_path,
        tokenizer_dir,
        "pt",
        conversations,
        training={"max_steps": 4, "save_strategy": "steps", "save_steps": 2},
    )
    train(spec)
    run_dir = tmp_path / "run-pt"
    # what a kill in the middle of writing checkpoint-6 leaves: a staging folder, never a checkpoint-6
    partial = run_dir / ".saving" / "checkpoint-6"
    partial.mkdir(parents=True)
    (partial / "trainable.safetensors").write_bytes(b"half a file")
    spec["training"]["max_steps"] = 6
    result = train(spec, resume=True)
    assert (run_dir / "checkpoint-6" / "mmllm.json").is_file()
    assert not (run_dir / ".saving").exists()
    MMLLM.from_pretrained(run_dir / "checkpoint-6", progress=False)
    assert result.metrics["epoch"] > 0


RECORDING_PLUGIN = """
import dataclasses, os
from mmllm_sdk import hookimpl
from mmllm_sdk.default_plugins.recipes import PT
from mmllm_sdk.training.recipes import ConversationCollator, Recipe


class RecordingCollator(ConversationCollator):
    def __call__(self, examples):
        with open(os.path.join(os.environ["SEEN_DIR"], f"rank{os.environ.get('RANK', '0')}"), "a") as seen:
            seen.write(" ".join(example.source for example in examples) + "\\n")
        return super().__call__(examples)


@dataclasses.dataclass(frozen=True)
class RecordingRecipe(Recipe):
    def collator(self, model, max_length):
        return RecordingCollator(model, max_length, self.train_on)


@hookimpl
def register_recipes(register):
    register("pt-recording", RecordingRecipe(**{f.name: getattr(PT, f.name) for f in dataclasses.fields(PT)}))
"""


def install_recording_plugin(site: Path) -> None:
    """PT whose collator writes each batch's example sources to $SEEN_DIR/rank<RANK>: a plugin found through
    its entry point, as an installed package is (a dist-info folder on PYTHONPATH)."""
    site.mkdir()
    (site / "recording_plugin.py").write_text(RECORDING_PLUGIN)
    info = site / "recording_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: recording-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mmllm]\nrecording = recording_plugin\n")


def test_torchrun_trains_data_parallel_like_one_process_with_the_same_global_batch(tmp_path, tokenizer_dir, images):
    """The documented command: each process takes its share of every epoch, and the gradients are averaged."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    records = [
        {"image": str(path), "text": f"A {name} square{'.' * (i + 1)}"} for i, (name, path) in enumerate(images.items())
    ]
    data = write_jsonl(tmp_path / "captions.jsonl", records)  # 4 captions of different lengths
    # SGD: each update is the averaged gradient times the rate (Adam would turn rounding noise in a near-zero gradient
    # into a full step: torchrun's workers run one thread each, the single process two, and round differently)
    training = {"per_device_train_batch_size": 2, "num_train_epochs": 2, "max_steps": -1, "logging_steps": 1}
    training["optim"] = "sgd"
    spec = recipe(
        tmp_path, tokenizer_dir, "pt-recording", data, training={**training, "output_dir": str(tmp_path / "ddp")}
    )
    del spec["training"]["use_cpu"]  # as a user writes it: the SDK finds that there is no GPU
    (tmp_path / "pt.yaml").write_text(yaml.safe_dump(spec))
    install_recording_plugin(tmp_path / "site")
    (tmp_path / "seen").mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "SEEN_DIR": str(tmp_path / "seen")}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "mmllm_sdk.cli", "train", "pt.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in done.stderr
    assert done.stdout.count("Saved ") == 1 and done.stderr.count("train data: read 4") == 1  # the main process talks
    assert done.stdout.count("'train_loss'") + done.stderr.count("'train_loss'") == 1
    assert done.stderr.count("Building model: 100%") == 1

    epochs = [line.split() for line in (tmp_path / "seen" / "rank0").read_text().splitlines()]
    other = [line.split() for line in (tmp_path / "seen" / "rank1").read_text().splitlines()]
    assert len(epochs) == len(other) == 2  # one step per epoch on each process: 4 examples / (2 per process x 2)
    every = sorted(f"{data}:{n}" for n in range(1, 5))
    for mine, theirs in zip(epochs, other, strict=True):
        assert set(mine).isdisjoint(theirs) and sorted(mine + theirs) == every  # shares of one epoch, together whole

    single = recipe(
        tmp_path,
        tokenizer_dir,
        "pt",
        data,
        training={**training, "per_device_train_batch_size": 4, "output_dir": str(tmp_path / "one")},
    )
    del single["training"]["use_cpu"]
    train(single)
    ddp = load_file(tmp_path / "ddp" / "trainable.safetensors")
    one = load_file(tmp_path / "one" / "trainable.safetensors")
    assert sorted(ddp) == sorted(one) and all(name.startswith("input_projectors.") for name in ddp)
    for name, tensor in one.items():
        torch.testing.assert_close(ddp[name], tensor, rtol=1e-5, atol=1e-6)  # gradients were all-reduced
    start = build_model(spec["model"], progress=False).state_dict()
    assert all(not torch.equal(tensor, start[name]) for name, tensor in one.items())  # and both runs trained


def test_malformed_records_stop_the_run_with_file_and_line(tmp_path, tokenizer_dir, captions):
    from mmllm_sdk.errors import DataError

    with captions.open("a") as data:
        data.write('{"image": "missing.png", "text": "Nothing."}\n')
    with pytest.raises(DataError, match=r"captions.jsonl:5: "):
        train(recipe(tmp_path, tokenizer_dir, "pt", captions))


def test_skip_invalid_skips_counts_prints_and_saves_the_count(tmp_path, tokenizer_dir, captions, capsys):
    with captions.open("a") as data:
        data.write("not json\n")
        data.write('{"image": "missing.png", "text": "Nothing."}\n')
    result = train(recipe(tmp_path, tokenizer_dir, "pt", captions, data={"skip_invalid": True}))
    assert "skipped 2 malformed records" in capsys.readouterr().err
    report = json.loads((result.output_dir / "data_report.json").read_text())
    assert [item["source"].rsplit(":", 1)[1] for item in report["train"]["skipped"]] == ["5", "6"]


def test_eval_and_tensorboard_logging_work_through_the_trainer(tmp_path, tokenizer_dir, captions):
    spec = recipe(
        tmp_path,
        tokenizer_dir,
        "pt",
        captions,
        data={"eval": str(captions)},
        training={
            "eval_strategy": "steps",
            "eval_steps": 4,
            "report_to": "tensorboard",
        },
    )
    result = train(spec)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(result.output_dir.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert "eval/loss" in events.Tags()["scalars"] and "train/loss" in events.Tags()["scalars"]
    assert result.metrics["train_loss"] > 0


def test_resume_without_a_checkpoint_says_so_before_loading_anything(tmp_path, tokenizer_dir, captions):
    with pytest.raises(SpecError, match=r"--resume: .* holds no checkpoint-N folder to resume from"):
        train(recipe(tmp_path, tokenizer_dir, "pt", captions), resume=True)


def test_pt_reads_examples_from_a_registered_data_source(tmp_path, tokenizer_dir):
    source = {
        "dataset": "synthetic-shapes",
        "params": {"task": "captions", "num_examples": 6, "image_size": 32, "out_dir": str(tmp_path / "shapes")},
    }
    result = train(recipe(tmp_path, tokenizer_dir, "pt", "unused", data={"train": source}))
    assert len(list((tmp_path / "shapes").glob("*.png"))) == 6
    report = json.loads((result.output_dir / "data_report.json").read_text())
    assert report["train"]["examples"] == 6 and report["train"]["kind"] == "conversation"


def test_a_data_source_with_bad_params_names_the_field(tmp_path, tokenizer_dir):
    source = {
        "dataset": "synthetic-shapes",
        "params": {"task": "captions", "num_examples": 2, "colour": "red", "out_dir": "x"},
    }
    with pytest.raises(SpecError, match=r"data.synthetic-shapes.params.colour: is not a known field"):
        train(recipe(tmp_path, tokenizer_dir, "pt", "unused", data={"train": source}))


def test_the_feature_cache_default_follows_mmllm_cache_when_the_spec_is_parsed(monkeypatch, tmp_path):
    from mmllm_sdk.training.spec import CacheSpec

    monkeypatch.setenv("MMLLM_CACHE", str(tmp_path))  # set after the module was imported
    assert CacheSpec().dir == str(tmp_path / "features")


def test_a_recipe_file_reads_1e_3_as_a_number(tmp_path):
    from mmllm_sdk.training.spec import load_recipe

    (tmp_path / "pt.yaml").write_text(
        "recipe: pt\nmodel: ./model.yaml\ndata: {train: ./c.jsonl}\n"
        "training: {output_dir: ./runs/pt, learning_rate: 1e-3, weight_decay: 1E-2, warmup_steps: 2}\n"
    )
    training = load_recipe(tmp_path / "pt.yaml").training
    assert training["learning_rate"] == 0.001 and training["weight_decay"] == 0.01 and training["warmup_steps"] == 2


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("learning_rate", "fast", r"training.learning_rate: Input should be a valid number, .* \(got 'fast'\)"),
        ("max_steps", "3.5", r"training.max_steps: Input should be a valid integer, .* \(got '3.5'\)"),
        ("bf16", "maybe", r"training.bf16: Input should be a valid boolean, .* \(got 'maybe'\)"),
    ],
)
def test_a_training_argument_of_the_wrong_type_names_it_before_anything_loads(tmp_path, field, value, message):
    spec = {"recipe": "pt", "model": "m.yaml", "data": {"train": "x"}, "training": {"output_dir": "o", field: value}}
    with pytest.raises(SpecError, match=message):
        train(spec)


def test_a_quoted_number_is_taken_as_the_number_it_spells(tmp_path):
    from mmllm_sdk.training.spec import parse_recipe

    spec = {"recipe": "pt", "model": "m.yaml", "data": {"train": "x"}, "training": {"output_dir": "o"}}
    spec["training"]["learning_rate"] = "2e-4"
    assert parse_recipe(spec).training["learning_rate"] == 0.0002


def test_resume_on_a_finished_run_says_there_is_nothing_to_train_and_saves_nothing(
    tmp_path, tokenizer_dir, captions, capsys
):
    spec = recipe(
        tmp_path, tokenizer_dir, "pt", captions, training={"max_steps": 2, "save_strategy": "steps", "save_steps": 2}
    )
    train(spec)
    final = tmp_path / "run-pt" / "trainable.safetensors"
    saved = final.stat().st_mtime_ns, final.read_bytes()
    capsys.readouterr()
    result = train(spec, resume=True)
    assert result.steps_trained == 0 and "train_loss" not in result.metrics
    err = capsys.readouterr().err
    assert "--resume: " in err and "checkpoint-2 is at step 2 and this run takes 2 steps; nothing to train" in err
    assert (final.stat().st_mtime_ns, final.read_bytes()) == saved
    spec["training"]["max_steps"] = 4  # more steps: resuming trains the two that are new
    assert train(spec, resume=True).steps_trained == 2


def test_data_eval_without_an_eval_strategy_is_refused_before_anything_loads(tmp_path, tokenizer_dir, captions):
    with pytest.raises(SpecError, match=r"data.eval is set but eval_strategy is 'no' .* add eval_strategy: epoch"):
        train(recipe(tmp_path, tokenizer_dir, "pt", captions, data={"eval": str(captions)}))


def test_data_without_media_files_says_nothing_about_the_feature_cache(tmp_path, tokenizer_dir, capsys):
    records = [
        {"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": f"Hello {i}."}]}
        for i in range(2)
    ]
    data = write_jsonl(tmp_path / "text.jsonl", records)
    peft = {"method": "lora", "r": 2}  # text alone: the adapters train (the image projector gets no gradient)
    result = train(recipe(tmp_path, tokenizer_dir, "sft", data, peft=peft, training={"max_steps": 1}))
    assert "feature cache" not in capsys.readouterr().err and result.cache_stats is None


def test_a_batch_that_trains_nothing_says_why_instead_of_a_torch_error(tmp_path, tokenizer_dir):
    from mmllm_sdk.errors import InputError

    records = [{"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]}]
    data = write_jsonl(tmp_path / "text.jsonl", records)  # no image: the image projector, all that trains, is unused
    with pytest.raises(InputError, match=r"This batch trains nothing: .*input_projectors.* add such inputs"):
        train(recipe(tmp_path, tokenizer_dir, "sft", data, training={"max_steps": 1}))


def test_training_arguments_that_transformers_refuses_stop_the_run_before_the_model_builds(
    tmp_path, tokenizer_dir, captions
):
    settings = {"eval_strategy": "epoch", "save_strategy": "steps", "load_best_model_at_end": True}
    spec = recipe(tmp_path, tokenizer_dir, "pt", captions, data={"eval": str(captions)}, training=settings)
    with pytest.raises(SpecError, match=r"^training: .*load_best_model_at_end"):
        train(spec)
    assert not (tmp_path / "run-pt").exists()  # nothing was built or written
