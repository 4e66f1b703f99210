"""Plugins add `mmllm` commands (register_commands) and export formats (register_exporters), as the built-ins do."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import mmllm_sdk
from mmllm_sdk.cli import build_parser, command_plugins, main
from mmllm_sdk.errors import DuplicateComponentError, PluginError
from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.plugins import register_plugin
from mmllm_sdk.registry import Exporter, get_registry


def hello(args):
    print(f"Hello, {args.name}{'!' * args.excitement}")
    return 3 if args.name == "nobody" else 0


def export_summary(model, output_dir):
    """A toy format: a folder with a JSON summary of the model."""
    assert isinstance(model, mmllm_sdk.MMLLM)
    output_dir.mkdir(parents=True)
    summary = {"llm": model.spec.llm.name, "inputs": sorted(model.spec.inputs)}
    (output_dir / "summary.json").write_text(json.dumps(summary))
    return output_dir


def export_nothing(model, output_dir):
    raise RuntimeError("disk on fire")


class Greeter:
    @hookimpl
    def register_commands(self, cli):
        command = cli.command("hello", hello, help="say hello", description="Say hello to NAME.")
        command.add_argument("name", help="who to greet")
        command.add_argument("--excitement", type=int, default=1, help="how many exclamation marks")

    @hookimpl
    def register_exporters(self, register):
        description = "writes a folder with summary.json."
        register("summary", Exporter(export_summary, description=description, usage="read it with json.load"))
        register("plain-summary", export_summary)  # a function alone is an exporter too
        register("broken", export_nothing)


@pytest.fixture
def checkpoint(image_model, tmp_path):
    image_model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_a_plugin_command_runs_from_the_cli_with_its_exit_status(plugin, capsys):
    plugin(Greeter(), "greeter")
    assert main(["hello", "World", "--excitement", "3"]) == 0
    assert capsys.readouterr().out == "Hello, World!!!\n"
    assert main(["hello", "nobody"]) == 3
    assert command_plugins()["hello"] == "greeter"
    assert "say hello" in build_parser().format_help()


def test_a_plugin_command_has_help_like_the_builtins(plugin, capsys):
    plugin(Greeter(), "greeter")
    with pytest.raises(SystemExit) as exited:
        main(["hello", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mmllm hello [-h] [--excitement EXCITEMENT] name") and "Say hello to NAME." in out


def test_a_plugin_exporter_writes_a_real_checkpoint_from_the_cli(plugin, checkpoint, tmp_path, capsys):
    plugin(Greeter(), "greeter")
    assert main(["export", str(checkpoint), "--format", "summary", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out == f"Wrote {tmp_path / 'out'} (read it with json.load).\n"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == {"llm": "hf-causal-lm", "inputs": ["image"]}
    assert main(["export", str(checkpoint), "--format", "plain-summary", str(tmp_path / "plain")]) == 0
    assert capsys.readouterr().out == f"Wrote {tmp_path / 'plain'}.\n"


def test_the_export_formats_come_from_the_registered_exporters(plugin, capsys):
    plugin(Greeter(), "greeter")
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    assert "--format {hf-llava,summary,plain-summary,broken}" in out
    assert "summary writes a folder with summary.json." in " ".join(out.split())
    with pytest.raises(SystemExit) as exited:
        main(["export", "ckpt", "--format", "onnx", "out"])
    assert exited.value.code == 2
    assert "argument --format: invalid choice: 'onnx'" in capsys.readouterr().err


def test_an_exporter_that_raises_is_named_with_its_plugin(plugin, checkpoint, tmp_path, capsys):
    plugin(Greeter(), "greeter")
    assert main(["export", str(checkpoint), "--format", "broken", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()  # after the progress bar of loading the checkpoint
    assert err[-1] == "Error: Plugin 'greeter' failed to export as 'broken': RuntimeError: disk on fire"


def test_plugins_lists_commands_and_exporters(plugin, capsys):
    plugin(Greeter(), "greeter")
    assert main(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["greeter"]["registers"] == {"exporters": ["summary", "plain-summary", "broken"], "commands": ["hello"]}
    assert rows["mmllm_sdk.default_plugins.commands.chat"]["registers"] == {"commands": ["chat"]}
    assert rows["mmllm_sdk.default_plugins.exporters"]["registers"] == {"exporters": ["hf-llava"]}


class OtherGreeter:
    @hookimpl
    def register_commands(self, cli):
        cli.command("hello", hello)


def test_a_duplicate_command_name_names_both_plugins(plugin, capsys):
    plugin(Greeter(), "greeter")
    plugin(OtherGreeter(), "other-greeter")
    with pytest.raises(DuplicateComponentError) as caught:
        build_parser()
    assert str(caught.value).startswith(
        "The command 'hello' is registered by both plugin 'greeter' and plugin 'other-greeter'."
    )
    assert main(["plugins"]) == 2  # every command refuses to start, with one line
    assert capsys.readouterr().err.startswith("Error: The command 'hello' is registered by both plugin 'greeter'")


def test_a_command_that_shadows_a_builtin_is_refused(plugin):
    class Impostor:
        @hookimpl
        def register_commands(self, cli):
            cli.command("chat", hello)

    plugin(Impostor(), "impostor")
    with pytest.raises(DuplicateComponentError, match="'chat' is registered by both plugin 'mmllm_sdk.default_plugins"):
        build_parser()


def test_a_duplicate_exporter_name_names_both_plugins(plugin):
    class Clash:
        @hookimpl
        def register_exporters(self, register):
            register("hf-llava", export_summary)

    plugin(Clash(), "clashing-exporter")
    with pytest.raises(DuplicateComponentError) as caught:
        get_registry()
    assert str(caught.value).startswith(
        "The exporter 'hf-llava' is registered by both plugin 'mmllm_sdk.default_plugins.exporters' and plugin "
        "'clashing-exporter'."
    )


def test_a_plugin_that_raises_in_register_commands_is_named_with_the_hook(plugin):
    class Broken:
        @hookimpl
        def register_commands(self, cli):
            raise RuntimeError("no config file")

    plugin(Broken(), "broken-commands")
    with pytest.raises(
        PluginError, match=r"Plugin 'broken-commands' raised RuntimeError in hook register_commands: no config file"
    ):
        build_parser()


@pytest.mark.parametrize(
    ("name", "run", "message"),
    [
        ("Hello World", hello, "with the name 'Hello World'; use lower case letters"),
        ("hello", "hello", "for 'hello' with a run that is not callable"),
    ],
)
def test_a_malformed_command_is_refused(plugin, name, run, message):
    class Sloppy:
        @hookimpl
        def register_commands(self, cli):
            cli.command(name, run)

    plugin(Sloppy(), "sloppy-commands")
    with pytest.raises(PluginError, match=rf"Plugin 'sloppy-commands' called cli.command\(\) .*{message}"):
        build_parser()


def test_a_hook_whose_parameter_is_misnamed_is_refused_when_registered():
    class Misnamed:
        @hookimpl
        def register_commands(self, register):  # the hook's parameter is `cli`
            pass

    with pytest.raises(PluginError, match=r"Plugin 'misnamed' does not fit the SDK's hooks"):
        register_plugin(Misnamed(), "misnamed")


def test_the_top_level_help_imports_neither_torch_nor_transformers_nor_builds_the_registry():
    code = (
        "import sys\nfrom mmllm_sdk.cli import build_parser\nbuild_parser().format_help()\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, f'imported {heavy}'\n"
        "import mmllm_sdk.registry\nassert mmllm_sdk.registry._cache is None, 'built the registry'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
