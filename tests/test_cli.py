"""The mmllm command line."""

from __future__ import annotations

import io
import json

import pytest
import yaml

from mmllm_sdk.cli import build_parser, command_plugins, main


def test_plugins_lists_each_plugin_and_what_it_registers(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "mmllm_sdk.default_plugins.encoders (built-in)" in out
    assert (
        "  encoders: image/hf-clip-vision, image/hf-siglip-vision, audio/hf-whisper-encoder, video/video-frames" in out
    )


def test_plugins_json_is_machine_readable(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["mmllm_sdk.default_plugins.projectors"]["registers"]["projectors"] == [
        "linear",
        "mlp",
        "qformer",
        "resampler",
        "pool",
    ]


def test_validate_prints_components_token_budget_and_parameter_counts(tmp_path, image_spec, capsys):
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(image_spec))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: valid" in out
    assert "input image   hf-clip-vision (16 x 24) -> mlp -> 16 LLM tokens per <image>" in out
    assert "inputs.image.projector" in out and "total" in out


def test_validate_reports_a_bad_spec_as_one_error_line(tmp_path, image_spec, capsys):
    image_spec["inputs"]["image"]["projector"]["name"] = "mpl"
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(image_spec))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: inputs.image.projector.name in ") and "Did you mean 'mlp'?" in err


def test_chat_answers_from_a_checkpoint(image_model, image_file, tmp_path, capsys):
    image_model.save_pretrained(tmp_path / "ckpt")
    code = main(
        ["chat", str(tmp_path / "ckpt"), "--input", f"image={image_file}", "What is this?", "--max-new-tokens", "3"]
    )
    assert code == 0
    expected = image_model.generate(
        [
            {
                "role": "user",
                "content": [{"type": "image", "path": str(image_file)}, {"type": "text", "text": "What is this?"}],
            }
        ],
        max_new_tokens=3,
        do_sample=False,
    ).text
    assert capsys.readouterr().out.endswith(expected + "\n")


def test_chat_reads_questions_from_stdin_without_a_question(image_model, tmp_path, capsys, monkeypatch):
    image_model.save_pretrained(tmp_path / "ckpt")
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello?\nAnd now?\n"))
    assert main(["chat", str(tmp_path / "ckpt"), "--max-new-tokens", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) >= 2


def test_chat_rejects_a_malformed_input_flag(image_model, tmp_path, capsys):
    assert main(["chat", "whatever.yaml", "--input", "cat.png", "Hi"]) == 2
    assert "must look like MODALITY=PATH" in capsys.readouterr().err


COMMANDS = ["plugins", "validate", "chat", "train", "demo", "new-plugin", "export"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert "usage: mmllm " + command in capsys.readouterr().out


def test_the_top_level_help_lists_the_commands():
    help_text = build_parser().format_help()
    for command in COMMANDS:
        assert command in help_text


def test_every_builtin_command_comes_from_a_builtin_plugin():
    assert {name: plugin.rsplit(".", 1)[-1] for name, plugin in command_plugins().items()} == {
        "plugins": "inspection",
        "validate": "inspection",
        "chat": "chat",
        "train": "training",
        "demo": "training",
        "new-plugin": "new_plugin",
        "export": "export",
        "eval": "evaluation",
        "probe": "evaluation",
        "serve": "serving",
    }
    assert all(plugin.startswith("mmllm_sdk.default_plugins.commands.") for plugin in command_plugins().values())


def test_without_a_command_the_help_is_printed_with_status_2(capsys):
    assert main([]) == 2
    assert capsys.readouterr().out.startswith("usage: mmllm [-h] [--debug] COMMAND ...")


def test_output_into_a_pipe_that_closes_early_ends_quietly():
    import subprocess
    import sys

    reader = f"{sys.executable} -m mmllm_sdk.cli plugins | true"  # the reader is gone before the first line
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {reader}"], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
