"""The shape of the code (docs/architecture.md): layers that point one way, no import cycles, small files."""

from pathlib import Path

import pytest
from import_graph import backward_imports, cycles, import_graph

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "mmllm_sdk"
# DESIGN.md §7, lowest first: a module may import its own layer and those below, never one above
LAYERS = (
    ("errors", "files", "dtypes", "validation"),
    ("components",),
    ("hookspecs", "plugins", "registry"),
    ("spec",),
    ("data",),
    ("model",),
    ("training",),
    ("cli",),
)
OUTSIDE = ("default_plugins", "testing")  # plugins and the plugin authors' kit: they may import any layer
MAX_LINES = 400
MAX_CORE_LINES = 5200  # 5000 before the loss and the token log-probabilities without logits and the kept
# system-prompt cache (components/llm.py)


def layer_of(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else None
    return next((number for number, names in enumerate(LAYERS) if top in names), None)


@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE, "mmllm_sdk")


def test_no_module_of_the_sdk_imports_another_that_imports_it_back(graph):
    assert cycles(graph) == []


def test_imports_point_down_the_layers(graph):
    assert backward_imports(graph, layer_of) == []


def test_every_module_belongs_to_a_layer_or_is_a_plugin(graph):
    unplaced = [m for m in graph if m != "mmllm_sdk" and layer_of(m) is None and m.split(".")[1] not in OUTSIDE]
    assert unplaced == []


def test_nothing_outside_the_built_in_plugins_imports_them(graph):
    inside = "mmllm_sdk.default_plugins"
    wrong = [
        f"{importer} -> {target}"
        for importer, targets in graph.items()
        if not importer.startswith(inside)
        for target in targets
        if target.startswith(inside)
    ]
    assert wrong == []


def test_the_core_does_not_import_the_testing_kit(graph):
    wrong = [f"{m} -> {t}" for m, ts in graph.items() if layer_of(m) is not None for t in ts if ".testing" in t]
    assert wrong == []


def test_the_built_model_does_not_consult_the_registry(graph):
    built = ("mmllm_sdk.model.modeling", "mmllm_sdk.model.generation", "mmllm_sdk.model.heads")
    consulted = {module: graph[module] & {"mmllm_sdk.registry", "mmllm_sdk.plugins"} for module in built}
    assert consulted == {module: set() for module in built}


def test_the_checker_finds_a_cycle_hidden_in_a_function_and_an_import_against_the_layers(tmp_path):
    package = tmp_path / "pkg"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("def f():\n    from pkg.high import b  # hidden in a function\n")
    (package / "high.py").write_text(
        "from typing import TYPE_CHECKING\nfrom pkg.low import a\nif TYPE_CHECKING:\n    from pkg import other\n"
    )
    (package / "other.py").write_text("from pkg import high\n")  # imported by high only for annotations

    found = import_graph(package, "pkg")

    assert found["pkg.high"] == {"pkg.low.a"}  # the TYPE_CHECKING import is not a runtime import
    assert cycles(found) == [["pkg.high", "pkg.low.a"]]
    layers = {"low": 0, "high": 1, "other": 2}
    assert backward_imports(found, lambda m: layers.get(m.split(".")[1]) if "." in m else None) == [
        "pkg.low.a -> pkg.high"
    ]


def _python_files(*folders: Path) -> list[Path]:
    return [path for folder in folders for path in sorted(folder.rglob("*.py")) if ".venv" not in path.parts]


def test_no_source_file_is_over_400_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in _python_files(PACKAGE, ROOT / "plugins")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_core_is_at_most_5200_lines():
    core = [path for path in _python_files(PACKAGE) if not set(OUTSIDE) & set(path.relative_to(PACKAGE).parts)]
    assert sum(len(path.read_text(encoding="utf-8").splitlines()) for path in core) <= MAX_CORE_LINES
