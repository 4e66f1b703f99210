"""Hostile and careless model specs: each is refused before any weight loads, with an error of the right class whose
message names the file, field or value; nothing hangs, nothing runs code from a model folder without the opt-in."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml
from hostile import finishes

import mmllm_sdk
from mmllm_sdk.errors import DimensionError, SpecError
from mmllm_sdk.testing import tiny_spec


@pytest.fixture
def spec(tokenizer_dir):
    return tiny_spec(tokenizer_dir, inputs=("image",))


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def skeleton(spec, **kwargs):
    return mmllm_sdk.build_model(spec, skeleton=True, progress=False, **kwargs)


# --- the file itself ----------------------------------------------------------------------------------------------


def test_a_spec_file_that_is_not_utf8_names_the_file_and_the_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("llm: {name: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(SpecError, match=r"latin1\.yaml.*not UTF-8.*byte 15"):
        mmllm_sdk.load_spec(path)


def test_a_binary_spec_file_is_not_valid_yaml(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"\x00\x01\x02llm\x00")
    with pytest.raises(SpecError, match=r"weights\.yaml.*not valid YAML"):
        mmllm_sdk.load_spec(path)


def test_a_spec_path_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")  # nobody writes to it: opening it for reading would block forever
    error = finishes(lambda: mmllm_sdk.load_spec(tmp_path / "pipe.yaml"))
    assert isinstance(error, SpecError) and "pipe.yaml" in str(error) and "FIFO" in str(error)


def test_a_spec_that_links_to_dev_zero_is_refused_without_reading_it(tmp_path):
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    error = finishes(lambda: mmllm_sdk.load_spec(tmp_path / "zero.yaml"))
    assert isinstance(error, SpecError) and "zero.yaml" in str(error) and "not a regular file" in str(error)


def test_a_folder_given_as_spec_says_it_is_a_folder(tmp_path):
    with pytest.raises(SpecError, match=r"is a folder, not a regular file"):
        mmllm_sdk.load_spec(tmp_path)


def test_a_spec_file_over_the_size_limit_is_refused_before_parsing(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"# " + b"x" * (17 << 20) + b"\n")
    with pytest.raises(SpecError, match=r"huge\.yaml.*over the limit of 16,777,216 bytes"):
        mmllm_sdk.load_spec(path)


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9**10 strings expanded
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    error = finishes(lambda: mmllm_sdk.load_spec(path), seconds=10)
    assert isinstance(error, SpecError) and "bomb.yaml" in str(error) and "aliases are expanded" in str(error)


def test_yaml_nested_deeper_than_the_parser_goes_is_a_sentence(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("llm: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(SpecError, match=r"deep\.yaml' nests lists and mappings more than 64 levels"):
        mmllm_sdk.load_spec(path)


def test_yaml_nested_past_the_bound_is_refused(tmp_path):
    path = tmp_path / "nested.yaml"
    path.write_text("llm: " + "{a: " * 80 + "1" + "}" * 80 + "\n")
    with pytest.raises(SpecError, match=r"nested\.yaml' nests lists and mappings more than 64 levels"):
        mmllm_sdk.load_spec(path)


def test_a_spec_that_holds_a_list_says_what_it_must_hold(tmp_path):
    with pytest.raises(SpecError, match=r"list\.yaml.*must hold a mapping with 'llm'.*it holds list"):
        mmllm_sdk.load_spec(write(tmp_path / "list.yaml", ["llm"]))


def test_a_seed_that_is_not_a_number_names_the_field(tmp_path, spec):
    spec["seed"] = "forty-two"
    with pytest.raises(SpecError, match=r"seed:.*integer.*'forty-two'"):
        mmllm_sdk.load_spec(write(tmp_path / "seed.yaml", spec))


def test_a_seed_beyond_what_the_random_generators_take_names_the_field(tmp_path, spec):
    spec["seed"] = 2**70
    with pytest.raises(SpecError, match=r"seed: Input should be less than 4294967296 \(got 1180591620717411303424\)"):
        mmllm_sdk.load_spec(write(tmp_path / "seed.yaml", spec))


# --- configuration mistakes are SpecErrors naming the field, never a PluginError --------------------------------------


@pytest.mark.parametrize(
    ("where", "field", "value"),
    [
        ("llm", "hidden_size", -8),
        ("llm", "num_hidden_layers", 0),
        ("llm", "vocab_size", -1),
        ("encoder", "patch_size", 0),
        ("encoder", "hidden_size", -24),
        ("encoder", "image_size", 0),
    ],
)
def test_a_size_that_is_not_positive_is_a_spec_error_naming_field_and_value(spec, where, field, value):
    config = (
        spec["llm"]["params"]["config"] if where == "llm" else spec["inputs"]["image"]["encoder"]["params"]["config"]
    )
    config[field] = value
    with pytest.raises(SpecError, match=rf"{field} is {value}; it must be a positive integer") as caught:
        skeleton(spec)
    assert "llm" in str(caught.value) if where == "llm" else "inputs.image.encoder" in str(caught.value)


def test_heads_that_do_not_divide_the_width_name_both_numbers(spec):
    spec["inputs"]["image"]["encoder"]["params"]["config"]["num_attention_heads"] = 5  # width 24
    with pytest.raises(SpecError, match=r"inputs\.image\.encoder.*hidden_size 24 is not divisible by.*heads 5"):
        skeleton(spec)


def test_key_value_heads_that_do_not_divide_the_heads_are_a_spec_error(spec):
    spec["llm"]["params"]["config"]["num_key_value_heads"] = 3  # 4 heads
    with pytest.raises(SpecError, match=r"llm.*(4|3)"):
        skeleton(spec)


# --- what could never run here is refused at validation, with the numbers ---------------------------------------------


def test_more_tokens_per_image_than_the_llm_has_positions_is_refused_at_validation(spec):
    spec["inputs"]["image"]["encoder"]["params"]["config"].update(image_size=8 * 100_000)  # 10**10 patches
    error = finishes(lambda: skeleton(spec))
    assert isinstance(error, DimensionError)
    assert "10,000,000,000 tokens per image" in str(error) and "positions for 512" in str(error)


def test_a_model_too_large_for_memory_is_refused_at_validation_naming_its_largest_part(spec):
    spec["llm"]["params"]["config"].update(vocab_size=10**9)  # 10**9 x 32 floats, twice: 256 GB
    error = finishes(lambda: skeleton(spec))
    assert isinstance(error, SpecError) and "more than this machine's" in str(error)
    assert str(error).index("llm ") < str(error).index("inputs.image")  # the largest component first


def test_more_prefix_tokens_than_the_llm_has_positions_is_refused_at_validation(spec):
    spec["llm"]["peft"] = {"method": "prefix", "num_virtual_tokens": 10**6}
    with pytest.raises(
        SpecError, match=r"llm\.peft\.num_virtual_tokens is 1,000,000, but the LLM has positions for 512"
    ):
        skeleton(spec)


# --- the chat template is checked when the LLM is built ------------------------------------------------------------


def test_a_chat_template_with_a_syntax_error_is_a_spec_error_naming_the_field(spec):
    spec["llm"]["params"]["chat_template"] = "{% for message in messages %}{{ message['content'] }"
    with pytest.raises(
        SpecError, match=r"chat template cannot render.*TemplateSyntaxError.*llm\.params\.chat_template"
    ):
        skeleton(spec)


def test_a_chat_template_that_rejects_an_exchange_is_a_spec_error(spec):
    spec["llm"]["params"]["chat_template"] = "{{ raise_exception('only system messages') }}"
    with pytest.raises(SpecError, match=r"only system messages.*llm\.params\.chat_template"):
        skeleton(spec)


# --- no code from a model folder without the caller's opt-in --------------------------------------------------------


@pytest.fixture
def code_folder(tmp_path):
    """A model folder whose config needs its own Python code, which leaves a marker file when it is imported."""
    folder = tmp_path / "remote-model"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    (folder / "configuration_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n\n\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    config = {"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_a_spec_asking_for_remote_code_is_refused_without_the_opt_in_and_nothing_runs(spec, code_folder):
    folder, marker = code_folder
    spec["llm"]["params"] = {"model": str(folder), "tokenizer": spec["llm"]["params"]["tokenizer"]}
    spec["llm"]["params"]["trust_remote_code"] = True
    with pytest.raises(SpecError, match=r"llm\.params\.trust_remote_code: True.*trust_remote_code=True"):
        skeleton(spec)
    assert not marker.exists()


def test_remote_code_asked_for_deep_in_a_plugins_params_is_refused_too(spec):
    spec["inputs"]["image"]["encoder"]["params"]["config"]["trust_remote_code"] = "yes"
    with pytest.raises(SpecError, match=r"inputs\.image\.encoder\.params\.config\.trust_remote_code: 'yes'"):
        skeleton(spec)


def test_a_model_folder_with_code_never_runs_it_when_the_spec_does_not_ask(spec, code_folder):
    folder, marker = code_folder
    spec["llm"]["params"] = {"model": str(folder), "tokenizer": spec["llm"]["params"]["tokenizer"]}
    with pytest.raises(SpecError, match=r"llm.*remote-model"):
        skeleton(spec)
    assert not marker.exists()


def test_the_opt_in_for_the_call_lets_the_folders_code_run(spec, code_folder):
    folder, marker = code_folder
    spec["llm"]["params"] = {"model": str(folder), "tokenizer": spec["llm"]["params"]["tokenizer"]}
    spec["llm"]["params"]["trust_remote_code"] = True
    with pytest.raises(SpecError):  # the folder has no weights or causal LM class: only its config code runs
        skeleton(copy.deepcopy(spec), trust_remote_code=True)
    assert marker.read_text() == "ran"


# --- weight files that are not what they claim name the file --------------------------------------------------------


@pytest.fixture
def gguf_folder(tmp_path):
    folder = tmp_path / "gguf"
    folder.mkdir()
    return folder


def gguf_spec(folder: Path, name: str) -> dict:
    return {"llm": {"name": "hf-causal-lm", "params": {"model": str(folder), "gguf_file": name}}}


def test_a_forged_gguf_file_is_a_spec_error_naming_the_file(gguf_folder):
    (gguf_folder / "forged.gguf").write_bytes(os.urandom(256))
    with pytest.raises(SpecError, match=r"llm.*gguf.*forged\.gguf"):
        skeleton(gguf_spec(gguf_folder, "forged.gguf"))


def test_a_gguf_file_cut_short_is_a_spec_error_naming_the_file(gguf_folder):
    (gguf_folder / "short.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)  # a header claiming 2**64 tensors
    error = finishes(lambda: skeleton(gguf_spec(gguf_folder, "short.gguf")))
    assert isinstance(error, SpecError) and "short.gguf" in str(error)
