"""The grpo recipe on the tiny model: rewards (built-in and a plugin's) rise, the policy equals its reference at
learning rate 0, rewards combine by weight, answers are reused for num_iterations steps, and bad rewards, options
and prompts are refused with sentences that name them."""

from __future__ import annotations

import json
import math

import pytest
from training_helpers import recipe, write_conversations, write_images, write_jsonl, write_preferences

from mmllm_sdk import hookimpl
from mmllm_sdk.default_plugins.recipes.run import train
from mmllm_sdk.errors import DataError, InputError, SpecError, TrainingError
from mmllm_sdk.registry import Reward

FIRST_HALF = "abcdefghijklm"


@pytest.fixture
def conversations(tmp_path):
    return write_conversations(tmp_path, write_images(tmp_path))


def grpo(tmp_path, tokenizer_dir, data, options, **overrides):
    """A grpo recipe on the tiny model: 4 answers of at most 4 tokens per prompt, logged every step."""
    spec = recipe(tmp_path, tokenizer_dir, "grpo", data, **overrides)
    spec["options"] = {"num_generations": 4, "max_completion_length": 4, **options}
    spec["training"] = {**spec["training"], "logging_steps": 1, **overrides.get("training", {})}
    return spec


def logged(result, key):
    return [entry[key] for entry in result.trainer_log if key in entry]


