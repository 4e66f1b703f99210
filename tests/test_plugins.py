"""The plugin runtime: discovery, registration, duplicates, failures and MMLLM_LOAD_PLUGINS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mmllm_sdk import build_model, list_components
from mmllm_sdk.default_plugins.projectors import LinearProjector
from mmllm_sdk.errors import DuplicateComponentError, PluginError, UnknownComponentError
from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.plugins import register_plugin, unregister_plugin
from mmllm_sdk.registry import get_registry


class ScaledLinear(LinearProjector):
    name = "scaled-linear"


class ProjectorPlugin:
    @hookimpl
    def register_projectors(self, register):
        register("scaled-linear", ScaledLinear)


def test_builtin_components_are_registered_through_the_hooks():
    components = list_components()
    encoders = {(e["modality"], e["name"]) for e in components["encoders"]}
    assert {
        ("image", "hf-clip-vision"),
        ("image", "hf-siglip-vision"),
        ("audio", "hf-whisper-encoder"),
        ("video", "video-frames"),
    } <= encoders
    assert {p["name"] for p in components["projectors"]} >= {"linear", "mlp", "qformer", "resampler", "pool"}
    builtin = [m["name"] for m in components["modalities"] if m["plugin"].startswith("mmllm_sdk.default_plugins")]
    assert builtin == ["image", "audio", "video"]
    assert components["llms"][0] == {"name": "hf-causal-lm", "plugin": "mmllm_sdk.default_plugins.llms"}


def test_an_in_test_plugin_is_used_and_then_gone_once_unregistered(plugin, image_spec):
    plugin(ProjectorPlugin(), "scaled-plugin")
    image_spec["inputs"]["image"]["projector"] = {"name": "scaled-linear"}
    model = build_model(image_spec, progress=False)
    assert isinstance(model.input_projectors["image"], ScaledLinear)
    assert model.sources["inputs.image.projector"].plugin == "scaled-plugin"
    unregister_plugin("scaled-plugin")
    with pytest.raises(UnknownComponentError, match="'scaled-linear' is not a registered input projector"):
        build_model(image_spec, progress=False)
    register_plugin(ProjectorPlugin(), "scaled-plugin")  # so the fixture's cleanup finds it


def test_a_name_registered_again_with_another_object_gives_the_new_components(plugin):
    class Other:
        @hookimpl
        def register_projectors(self, register):
            register("other-linear", LinearProjector)

    plugin(ProjectorPlugin(), "reused-name")
    assert "scaled-linear" in {p["name"] for p in list_components()["projectors"]}
    unregister_plugin("reused-name")
    register_plugin(Other(), "reused-name")  # the fixture removes it
    names = {p["name"] for p in list_components()["projectors"]}
    assert "other-linear" in names and "scaled-linear" not in names


def test_a_duplicate_name_names_both_plugins(plugin):
    class Clash:
        @hookimpl
        def register_projectors(self, register):
            register("mlp", LinearProjector)

    plugin(Clash(), "clashing-plugin")
    with pytest.raises(DuplicateComponentError) as caught:
        get_registry()
    assert str(caught.value).startswith(
        "The input projector 'mlp' is registered by both plugin 'mmllm_sdk.default_plugins.projectors' "
        "and plugin 'clashing-plugin'."  # built-ins register first
    )


def test_a_plugin_that_raises_in_a_hook_is_named_with_the_hook(plugin):
    class Broken:
        @hookimpl
        def register_encoders(self, register):
            raise RuntimeError("weights folder missing")

    plugin(Broken(), "broken-plugin")
    with pytest.raises(
        PluginError,
        match=r"Plugin 'broken-plugin' raised RuntimeError in hook register_encoders: weights folder missing",
    ):
        get_registry()


def test_a_plugin_whose_factory_raises_is_named_with_the_component(plugin, image_spec):
    def explode(in_dim, out_dim, num_input_tokens, params):
        raise RuntimeError("boom")

    class Exploding:
        @hookimpl
        def register_projectors(self, register):
            register("exploding", explode)

    plugin(Exploding(), "exploding-plugin")
    image_spec["inputs"]["image"]["projector"] = {"name": "exploding"}
    with pytest.raises(
        PluginError,
        match=r"Plugin 'exploding-plugin' failed to build the input projector 'exploding': RuntimeError: boom",
    ):
        build_model(image_spec, progress=False)


def test_a_registration_with_the_wrong_shape_is_refused(plugin):
    class Sloppy:
        @hookimpl
        def register_encoders(self, register):
            register("hf-clip-vision", LinearProjector)  # forgot the modality

    plugin(Sloppy(), "sloppy-plugin")
    with pytest.raises(
        PluginError,
        match=r"Plugin 'sloppy-plugin' called register\(\) in register_encoders .* takes \(modality, name, factory\)",
    ):
        get_registry()


def test_an_encoder_for_an_unknown_modality_is_refused(plugin):
    class Lonely:
        @hookimpl
        def register_encoders(self, register):
            register("smell", "nose", LinearProjector)

    plugin(Lonely(), "lonely-plugin")
    with pytest.raises(PluginError, match="no loaded plugin registers modality 'smell'"):
        get_registry()


@pytest.fixture
def installed_plugin(tmp_path):
    """A real distribution on sys.path with an 'mmllm' entry point, as pip would install it."""
    package = tmp_path / "mmllm_sniff"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent("""
        from mmllm_sdk import hookimpl
        from mmllm_sdk.components.modality import ModalitySpec

        @hookimpl
        def register_modalities(register):
            register(ModalitySpec(name="smell", placeholder="<smell>"))
    """)
    )
    info = tmp_path / "mmllm_sniff-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mmllm-sniff\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text("[mmllm]\nsniff = mmllm_sniff\n")
    return tmp_path


def run_plugins_json(path, load_plugins):
    env = {k: v for k, v in os.environ.items() if k != "MMLLM_LOAD_PLUGINS"}
    env["PYTHONPATH"] = str(path)
    if load_plugins is not None:
        env["MMLLM_LOAD_PLUGINS"] = load_plugins
    result = subprocess.run(
        [sys.executable, "-m", "mmllm_sdk.cli", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_an_installed_plugin_is_discovered_through_its_entry_point(installed_plugin):
    plugins = run_plugins_json(installed_plugin, None)
    assert plugins["sniff"]["distribution"] == "mmllm-sniff"
    assert plugins["sniff"]["version"] == "0.3.0"
    assert plugins["sniff"]["registers"] == {"modalities": ["smell"]}


def test_mmllm_load_plugins_empty_loads_only_the_builtins(installed_plugin):
    plugins = run_plugins_json(installed_plugin, "")
    assert "sniff" not in plugins
    assert all(row["builtin"] for row in plugins.values())


def test_mmllm_load_plugins_names_the_plugins_to_load(installed_plugin):
    assert "sniff" in run_plugins_json(installed_plugin, "sniff")
    assert "sniff" in run_plugins_json(installed_plugin, "mmllm-sniff")  # the distribution name works too
    assert "sniff" not in run_plugins_json(installed_plugin, "something-else")


def test_registering_the_same_plugin_object_twice_says_under_which_name(plugin):
    obj = ProjectorPlugin()
    plugin(obj, "first-name")
    with pytest.raises(PluginError, match="already registered as 'first-name'"):
        register_plugin(obj, "second-name")


def test_a_signal_vocabulary_must_match_its_modality(plugin):
    from mmllm_sdk.components.signals import SignalVocabulary

    class Mismatched:
        @hookimpl
        def register_signal_tokens(self, register):
            register("image", SignalVocabulary("audio", 4, "aud"))

    plugin(Mismatched(), "mismatched-plugin")
    with pytest.raises(PluginError, match="for modality 'image' with a SignalVocabulary of modality 'audio'"):
        get_registry()


def test_two_signal_vocabularies_cannot_share_a_prefix(plugin):
    from mmllm_sdk.components import ModalitySpec
    from mmllm_sdk.components.signals import SignalVocabulary

    class Greedy:
        @hookimpl
        def register_modalities(self, register):
            register(ModalitySpec("sketch", "<sketch>"))
            register(ModalitySpec("doodle", "<doodle>"))

        @hookimpl
        def register_signal_tokens(self, register):
            register("sketch", SignalVocabulary("sketch", 4, "sig"))
            register("doodle", SignalVocabulary("doodle", 4, "sig"))

    plugin(Greedy(), "greedy-plugin")
    with pytest.raises(
        PluginError, match=r"Signal tokens <sig_i> are claimed for modality 'sketch' .* and for modality 'doodle'"
    ):
        get_registry()


def test_listing_plugins_imports_neither_torch_nor_transformers():
    code = (
        "import sys\nfrom mmllm_sdk.cli import main\nmain(['plugins'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, f'imported {heavy}'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_a_lazy_component_that_cannot_be_imported_names_its_path(plugin):
    from mmllm_sdk.plugins import Lazy

    class Broken:
        @hookimpl
        def register_projectors(self, register):
            register("ghost", Lazy("mmllm_sdk.nowhere:Ghost"))

    plugin(Broken(), "ghost-plugin")
    entry = get_registry().get("projectors", "ghost")  # listing works without importing it
    with pytest.raises(PluginError, match=r"Lazy\('mmllm_sdk.nowhere:Ghost'\) cannot be imported: ModuleNotFoundError"):
        _ = entry.value
