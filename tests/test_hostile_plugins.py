"""Hostile and careless input, plugin family: plugin hooks and factories, `mmllm new-plugin` values, export targets.

Each case asserts the error class and that the message names the plugin, key, value or path at fault; the data-loss
and code cases assert that nothing was changed, written or run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmllm_sdk import build_model
from mmllm_sdk.cli import main
from mmllm_sdk.default_plugins.exporters.hf_llava import export_hf_llava
from mmllm_sdk.default_plugins.projectors import LinearProjector
from mmllm_sdk.default_plugins.scaffold import check_generated, new_plugin, parse_toml
from mmllm_sdk.errors import ExportError, PluginError, SpecError
from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.registry import Exporter, get_registry
from mmllm_sdk.testing import tiny_spec


def snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root`` (symlinks not followed) with its bytes, its link target or 'folder'."""
    tree = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                tree[key] = ("link", os.readlink(path))
            elif path.is_dir():
                tree[key] = "folder"
            else:
                tree[key] = path.read_bytes()
    return tree


# --- plugin hooks and factories ----------------------------------------------------------------------------------


def test_a_hook_that_returns_its_components_instead_of_registering_them_is_refused(plugin):
    class Returner:
        @hookimpl
        def register_projectors(self, register):
            return [("scaled", LinearProjector)]

    plugin(Returner(), "returning-plugin")
    with pytest.raises(
        PluginError,
        match=r"Plugin 'returning-plugin' returned a list from hook register_projectors, which takes nothing back: "
        r"call register\(\.\.\.\) for each one instead",
    ):
        get_registry()


def test_a_command_hook_that_returns_a_value_is_refused(plugin):
    class Returner:
        @hookimpl
        def register_commands(self, cli):
            return {"hello": print}

    plugin(Returner(), "returning-commands")
    with pytest.raises(
        PluginError,
        match=r"Plugin 'returning-commands' returned a dict from hook register_commands.*call cli\.command\(\.\.\.\)",
    ):
        main(["--debug", "plugins"])


def test_a_hook_that_raises_a_plain_exception_names_the_plugin_and_the_hook(plugin):
    class Broken:
        @hookimpl
        def register_datasets(self, register):
            raise KeyError("data_root")

    plugin(Broken(), "keyerror-plugin")
    with pytest.raises(PluginError, match=r"Plugin 'keyerror-plugin' raised KeyError in hook register_datasets"):
        get_registry()


def test_register_called_without_a_factory_is_refused_with_the_shape_it_takes(plugin):
    class Sloppy:
        @hookimpl
        def register_projectors(self, register):
            register("half-done")

    plugin(Sloppy(), "half-plugin")
    with pytest.raises(
        PluginError, match=r"Plugin 'half-plugin' called register\(\) in register_projectors with \('half-done',\)"
    ):
        get_registry()


def test_register_with_a_factory_that_is_not_callable_is_refused(plugin):
    class Sloppy:
        @hookimpl
        def register_exporters(self, register):
            register("onnx", "not a function")

    plugin(Sloppy(), "uncallable-plugin")
    with pytest.raises(
        PluginError, match=r"Plugin 'uncallable-plugin' .* for 'onnx' with a factory that is not callable"
    ):
        get_registry()


def test_a_factory_that_returns_the_wrong_type_names_the_plugin_and_the_contract(plugin, image_spec):
    class Wrong:
        @hookimpl
        def register_projectors(self, register):
            register("stringly", lambda in_dim, out_dim, num_input_tokens, params: "a projector")

    plugin(Wrong(), "wrong-type-plugin")
    image_spec["inputs"]["image"]["projector"] = {"name": "stringly"}
    with pytest.raises(
        PluginError, match=r"Plugin 'wrong-type-plugin' built the input projector 'stringly' as a str; it must return"
    ):
        build_model(image_spec, progress=False)