def run(spec):
    """train(), with the Trainer's log entries of the run kept on the result as ``trainer_log``."""
    from transformers import TrainerCallback

    entries = []

    class Keep(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            entries.append(dict(logs or {}))

    result = train(spec, callbacks=[Keep()])
    result.trainer_log = entries
    return result


class Counting:
    """A plugin's rewards: ``first-half`` (1 when an answer starts with a letter a-m; counts its calls), ``constant``
    (params {value}), and three broken ones."""

    def __init__(self):
        self.calls = 0
        self.references = []

    @hookimpl
    def register_rewards(self, register):
        def first_half(completions, references, **kwargs):
            self.calls += 1
            self.references += references
            return [float(text.strip()[:1] in FIRST_HALF) for text in completions]

        register("first-half", lambda params: Reward(first_half, needs_reference=False))
        register("constant", lambda params: lambda completions, **kwargs: [params["value"]] * len(completions))
        register("boom", lambda params: lambda completions, **kwargs: 1 / 0)
        register("short", lambda params: lambda completions, **kwargs: [1.0])
        register("nan", lambda params: lambda completions, **kwargs: [math.nan] * len(completions))


@pytest.fixture
def counting(plugin):
    rewards = Counting()
    plugin(rewards, "mmllm-counting")
    return rewards


def test_the_mean_reward_of_a_plugin_reward_rises(tmp_path, tokenizer_dir, conversations, counting):
    spec = grpo(
        tmp_path,
        tokenizer_dir,
        conversations,
        {"rewards": ["first-half"], "num_generations": 8},
        trainable=["llm"],
        training={"max_steps": 40, "learning_rate": 5e-2},
    )
    rewards = logged(run(spec), "reward")
    assert len(rewards) == 40
    first, last = sum(rewards[:8]) / 8, sum(rewards[-8:]) / 8
    assert last > first + 0.3, (first, last)


def test_at_learning_rate_0_the_policy_is_its_reference_and_the_kl_is_0(tmp_path, tokenizer_dir, conversations):
    spec = grpo(
        tmp_path,
        tokenizer_dir,
        conversations,
        {"rewards": ["prefix"], "num_iterations": 2},
        peft={"method": "lora", "r": 4},
        training={"max_steps": 4, "learning_rate": 0.0},
    )
    result = run(spec)
    assert logged(result, "kl") == [0.0] * 4  # exp(ref - logp) - (ref - logp) - 1 is 0 only where logp == ref
    assert logged(result, "clip_ratio") == [0.0] * 4  # and the policy equals the one that sampled (ratio 1)


def test_each_step_logs_the_rewards_kl_clipping_and_answer_lengths_to_tensorboard(
    tmp_path, tokenizer_dir, conversations
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    training = {"max_steps": 2, "report_to": "tensorboard"}
    result = run(grpo(tmp_path, tokenizer_dir, conversations, {"rewards": ["exact", "prefix"]}, training=training))
    entry = result.trainer_log[0]
    keys = ["reward", "reward_std", "kl", "clip_ratio", "completions/mean_length", "completions/clipped_ratio"]
    for key in keys:
        assert math.isfinite(entry[key]), key
    for name in ("exact", "prefix"):
        assert 0 <= entry[f"rewards/{name}/mean"] <= 1 and entry[f"rewards/{name}/std"] >= 0
    assert 1 <= entry["completions/mean_length"] <= 4
    events = EventAccumulator(str(next(result.output_dir.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {f"train/{key}" for key in [*keys, "rewards/prefix/mean"]} <= set(events.Tags()["scalars"])


def test_rewards_add_up_with_their_weights(tmp_path, tokenizer_dir, conversations, counting):
    rewards = [
        {"name": "constant", "weight": 0.5, "params": {"value": 1.0}},
        {"name": "format", "weight": 2.0, "params": {"pattern": "(?!)"}},  # matches nothing: 0
    ]
    result = run(grpo(tmp_path, tokenizer_dir, conversations, {"rewards": rewards}, training={"max_steps": 2}))
    assert logged(result, "reward") == [0.5, 0.5]
    assert logged(result, "reward_std") == [0.0, 0.0]
    assert logged(result, "rewards/format/mean") == [0.0, 0.0]


@pytest.mark.parametrize(("num_iterations", "rollouts"), [(1, 4), (2, 2)])
def test_answers_are_sampled_once_for_num_iterations_steps(
    tmp_path, tokenizer_dir, conversations, counting, num_iterations, rollouts
):
    options = {"rewards": ["first-half"], "num_iterations": num_iterations}
    run(grpo(tmp_path, tokenizer_dir, conversations, options, training={"max_steps": 4}))
    assert counting.calls == rollouts


def test_grpo_trains_what_sft_trains(tmp_path, tokenizer_dir, conversations):
    spec = grpo(tmp_path, tokenizer_dir, conversations, {}, peft={"method": "lora", "r": 4}, training={"max_steps": 1})
    trainable = {name for name, p in run(spec).model.named_parameters() if p.requires_grad}
    assert any(name.startswith("input_projectors.") for name in trainable)
    assert any("lora_" in name for name in trainable)
    assert all(name.startswith("input_projectors.") or "lora_" in name for name in trainable)


def test_the_feature_cache_serves_the_prompts_images(tmp_path, tokenizer_dir, conversations):
    spec = grpo(tmp_path, tokenizer_dir, conversations, {}, training={"max_steps": 2})
    spec["cache"] = {"dir": str(tmp_path / "cache")}
    result = run(spec)
    assert result.encoded_for_cache == {"image": 4}
    assert result.cache_stats.hits >= 4 and result.cache_stats.misses == 0


def test_a_reward_that_raises_is_named(tmp_path, tokenizer_dir, conversations, counting):
    spec = grpo(tmp_path, tokenizer_dir, conversations, {"rewards": ["prefix", "boom"]})
    with pytest.raises(
        TrainingError, match=r"Reward 'boom' \(plugin 'mmllm-counting'\) failed at step 1: ZeroDivision"
    ):
        train(spec)


def test_a_reward_with_the_wrong_number_of_values_is_refused(tmp_path, tokenizer_dir, conversations, counting):
    spec = grpo(tmp_path, tokenizer_dir, conversations, {"rewards": ["short"]})
    with pytest.raises(TrainingError, match=r"Reward 'short' .* returned 1 values for 8 completions at step 1"):
        train(spec)


def test_a_reward_that_is_not_finite_stops_training(tmp_path, tokenizer_dir, conversations, counting):
    spec = grpo(tmp_path, tokenizer_dir, conversations, {"rewards": ["nan"]})
    with pytest.raises(TrainingError, match=r"Reward 'nan' .* returned nan at step 1; a reward returns finite numbers"):
        train(spec)


@pytest.mark.parametrize("kind", ["preference", "unpaired"])
def test_preference_pairs_and_labelled_answers_give_prompts_and_references(tmp_path, tokenizer_dir, counting, kind):
    images = write_images(tmp_path)
    pairs = [json.loads(line) for line in write_preferences(tmp_path, images).read_text().splitlines()]
    if kind == "unpaired":  # the chosen answers as desirable ones
        pairs = [{"prompt": p["prompt"], "completion": p["chosen"], "label": True} for p in pairs]
    data = write_jsonl(tmp_path / f"{kind}.jsonl", pairs)
    spec = grpo(tmp_path, tokenizer_dir, data, {"rewards": ["first-half"]}, training={"max_steps": 2})
    assert run(spec).steps_trained == 2
    assert set(counting.references) == {f"It is {colour}." for colour in images}


def test_prompts_without_a_reference_are_refused_when_a_reward_needs_one(tmp_path, tokenizer_dir):
    turns = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
    data = write_jsonl(tmp_path / "open.jsonl", [{"messages": [*turns, {"role": "user", "content": "And then?"}]}])
    spec = grpo(tmp_path, tokenizer_dir, data, {"rewards": ["exact"]}, peft={"method": "lora", "r": 4})
    del spec["model"]["inputs"]  # a text-only model
    with pytest.raises(DataError, match=r"open\.jsonl:1 has no reference answer .* reward 'exact' compares"):
        train(spec)
    spec["options"]["rewards"] = [{"name": "format", "params": {"pattern": ".*"}}]  # needs no reference: trains
    spec["training"]["max_steps"] = 1
    assert train(spec).steps_trained == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_generations": 1}, r"options\.num_generations: Input should be greater than or equal to 2 \(got 1\)"),
        ({"rewards": ["exactly"]}, r"options\.rewards: 'exactly' is not a registered reward\. Did you mean 'exact'\?"),
        ({"rewards": []}, r"options\.rewards: List should have at least 1 item"),
        (
            {"rewards": [{"name": "format", "params": {"pattern": "(unclosed"}}]},
            r"pattern '\(unclosed' is not a regular expression",
        ),
        ({"rewards": [{"name": "format"}]}, r"rewards: format: params\.pattern: is required but missing"),
        ({"rewards": [{"name": "prefix", "params": {"x": 1}}]}, r"rewards: prefix: params\.x: is not a known field"),
        ({"rewards": ["exact", "exact"]}, r"names a reward twice"),
        ({"loss_type": "dapo"}, r"options\.loss_type: Input should be 'grpo', 'bnpo' or 'dr_grpo'"),
    ],
)
def test_bad_options_are_refused_before_any_weight_loads(tmp_path, tokenizer_dir, conversations, options, message):
    spec = grpo(tmp_path, tokenizer_dir, conversations, options)
    spec["model"]["llm"]["params"]["tokenizer"] = str(tmp_path / "absent")  # loading it would fail differently
    with pytest.raises(SpecError, match=message):
        train(spec)


def test_held_out_prompts_are_scored_during_training(tmp_path, tokenizer_dir, conversations):
    spec = grpo(tmp_path, tokenizer_dir, conversations, {"rewards": ["prefix"]}, training={"max_steps": 2})
    spec["data"].update(eval=str(conversations), metric="prefix")
    spec["training"].update(eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=2)
    result = run(spec)
    evaluated = [entry for entry in result.trainer_log if "eval_loss" in entry]
    assert len(evaluated) == 1 and math.isfinite(evaluated[0]["eval_loss"]) and 0 <= evaluated[0]["eval_score"] <= 1
    assert 0 <= result.metrics["heldout_score"] <= 1


def test_a_model_that_trains_nothing_is_refused(tmp_path, tokenizer_dir, conversations):
    spec = grpo(tmp_path, tokenizer_dir, conversations, {"rewards": ["prefix"]}, trainable=[])
    with pytest.raises(InputError, match="This batch trains nothing"):
        train(spec)


def test_grpo_runs_data_parallel_under_torchrun(tmp_path, tokenizer_dir, conversations):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    spec = grpo(tmp_path, tokenizer_dir, conversations, {"rewards": ["prefix"]}, peft={"method": "lora", "r": 4})
    spec["training"].update(max_steps=2, save_strategy="steps", save_steps=2, output_dir=str(tmp_path / "ddp"))
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(spec))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "mmllm_sdk.cli", "train", "grpo.yaml"],
        cwd=tmp_path,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ddp" / "checkpoint-2" / "mmllm.json").is_file() and (tmp_path / "ddp" / "mmllm.json").is_file()
    assert done.stdout.count("'reward'") + done.stderr.count("'reward'") >= 2  # the main process logs each step
