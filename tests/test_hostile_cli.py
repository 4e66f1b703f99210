"""The command line under bad input: every case ends with one ``Error: …`` paragraph naming the file, field, value or
plugin, a non-zero status and no traceback (``--debug`` shows it); nothing hangs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmllm_sdk import hookimpl
from mmllm_sdk.cli import main
from mmllm_sdk.model.checkpoint import MANIFEST

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str]:
    """``mmllm ARGV`` in this process: its exit status and what it wrote to standard error."""
    try:
        code = main(list(argv))
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def mmllm(*argv: str, stdin: bytes = b"", timeout: float = 120) -> subprocess.CompletedProcess:
    """``mmllm ARGV`` as a user runs it: a new process, standard input given, a deadline."""
    command = [sys.executable, "-m", "mmllm_sdk.cli", *argv]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=timeout, cwd=ROOT)


@pytest.fixture
def spec_file(tmp_path, image_spec):
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(image_spec))
    return path


@pytest.fixture
def saved(image_model, tmp_path):
    image_model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


# --- spec files -----------------------------------------------------------------------------------------------------


def test_validate_a_spec_that_is_not_utf8(capsys, tmp_path):
    (tmp_path / "bad.yaml").write_bytes(b"llm: \xff\xfe\n")
    code, err = run(capsys, "validate", str(tmp_path / "bad.yaml"))
    assert code == 2 and "bad.yaml' is not UTF-8 text (byte 5" in err


def test_validate_deeply_nested_yaml(capsys, tmp_path):
    (tmp_path / "deep.yaml").write_text("llm: " + "[" * 20_000 + "]" * 20_000)
    code, err = run(capsys, "validate", str(tmp_path / "deep.yaml"))
    assert code == 2 and "deep.yaml' nests lists and mappings more than 64 levels deep" in err


def test_validate_a_fifo_ends_at_once_in_a_real_process(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")
    result = mmllm("validate", str(tmp_path / "pipe.yaml"), timeout=60)
    assert result.returncode == 2 and b"pipe.yaml' is a FIFO, not a regular file" in result.stderr
    assert b"Traceback" not in result.stderr


def test_validate_a_broken_chat_template_names_the_field(capsys, tmp_path, image_spec):
    image_spec["llm"]["params"]["chat_template"] = "{% if %}"
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(image_spec))
    code, err = run(capsys, "validate", str(tmp_path / "model.yaml"))
    assert code == 2 and "chat template cannot render" in err and "llm.params.chat_template" in err


def test_validate_a_config_mistake_blames_the_spec_not_the_builtin_plugin(capsys, tmp_path, image_spec):
    image_spec["llm"]["params"]["config"]["hidden_size"] = -8
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(image_spec))
    code, err = run(capsys, "validate", str(tmp_path / "model.yaml"))
    assert code == 2 and "hidden_size is -8; it must be a positive integer" in err and "Plugin" not in err


def test_validate_a_spec_asking_for_remote_code_names_the_flag(capsys, tmp_path, image_spec):
    image_spec["llm"]["params"]["trust_remote_code"] = True
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(image_spec))
    code, err = run(capsys, "validate", str(tmp_path / "model.yaml"))
    assert code == 2 and "llm.params.trust_remote_code: True" in err and "--trust-remote-code" in err
    code, _ = run(capsys, "validate", str(tmp_path / "model.yaml"), "--trust-remote-code")
    assert code == 0  # a config-built LLM reads no code: with the opt-in the spec is valid


# --- chat's arguments -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"), [("--max-new-tokens", "-5"), ("--max-new-tokens", "0"), ("--temperature", "nan")]
)
def test_chat_refuses_a_number_that_is_not_positive(capsys, spec_file, option, value):
    code, err = run(capsys, "chat", str(spec_file), "hi", option, value)
    assert code == 2 and f"argument {option}: must be above 0; got {value}" in err


def test_chat_refuses_a_word_where_a_number_goes(capsys, spec_file):
    code, err = run(capsys, "chat", str(spec_file), "hi", "--max-new-tokens", "many")
    assert code == 2 and "argument --max-new-tokens: 'many' is not a number" in err


def test_chat_reads_its_inputs_before_it_builds_the_model(capsys, tmp_path, saved):
    (tmp_path / "notes.txt").write_text("not an image")
    (saved / "trainable.safetensors").unlink()  # loading the model would fail: the input's error comes first
    code, err = run(capsys, "chat", str(saved), "--input", f"image={tmp_path / 'notes.txt'}", "What is this?")
    assert code == 2 and "notes.txt' has suffix '.txt', which no loader reads" in err


def test_chat_with_an_input_of_an_unknown_modality_names_it(capsys, saved, image_file):
    code, err = run(capsys, "chat", str(saved), "--input", f"smell={image_file}", "What is this?")
    assert code == 2 and "smell" in err


def test_chat_on_a_malformed_manifest_names_the_file(capsys, saved):
    (saved / MANIFEST).write_text('{"format": "mmllm-checkpoint", "format_version": "two"}')
    code, err = run(capsys, "chat", str(saved), "hi")
    assert code == 2 and "mmllm.json' is not a valid mmllm-checkpoint manifest" in err and "format_version" in err


def test_chat_on_a_checkpoint_asking_for_remote_code_needs_the_flag(capsys, saved):
    from mmllm_sdk.model.checkpoint import spec_digest

    data = json.loads((saved / MANIFEST).read_text())
    data["spec"]["llm"]["params"]["trust_remote_code"] = True
    data["digest"]["spec"] = spec_digest(data["spec"])
    (saved / MANIFEST).write_text(json.dumps(data))
    code, err = run(capsys, "chat", str(saved), "hi", "--max-new-tokens", "1")
    assert code == 2 and "asks to run Python code" in err and "--trust-remote-code" in err
    code, _ = run(capsys, "chat", str(saved), "hi", "--max-new-tokens", "1", "--trust-remote-code")
    assert code == 0


def test_chat_with_non_utf8_standard_input_names_the_line(saved):
    result = mmllm("chat", str(saved), "--max-new-tokens", "1", stdin=b"hello\n\xff\xfe oops\n")
    assert result.returncode == 2, result.stderr
    assert b"Line 2 of standard input is not UTF-8 text (byte 0" in result.stderr
    assert b"Traceback" not in result.stderr


def test_export_over_a_fifo_is_refused_even_with_overwrite(capsys, saved, tmp_path):
    os.mkfifo(tmp_path / "pipe")  # stands in for a device
    code, err = run(capsys, "export", str(saved), "--format", "hf-llava", str(tmp_path / "pipe"), "--overwrite")
    assert code == 2 and "pipe': it is a device, FIFO or socket, which is never replaced" in err
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe").st_mode)


# --- what no check foresaw: one paragraph naming the plugin, --debug for the traceback ----------------------------------


class Crashing:
    """A third-party command whose code has a bug."""

    @hookimpl
    def register_commands(self, cli):
        cli.command("crash", lambda args: {}["missing key"], help="fails")


def test_an_unexpected_error_in_a_plugin_is_one_paragraph_naming_the_plugin(capsys, plugin):
    plugin(Crashing(), "mmllm-crashing")
    code, err = run(capsys, "crash")
    assert code == 1
    assert err.startswith("Error: `mmllm crash` stopped on an unexpected KeyError in ")
    assert "'missing key'" in err and "--debug" in err and err.count("\n") == 1


def test_debug_shows_the_traceback(capsys, plugin):
    plugin(Crashing(), "mmllm-crashing")
    with pytest.raises(KeyError):
        main(["crash", "--debug"])


def test_an_error_in_a_plugin_module_names_that_plugin(capsys, plugin, tmp_path, monkeypatch):
    (tmp_path / "mmllm_buggy.py").write_text(
        "from mmllm_sdk import hookimpl\n\n\ndef run(args):\n    return 1 / 0\n\n\n"
        "@hookimpl\ndef register_commands(cli):\n    cli.command('buggy', run)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import mmllm_buggy

    plugin(mmllm_buggy, "mmllm-buggy")
    code, err = run(capsys, "buggy")
    assert code == 1 and "ZeroDivisionError in plugin 'mmllm-buggy' (mmllm_buggy, line 5)" in err


def test_an_unknown_command_is_a_usage_error(capsys):
    code, err = run(capsys, "trian", "x.yaml")
    assert code == 2 and "invalid choice: 'trian'" in err
