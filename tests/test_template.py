"""`mmllm new-plugin`: the cookiecutter template renders a plugin that installs, is discovered and passes its tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mmllm_sdk.default_plugins.scaffold import modality_name, new_plugin
from mmllm_sdk.errors import SpecError


def run(*args, cwd=None, env=None, stdin=None):
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, stdin=stdin, timeout=600
    )


def test_a_rendered_plugin_installs_is_discovered_and_its_own_tests_pass(tmp_path):
    made = run("-m", "mmllm_sdk.cli", "new-plugin", "thermal", "--no-input", "--output-dir", str(tmp_path))
    assert made.returncode == 0, made.stderr
    package = tmp_path / "mmllm-thermal"
    assert {p.name for p in package.iterdir()} >= {"pyproject.toml", "README.md", "mmllm_thermal", "tests", ".github"}
    site = tmp_path / "site"  # installed here, not into the test environment, which other tests share
    install = run(
        "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site), str(package)
    )
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("MMLLM_LOAD_PLUGINS", None)
    listed = run("-m", "mmllm_sdk.cli", "plugins", "--json", env=env)
    row = {r["name"]: r for r in json.loads(listed.stdout)}["thermal"]
    assert (row["distribution"], row["version"], row["builtin"]) == ("mmllm-thermal", "0.1.0", False)
    assert row["registers"] == {
        "modalities": ["thermal"],
        "encoders": ["thermal/thermal-patch"],
        "datasets": ["thermal-synthetic"],
    }
    tests = run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=package, env=env)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "10 passed" in tests.stdout


def test_the_mmllm_prefix_is_optional_in_the_name():
    assert modality_name("mmllm-thermal") == modality_name("thermal") == "thermal"


def test_a_name_that_cannot_be_a_modality_is_refused(tmp_path):
    with pytest.raises(SpecError, match=r"'Thermal Camera' cannot name a modality; use lower case letters"):
        new_plugin("Thermal Camera", tmp_path, no_input=True)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_not_overwritten_without_overwrite(tmp_path):
    (tmp_path / "mmllm-sonar").mkdir()
    (tmp_path / "mmllm-sonar" / "mine.txt").write_text("keep")
    with pytest.raises(SpecError, match=r"already exists and is left as it is; .* or pass --overwrite to replace it"):
        new_plugin("sonar", tmp_path, no_input=True)
    assert [p.name for p in (tmp_path / "mmllm-sonar").iterdir()] == ["mine.txt"]


def test_context_overrides_a_template_variable(tmp_path):
    folder = new_plugin("sonar", tmp_path, no_input=True, context={"channels": "2"})
    assert "CHANNELS = 2" in (folder / "mmllm_sonar" / "modality.py").read_text()


def test_an_unknown_template_variable_is_refused_with_the_known_ones(tmp_path):
    with pytest.raises(SpecError, match=r"the template has no variable 'chanels'; its variables are author, channels"):
        new_plugin("sonar", tmp_path, no_input=True, context={"chanels": "2"})


def test_a_value_the_template_cannot_take_writes_nothing(tmp_path):
    with pytest.raises(SpecError, match=r"channels 'many' cannot be used; it must be a whole number from 1 to 9999"):
        new_plugin("sonar", tmp_path, no_input=True, context={"channels": "many"})
    assert list(tmp_path.iterdir()) == []


def test_questions_left_unanswered_write_nothing(tmp_path):
    made = run("-m", "mmllm_sdk.cli", "new-plugin", "sonar", "--output-dir", str(tmp_path), stdin=subprocess.DEVNULL)
    assert made.returncode == 2
    assert "the input ended before every question was answered; pass --no-input" in made.stderr
    assert list(tmp_path.iterdir()) == []