def test_an_entry_point_that_fails_to_import_names_the_plugin_and_its_distribution(tmp_path):
    package = tmp_path / "mmllm_broken"
    package.mkdir()
    (package / "__init__.py").write_text("import a_module_that_is_not_installed\n")
    info = tmp_path / "mmllm_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mmllm-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mmllm]\nbroken = mmllm_broken\n")
    code = textwrap.dedent("""
        from mmllm_sdk.plugins import load_plugins
        try:
            load_plugins()
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("MMLLM_LOAD_PLUGINS", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("PluginError Plugin 'broken' (distribution 'mmllm-broken') failed to import: ")
    assert "ModuleNotFoundError" in result.stdout and "MMLLM_LOAD_PLUGINS" in result.stdout


# --- mmllm new-plugin --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("project_slug", "../.."),
        ("project_slug", "/tmp/elsewhere"),
        ("project_slug", "nested/slug"),
        ("package_name", "../escape"),
        ("package_name", "mmllm-sonar"),
        ("package_name", "class"),
        ("package_name", "os"),
        ("encoder_name", ""),
        ("dataset_name", ".."),
        ("placeholder", 'so"nar'),
        ("channels", "0"),
        ("version", "one"),
        ("sdk_requirement", "mmllm-sdk >= 0.1 ]"),
        ("description", "two\nlines"),
        ("author", "bad byte \udcff"),
    ],
)
def test_a_name_or_value_that_would_break_the_package_is_refused_and_nothing_is_written(tmp_path, key, value):
    (tmp_path / "keep.txt").write_text("mine")
    output = tmp_path / "a" / "b" / "out"
    before = snapshot(tmp_path)
    with pytest.raises(SpecError, match=re.escape(f"new-plugin: {key} {value!r} cannot be used; it must be")):
        new_plugin("sonar", output, no_input=True, context={key: value})
    assert snapshot(tmp_path) == before


def test_a_modality_the_sdk_refuses_is_refused_by_new_plugin(tmp_path):
    with pytest.raises(SpecError, match=r"modality 'image' is built into mmllm-sdk \(image, audio, video\)"):
        new_plugin("image", tmp_path, no_input=True)
    with pytest.raises(SpecError, match=r"new-plugin: modality 'Sonar' cannot be used; it must be lower case letters"):
        new_plugin("sonar", tmp_path, no_input=True, context={"modality": "Sonar"})
    assert list(tmp_path.iterdir()) == []


def test_a_name_with_a_trailing_newline_is_not_a_modality(tmp_path):
    with pytest.raises(SpecError, match=r"'sonar\\n' cannot name a modality"):
        new_plugin("sonar\n", tmp_path, no_input=True)
    assert list(tmp_path.iterdir()) == []


def test_quotes_backslashes_and_special_characters_give_valid_files(tmp_path):
    description = "He said \"hi\" \\ back; [x] = {y} # not a comment: 'yaml' & <md> ✓ 😀"
    author = 'O"Brien \\ & Co.'
    folder = new_plugin("sonar", tmp_path, no_input=True, context={"description": description, "author": author})
    project = parse_toml((folder / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["description"] == description
    assert project["authors"] == [{"name": author}]
    check_generated(folder)  # every .py, .toml and .yml file parses


def test_template_markup_in_a_value_is_refused_and_never_evaluated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = "{{ cycler.__init__.__globals__.os.system('touch pwned') }}"
    with pytest.raises(SpecError, match=r"new-plugin: author .*cycler.* holds template markup"):
        main(["--debug", "new-plugin", "sonar", "--no-input", "--set", f"author={payload}"])
    assert list(tmp_path.iterdir()) == []  # no `pwned`, no package


def test_a_generated_file_that_does_not_parse_is_named(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "ok.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "pyproject.toml").write_text('name = "unterminated\n')
    with pytest.raises(SpecError, match=r"the generated pkg/pyproject.toml is not valid TOML \(TOMLDecodeError"):
        check_generated(tmp_path)


def test_an_existing_package_folder_is_left_byte_identical_without_overwrite(tmp_path):
    folder = tmp_path / "mmllm-sonar"
    folder.mkdir()
    (folder / "pyproject.toml").write_text("# my own work\n")
    before = snapshot(tmp_path)
    with pytest.raises(SpecError, match=r"mmllm-sonar' already exists and is left as it is; .* --overwrite"):
        main(["--debug", "new-plugin", "sonar", "--no-input", "--output-dir", str(tmp_path)])
    assert snapshot(tmp_path) == before


def test_a_symlink_where_the_package_would_go_is_refused_and_its_target_kept(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mmllm-sonar").symlink_to(mine)
    before = snapshot(tmp_path)
    with pytest.raises(SpecError, match=r"mmllm-sonar' already exists"):
        new_plugin("sonar", tmp_path / "out", no_input=True)
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_the_package_folder_whole(tmp_path, capsys):
    folder = tmp_path / "mmllm-sonar"
    folder.mkdir()
    (folder / "stale.txt").write_text("old")
    assert main(["new-plugin", "sonar", "--no-input", "--overwrite", "--output-dir", str(tmp_path)]) == 0
    assert "Created" in capsys.readouterr().out
    assert not (folder / "stale.txt").exists() and (folder / "pyproject.toml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mmllm-sonar"]  # no staging folder left


# --- mmllm export --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    path = tmp_path_factory.mktemp("export") / "ckpt"
    build_model(tiny_spec(tokenizer_dir), progress=False).save_pretrained(path)
    return path


def write_notes(model, output_dir):
    """A plugin exporter that writes one file and never checks what was there."""
    Path(output_dir).write_text(f"{type(model).__name__}\n")
    return output_dir


class NotesExporter:
    @hookimpl
    def register_exporters(self, register):
        register("notes", Exporter(write_notes, description="writes a note.", usage=""))


def existing(tmp_path, kind):
    """An OUT that holds something: a regular file, a folder with a file, or a symlink to a folder."""
    out = tmp_path / "out"
    if kind == "file":
        out.write_bytes(b"\x00precious bytes")
    elif kind == "folder":
        out.mkdir()
        (out / "weights.bin").write_bytes(b"precious")
    else:
        target = tmp_path / "elsewhere"
        target.mkdir()
        (target / "weights.bin").write_bytes(b"precious")
        out.symlink_to(target)
    return out


@pytest.mark.parametrize("kind", ["file", "folder", "symlink"])
@pytest.mark.parametrize("format_", ["hf-llava", "notes"])
def test_export_over_an_existing_path_is_refused_without_overwrite(plugin, checkpoint, tmp_path, kind, format_):
    plugin(NotesExporter(), "notes-plugin")
    out = existing(tmp_path, kind)
    before = snapshot(tmp_path)
    with pytest.raises(
        ExportError, match=rf"The export output {re.escape(repr(str(out)))} already exists .* pass --overwrite"
    ):
        main(["--debug", "export", str(checkpoint), "--format", format_, str(out)])
    assert snapshot(tmp_path) == before


def test_export_with_overwrite_replaces_a_symlink_itself_not_its_target(plugin, checkpoint, tmp_path):
    plugin(NotesExporter(), "notes-plugin")
    out = existing(tmp_path, "symlink")
    assert main(["export", str(checkpoint), "--format", "notes", str(out), "--overwrite"]) == 0
    assert not out.is_symlink() and out.read_text() == "MMLLM\n"
    assert (tmp_path / "elsewhere" / "weights.bin").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out"]  # no staging folder left


def test_the_python_export_refuses_an_existing_file_without_overwrite(tokenizer_dir, tmp_path):
    model = build_model(tiny_spec(tokenizer_dir), progress=False)
    out = existing(tmp_path, "file")
    with pytest.raises(ExportError, match=rf"{re.escape(repr(str(out)))} already exists \(a file\)"):
        export_hf_llava(model, out)
    assert out.read_bytes() == b"\x00precious bytes"
    export_hf_llava(model, out, overwrite=True)
    assert (out / "config.json").is_file()


def test_a_plugin_exporter_that_raises_is_named_and_changes_nothing(plugin, checkpoint, tmp_path):
    def explode(model, output_dir):
        Path(output_dir).mkdir()
        (Path(output_dir) / "half.bin").write_bytes(b"half")
        raise RuntimeError("disk quota")

    class Exploding:
        @hookimpl
        def register_exporters(self, register):
            register("boom", explode)

    plugin(Exploding(), "boom-plugin")
    out = existing(tmp_path, "folder")
    before = snapshot(tmp_path)
    with pytest.raises(PluginError, match=r"Plugin 'boom-plugin' failed to export as 'boom': RuntimeError: disk quota"):
        main(["--debug", "export", str(checkpoint), "--format", "boom", str(out), "--overwrite"])
    assert snapshot(tmp_path) == before


def test_a_plugin_exporter_that_writes_nothing_is_named(plugin, checkpoint, tmp_path):
    class Idle:
        @hookimpl
        def register_exporters(self, register):
            register("idle", lambda model, output_dir: output_dir)

    plugin(Idle(), "idle-plugin")
    with pytest.raises(ExportError, match=r"The exporter 'idle' of plugin 'idle-plugin' wrote nothing at the path"):
        main(["--debug", "export", str(checkpoint), "--format", "idle", str(tmp_path / "out")])
    assert list(tmp_path.iterdir()) == []


def test_prefix_tuning_export_is_refused_with_the_reason(tokenizer_dir, tmp_path):
    spec = tiny_spec(tokenizer_dir)
    spec["llm"]["peft"] = {"method": "prefix", "num_virtual_tokens": 3}
    model = build_model(spec, progress=False)
    with pytest.raises(
        ExportError,
        match=r"its LLM is trained with prefix tuning \(llm.peft\), whose virtual key/value tokens have no place in a "
        r"LlavaForConditionalGeneration",
    ):
        export_hf_llava(model, tmp_path / "llava")
    assert list(tmp_path.iterdir()) == []
