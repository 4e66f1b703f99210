"""The docs keep up with the code: hooks, contract pages, public names, errors, CLI commands and examples."""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import shlex
from pathlib import Path

import pytest

import mmllm_sdk
import mmllm_sdk.components
import mmllm_sdk.errors
from mmllm_sdk import hookspecs
from mmllm_sdk.cli import build_parser

DOCS = Path(__file__).resolve().parent.parent / "docs"
CONTRACT_PAGES = ("modality", "encoder", "input-projector", "llm", "output-side")
HOOKS = {name: fn for name, fn in vars(hookspecs).items() if name.startswith("register_") and inspect.isfunction(fn)}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def pages() -> dict[str, str]:
    return {str(path.relative_to(DOCS)): path.read_text(encoding="utf-8") for path in sorted(DOCS.rglob("*.md"))}


def prose(text: str) -> str:
    """The page without its fenced code blocks (a '# comment' in a block is not a heading)."""
    return FENCE.sub("", text)


def headings(text: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^#{1,6} (.+)$", prose(text), re.M)]


def code_blocks(language: str) -> list[tuple[str, str]]:
    return [
        (page, m.group(2)) for page, text in pages().items() for m in FENCE.finditer(text) if m.group(1) == language
    ]


def signature(hook) -> str:
    return f"{hook.__name__}{inspect.signature(hook)}"


# hooks -------------------------------------------------------------------------------------


def hook_functions() -> list[ast.FunctionDef]:
    """The functions decorated with ``@hookimpl`` in docs/hooks.md's python blocks."""
    return [
        node
        for page, body in code_blocks("python")
        if page == "hooks.md"
        for node in ast.parse(body).body
        if isinstance(node, ast.FunctionDef) and any(ast.unparse(d) == "hookimpl" for d in node.decorator_list)
    ]


def documented_hooks() -> dict[str, ast.FunctionDef]:
    """The hooks written out with their docstrings in docs/hooks.md, by name (examples have no docstring)."""
    functions = {}
    for node in hook_functions():
        if ast.get_docstring(node) is not None:
            functions.setdefault(node.name, node)
    return functions


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_has_a_heading_with_its_signature_in_hooks_md(name):
    expected = signature(HOOKS[name])
    found = [h.strip("`") for h in headings(read("hooks.md"))]
    assert expected in found, f"docs/hooks.md needs a heading '## `{expected}`'"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_is_written_out_in_hooks_md_with_its_exact_signature_and_docstring(name):
    function = documented_hooks().get(name)
    assert function is not None, f"docs/hooks.md needs a python block with 'def {signature(HOOKS[name])}:'"
    written = f"{name}({ast.unparse(function.args)})"
    assert written == signature(HOOKS[name]), f"docs/hooks.md writes {written}; the hook is {signature(HOOKS[name])}"
    assert ast.get_docstring(function) == inspect.getdoc(HOOKS[name]), f"docs/hooks.md: {name}'s docstring differs"


def test_hooks_md_documents_no_hook_that_does_not_exist():
    documented = {m.group(1) for h in headings(read("hooks.md")) if (m := re.match(r"`?(register_\w+)\(", h))}
    documented |= {node.name for node in hook_functions()}
    assert documented <= set(HOOKS), f"documented but not in mmllm_sdk.hookspecs: {sorted(documented - set(HOOKS))}"


def test_every_mention_of_a_hook_with_arguments_uses_its_real_signature():
    wrong = []
    for page, text in pages().items():
        for match in re.finditer(r"\b(register_\w+)\(([^()]*)\)", text):
            name, args = match.groups()
            if name not in HOOKS:
                continue
            args = re.sub(r"^\s*self\s*,\s*", "", args)  # a hook written as a method of a plugin object
            if f"{name}({args})" != signature(HOOKS[name]):
                wrong.append(f"{page}: {match.group(0)} (the hook is {signature(HOOKS[name])})")
    assert not wrong, "\n".join(wrong)


# pages and names -----------------------------------------------------------------------------


@pytest.mark.parametrize("page", CONTRACT_PAGES)
def test_every_contract_page_exists_and_is_linked_from_the_index(page):
    path = DOCS / "contracts" / f"{page}.md"
    assert path.is_file() and path.read_text(encoding="utf-8").startswith("# ")
    assert f"(contracts/{page}.md)" in read("index.md")


def test_every_page_is_linked_from_the_index():
    index = read("index.md")
    for page in pages():
        if page != "index.md":
            assert f"({page})" in index, f"docs/index.md does not link {page}"


@pytest.mark.parametrize("name", sorted({*mmllm_sdk.__all__, *mmllm_sdk.components.__all__}), ids=str)
def test_every_public_name_is_documented(name):
    text = "\n".join(pages().values())
    assert re.search(rf"(?<!\w){re.escape(name)}\b", text), f"{name} appears nowhere in docs/"


ERRORS = sorted(
    name
    for name, value in vars(mmllm_sdk.errors).items()
    if isinstance(value, type) and issubclass(value, mmllm_sdk.errors.MMLLMError)
)


@pytest.mark.parametrize("name", ERRORS)
def test_every_error_class_has_a_section_in_errors_md(name):
    assert f"`{name}`" in headings(read("errors.md")), f"docs/errors.md needs a heading '## `{name}`'"


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", ""))
    return text.replace(" ", "-")


def test_links_between_pages_point_at_existing_pages_and_headings():
    broken = []
    for page, text in pages().items():
        for target, anchor in re.findall(r"\]\(([^)#\s]*\.md|)(?:#([^)\s]+))?\)", prose(text)):
            if re.match(r"\w+://", target):
                continue
            path = (DOCS / page).parent / target if target else DOCS / page
            if not path.is_file():
                broken.append(f"{page}: ({target}) does not exist")
            elif anchor and anchor not in {github_anchor(h) for h in headings(path.read_text(encoding="utf-8"))}:
                broken.append(f"{page}: ({target}#{anchor}) names no heading of {target or page}")
    assert not broken, "\n".join(broken)


# the command line ----------------------------------------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def cli_section(command: str) -> str:
    text = prose(read("cli.md"))
    match = re.search(rf"^## mmllm {command}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/cli.md needs a section '## mmllm {command}'"
    return match.group(1)


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_cli_command_is_documented_with_all_its_arguments(command):
    section = cli_section(command)
    for action in subcommands()[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = [s for s in action.option_strings if s.startswith("--")] or [action.metavar or action.dest]
        for name in names:  # a table row per argument: | `--max-new-tokens MAX_NEW_TOKENS` | meaning |
            assert re.search(rf"^\| `{re.escape(name)}[` ]", section, re.M), (
                f"'mmllm {command}' in docs/cli.md has no table row for {name}"
            )


def test_cli_md_documents_no_command_that_does_not_exist():
    documented = {m.group(1) for h in headings(read("cli.md")) if (m := re.match(r"mmllm (\S+)$", h))}
    assert documented == set(subcommands())


COMMAND = re.compile(r"""\bcli\.command\(\s*["']([\w-]+)["']""")


def plugin_commands(page: str) -> set[str]:
    """The commands a page's own example plugins add (``cli.command("hello", …)`` in its python blocks)."""
    return {name for where, body in code_blocks("python") if where == page for name in COMMAND.findall(body)}


def test_every_mmllm_command_line_in_the_docs_parses():
    parser = build_parser()
    for page, body in code_blocks("console") + code_blocks("bash"):
        for line in body.splitlines():
            words = shlex.split(line.removeprefix("$ "), comments=True)
            while words and re.match(r"^\w+=", words[0]):  # VAR=value before the command
                words.pop(0)
            if not words or words[0] != "mmllm" or (len(words) > 1 and words[1] in plugin_commands(page)):
                continue  # a command of the page's example plugin runs in tests/test_doc_examples.py
            args, extra = parser.parse_known_args(words[1:])
            assert args.command, f"{page}: {line}"
            assert not [w for w in extra if w.startswith("-")], f"{page}: {line} uses an unknown flag {extra}"


# every example also runs as written: tests/test_doc_examples.py
