"""Run the examples of README.md, docs/ and the plugin READMEs as written: the harness of tests/test_doc_examples.py.

Each page runs in a fresh folder, block after block, the way a reader follows it:

- ``console`` / ``bash``: each ``$ COMMAND`` line (a ``bash`` block: each line) runs from the page's
  folder. The lines after a command are its expected output: each must appear in what it printed,
  in order (other lines may come between them). ``…`` in a line matches anything, runs of spaces
  match any spacing, and a number with a decimal point matches within 2 %. Expected output that
  starts with ``Error:`` means the command must exit with status 2; otherwise with 0.
  ``mmllm …`` runs in the page's Python session (what the console script runs, without a new
  interpreter per command); any other command runs in bash.
- ``python``: runs in the page's Python session (one namespace per page). A comment after a
  ``print(…)`` on its line shows what it prints and is compared (up to an explanation after ``: ``,
  two spaces or `` (``); an explanation alone goes on the line above, not after a print.
- ``yaml`` with ``file=PATH``: written to PATH, then checked as a model spec (built as a skeleton:
  every name, param and size), a recipe, or an accelerate config. ``fragment=PATH``: a part of the
  spec in PATH, merged into it and checked.
- ``json`` with ``file=PATH``: written to PATH; without, it must parse (as JSON or JSON lines).

Attributes follow the language in the block's info string (```` ```yaml file=pt.yaml ````):

- ``file=PATH``: write the block to PATH (any language) instead of running it.
- ``skip="KIND: reason"``: not run. KIND is ``network`` (it downloads), ``gpu``, ``covered``
  (run elsewhere: the reason names the test file that runs it) or ``timing`` (a benchmark: it
  measures the machine for minutes and needs it quiet; not a test).
- ``excerpt=MODULE``: a python block quoting MODULE's classes or functions: each must exist there
  with the same parameters.
- ``plugin=NAME``: a python block whose ``@hookimpl`` functions are registered as the plugin NAME.
- ``stdin=TEXT``: what a console command reads from standard input.

Hub ids resolve to the offline stand-ins of ``mmllm_sdk.testing.hub`` (a hub cache folder, with
``HF_HUB_OFFLINE=1``); the repository's ``examples/`` and ``plugins/`` folders are copied into every
page's folder, so a page names them as a reader in the repository's root does. ``pip install`` goes
into the page's own virtual environment, which sees the test environment's packages.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
KERNEL = Path(__file__).resolve().parent / "doc_kernel.py"
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
RUNNABLE = ("console", "bash", "python", "yaml", "json")
SKIP_KINDS = ("network", "gpu", "covered", "timing")
ATTRIBUTES = {"file", "fragment", "skip", "excerpt", "plugin", "stdin"}
TIMEOUT = 600  # seconds for one block


@dataclass
class Block:
    """One fenced block of a page: its language, info-string attributes, text and first line number."""

    page: str
    language: str
    attributes: dict[str, str]
    text: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


TEMPLATE_README = ROOT / "templates" / "cookiecutter-mmllm-plugin" / "{{cookiecutter.project_slug}}" / "README.md"


def page_files() -> list[Path]:
    """Every page whose examples run: README.md, docs/**, the plugin READMEs and examples/README.md.

    (The plugin template's README runs too, as the README of a plugin ``mmllm new-plugin`` generates.)
    """
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted(ROOT.glob("plugins/*/README.md"))]
    return [*pages, ROOT / "examples" / "README.md"]


def blocks(path: Path, name: str | None = None) -> list[Block]:
    """The fenced blocks of a page (``name``: how errors name it; default its path in the repository)."""
    text = path.read_text(encoding="utf-8")
    name = name or str(path.relative_to(ROOT))
    found = []
    for match in FENCE.finditer(text):
        attributes = {}
        for item in shlex.split(match.group(2)):
            key, _, value = item.partition("=")
            attributes[key] = value
        found.append(Block(name, match.group(1), attributes, match.group(3), text.count("\n", 0, match.start()) + 2))
    return found


def problems(block: Block) -> list[str]:
    """What is wrong with a block's marking (an unknown attribute, a skip without its reason…)."""
    wrong = [f"{block.where}: unknown attribute {key!r}" for key in block.attributes if key not in ATTRIBUTES]
    skip = block.attributes.get("skip")
    if skip is not None:
        kind, _, reason = skip.partition(":")
        if kind not in SKIP_KINDS or not reason.strip():
            wrong.append(
                f'{block.where}: skip="{skip}" must be "KIND: reason" with KIND one of {", ".join(SKIP_KINDS)}'
            )
        elif kind == "covered" and not any((ROOT / word).is_file() for word in reason.split() if "/" in word):
            wrong.append(f"{block.where}: skip={skip!r} must name the test file that runs it (tests/test_….py)")
    if block.language == "yaml" and not {"file", "fragment", "skip"} & set(block.attributes):
        wrong.append(f"{block.where}: a yaml block needs file=PATH, fragment=PATH or skip=… to be checked")
    if block.language == "python" and block.attributes.get("excerpt"):
        try:
            importlib.import_module(block.attributes["excerpt"])
        except ImportError:
            wrong.append(f"{block.where}: excerpt={block.attributes['excerpt']} is not an importable module")
    return wrong


# output matching ------------------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROGRESS = re.compile(r"\d+%\|.*\|")  # a tqdm bar
NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")


def screen(text: str) -> list[str]:
    """What a terminal shows of ``text``: the last state of each carriage-returned line, no progress bars."""
    lines = []
    for raw in ANSI.sub("", text).split("\n"):
        line = raw.split("\r")[-1].rstrip()
        if line and not PROGRESS.search(line):
            lines.append(line)
    return lines


def line_matches(expected: str, actual: str) -> bool:
    pattern, numbers, position = "", [], 0
    for match in NUMBER.finditer(expected):
        pattern += _literal(expected[position : match.start()]) + r"([-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?)"
        numbers.append(match.group(0))
        position = match.end()
    pattern += _literal(expected[position:])
    found = re.fullmatch(pattern, actual.strip())
    if found is None:
        return False
    for want, got in zip(numbers, found.groups(), strict=True):
        w, g = float(want.replace(",", "")), float(got.replace(",", ""))
        if ("." in want or "e" in want.lower()) and abs(w - g) <= 0.02 * abs(w) + 1e-9:
            continue
        if w != g:
            return False
    return True


def _literal(text: str) -> str:
    parts = re.split(r"(…|\s+)", text)
    return "".join(".*?" if p == "…" else r"\s+" if p.isspace() else re.escape(p) for p in parts if p)


def unmatched(expected: list[str], actual: list[str]) -> str | None:
    """The first expected line that does not appear (in order) in ``actual``, or None."""
    position = 0
    for want in expected:
        if want.strip() in ("", "…"):
            continue
        while position < len(actual) and not line_matches(want.strip(), actual[position]):
            position += 1
        if position == len(actual):
            return want
        position += 1
    return None


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of a console block; of a bash block, each command line alone."""
    found: list[tuple[str, list[str]]] = []
    lines = block.text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if block.language == "bash":
            if line.strip() and not line.lstrip().startswith("#"):
                found.append((_uncomment(line), []))
            continue
        if not line.startswith("$ "):
            if found:
                found[-1][1].append(line)
            elif line.strip():
                raise AssertionError(f"{block.where}: output {line!r} before any '$ ' command")
            continue
        command = line[2:]
        while command.endswith("\\") and index < len(lines):
            command = command[:-1] + " " + lines[index].strip()
            index += 1
        found.append((_uncomment(command), []))
    return found


def _uncomment(command: str) -> str:
    """The command without a trailing ``# comment`` (a ``#`` outside quotes, after a space)."""
    quote, kept = None, []
    for i, char in enumerate(command):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or command[i - 1].isspace()):
            break
        kept.append(char)
    return "".join(kept).strip()


# the page's environment -----------------------------------------------------------------------------


def make_venv(folder: Path) -> Path:
    """A virtual environment that sees the test environment's packages and takes its own ``pip install``.

    So a page can install a plugin as a reader would, without changing the environment of the
    rest of the suite. Returns its ``bin`` folder.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = Path(
        sysconfig.get_path("purelib", vars={"base": str(folder), "platbase": str(folder)})
    )  # the new venv's site-packages
    here = sysconfig.get_path("purelib")
    (site / "_doc_test_environment.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    bin_dir = folder / "bin"
    python = bin_dir / "python"
    for script in Path(sys.executable).parent.iterdir():  # console scripts (mmllm, pip, torchrun…) of this venv
        target = bin_dir / script.name
        if target.exists() or not script.is_file():
            continue
        head = script.read_bytes()[:200]
        if head.startswith(b"#!") and b"python" in head.split(b"\n", 1)[0]:
            body = script.read_text(encoding="utf-8").split("\n", 1)[1]
            target.write_text(f"#!{python}\n{body}", encoding="utf-8")
            target.chmod(0o755)
    return bin_dir


@dataclass
class Page:
    """One page's run: its folder, environment and Python session."""

    folder: Path
    env: dict[str, str]
    python: str
    log: list[str] = field(default_factory=list)
    _kernel: subprocess.Popen | None = None
    _replies: Any = None

    # the Python session ------------------------------------------------------------------------------

    def request(self, **request: Any) -> dict[str, Any]:
        if self._kernel is None or self._kernel.poll() is not None:
            read, write = os.pipe()
            self._kernel = subprocess.Popen(
                [self.python, str(KERNEL), str(write)],
                cwd=self.folder,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=open(self.folder / ".kernel.log", "a"),
                stderr=subprocess.STDOUT,
                pass_fds=(write,),
                text=True,
            )
            os.close(write)
            self._replies = os.fdopen(read, "r", encoding="utf-8")
        self._kernel.stdin.write(json.dumps(request) + "\n")
        self._kernel.stdin.flush()
        ready, _, _ = select.select([self._replies], [], [], TIMEOUT)
        if not ready:
            self.close()
            raise AssertionError(f"no answer within {TIMEOUT} s to {request.get('name') or request}")
        line = self._replies.readline()
        if not line:
            log = (self.folder / ".kernel.log").read_text(errors="replace")[-3000:]
            self.close()
            raise AssertionError(f"the Python session ended while running {request}:\n{log}")
        return json.loads(line)

    def close(self) -> None:
        if self._kernel is not None:
            self._kernel.kill()
            self._kernel.wait()
            self._kernel = None

    # blocks --------------------------------------------------------------------------------------------

    def run(self, block: Block) -> None:
        if "skip" in block.attributes:
            return
        if "file" in block.attributes:
            target = self.folder / block.attributes["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text, encoding="utf-8")
            if block.language == "yaml":
                self.check_yaml(block, target)
            return
        if block.language == "yaml" and "fragment" in block.attributes:
            base = yaml.safe_load((self.folder / block.attributes["fragment"]).read_text(encoding="utf-8"))
            merged = self.folder / f".fragment-{block.line}.yaml"
            merged.write_text(yaml.safe_dump(_merge(base, yaml.safe_load(block.text))), encoding="utf-8")
            self.check_yaml(block, merged)
        elif block.language == "json":
            _parse_json(block)
        elif block.language == "python":
            self.run_python(block)
        elif block.language in ("console", "bash"):
            for command, expected in commands(block):
                self.run_command(block, command, expected)

    def run_python(self, block: Block) -> None:
        if block.attributes.get("excerpt"):
            check_excerpt(block)
            return
        code, shown = shown_prints(block.text)
        reply = self.request(op="exec", code=code, name=f"<{block.where}>")
        self.log.append(f"{block.where}: python\n{reply['output']}")
        assert reply["ok"], f"{block.where}: the python block failed:\n{reply['error']}\n{reply['output'][-2000:]}"
        printed = reply.get("shown", {})
        for line, comment in shown.items():
            where = f"{block.page}:{block.line + line - 1}"
            assert str(line) in printed, f"{where}: this print never ran, so it cannot show {comment!r}"
            assert comment_shows(comment, printed[str(line)]), (
                f"{where}: the comment says it prints\n  {comment}\nbut it printed\n  {printed[str(line)].strip()}"
            )
        if block.attributes.get("plugin"):
            reply = self.request(op="plugin", name=block.attributes["plugin"])
            assert reply["ok"], f"{block.where}: registering plugin failed:\n{reply['error']}"

    def check_yaml(self, block: Block, path: Path) -> None:
        code = f"import sys; sys.path.insert(0, {str(KERNEL.parent)!r})\nfrom doc_harness import check_yaml_file\ncheck_yaml_file({str(path)!r})"
        reply = self.request(op="exec", code=code, name=f"<check {block.where}>", scope="fresh")
        assert reply["ok"], f"{block.where}: {path.name} does not check:\n{reply['error'][-3000:]}"

    def run_command(self, block: Block, command: str, expected: list[str]) -> None:
        in_session = command.startswith("mmllm ") and not re.search(r"[|&;<>$`()]", command)
        if in_session:
            reply = self.request(
                op="cli", argv=shlex.split(command)[1:], name=command, stdin=block.attributes.get("stdin", "")
            )
            assert reply["ok"], f"{block.where}: $ {command} raised:\n{reply['error']}\n{reply['output'][-3000:]}"
            code, output = reply["code"], reply["output"]
        else:
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=self.folder,
                env=self.env,
                input=block.attributes.get("stdin", ""),
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            code, output = done.returncode, done.stdout + done.stderr
            if re.match(r"(python -m )?pip ", command):
                self.close()  # a new package: the next Python session starts afresh and finds it
        self.log.append(f"{block.where}: $ {command}\n{output}")
        shown = [line for line in expected if line.strip()]
        want_code = 2 if shown and shown[0].startswith("Error:") else 0
        assert code == want_code, f"{block.where}: $ {command} exited with {code}, not {want_code}:\n{output[-4000:]}"
        missing = unmatched(shown, screen(output))
        assert missing is None, (
            f"{block.where}: $ {command} did not print the line\n  {missing}\nIt printed:\n"
            + "\n".join(screen(output))[-4000:]
        )


def shown_prints(code: str) -> tuple[str, dict[int, str]]:
    """The block with each ``print(…)  # what it prints`` recording its output, and those comments by line.

    A comment after a ``print`` call on its line shows what the call prints: its text, or its text up to
    an explanation (after ``: ``, two spaces or `` (``). The calls become ``__shown__(LINE, …)``, which
    prints the same and keeps the text (the page's Python session defines it); line numbers stay.
    """
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(code).readline)
        if token.type == tokenize.COMMENT
    }
    calls = [
        node
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "print"
        and node.lineno in comments
        and node.end_lineno == node.lineno
    ]
    lines = code.split("\n")
    for call in sorted(calls, key=lambda c: (c.lineno, -c.col_offset)):
        text = lines[call.lineno - 1]
        opening = text.index("(", call.col_offset)
        lines[call.lineno - 1] = f"{text[: call.col_offset]}__shown__({call.lineno}, {text[opening + 1 :]}"
    return "\n".join(lines), {call.lineno: comments[call.lineno] for call in calls}


def comment_shows(comment: str, printed: str) -> bool:
    """Whether a ``# comment`` shows what a print printed (``…`` and number tolerance as for console output)."""
    actual = " ".join(printed.split("\n")).strip()
    candidates = [comment] + [comment[: m.start()] for m in re.finditer(r": |\s{2,}| \(", comment)]
    return any(line_matches(candidate.strip(), actual) for candidate in candidates if candidate.strip())


def check_yaml_file(path: str) -> None:
    """Check a YAML file of the docs as the SDK (or accelerate) reads it. Runs in the page's Python session."""
    from mmllm_sdk.spec import SpecLoader

    data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=SpecLoader)
    if isinstance(data, dict) and "recipe" in data:
        from mmllm_sdk.training.spec import load_recipe

        load_recipe(path)
    elif isinstance(data, dict) and "llm" in data:
        import mmllm_sdk

        mmllm_sdk.build_model(mmllm_sdk.load_spec(path), skeleton=True, progress=False)
    elif isinstance(data, dict) and "compute_environment" in data:
        from accelerate.commands.config.config_args import load_config_from_file

        load_config_from_file(path)
    else:
        raise AssertionError(
            f"{path} is neither a model spec ('llm'), a recipe ('recipe') nor an accelerate config; "
            "mark a part of a spec fragment=FILE"
        )


def check_excerpt(block: Block) -> None:
    """Each class and function the block shows exists in its module with the same parameters."""
    module = importlib.import_module(block.attributes["excerpt"])
    tree = ast.parse(block.text)
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            real = getattr(module, node.name, None)
            assert inspect.isclass(real), f"{block.where}: {module.__name__} has no class {node.name}"
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    _same_parameters(block, f"{node.name}.{item.name}", item, getattr(real, item.name, None))
        elif isinstance(node, ast.FunctionDef):
            _same_parameters(block, node.name, node, getattr(module, node.name, None))


def _same_parameters(block: Block, name: str, written: ast.FunctionDef, real: Any) -> None:
    if isinstance(real, property):
        real = real.fget
    assert callable(real), f"{block.where}: {block.attributes['excerpt']} has no {name}"
    shown = [a.arg for a in (*written.args.posonlyargs, *written.args.args, *written.args.kwonlyargs)]
    actual = list(inspect.signature(real).parameters)
    if written.args.vararg:
        shown.append(written.args.vararg.arg)
    if written.args.kwarg:
        shown.append(written.args.kwarg.arg)
    if shown[:1] in (["self"], ["cls"]) and actual[:1] != shown[:1]:
        shown = shown[1:]  # a classmethod's cls is bound
    assert shown == actual, f"{block.where}: {name}({', '.join(shown)}) is {name}({', '.join(actual)}) in the code"


def _merge(base: Any, part: Any) -> Any:
    if isinstance(base, dict) and isinstance(part, dict):
        return {**base, **{key: _merge(base.get(key), value) for key, value in part.items()}}
    return part


def _parse_json(block: Block) -> None:
    try:
        json.loads(block.text)
    except json.JSONDecodeError:
        for number, line in enumerate(block.text.splitlines(), block.line):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as exc:
                    raise AssertionError(f"{block.page}:{number}: not JSON nor JSON lines: {exc}") from exc


def prepare(folder: Path, hub_cache: Path) -> Page:
    """A page's folder (with a copy of examples/), its virtual environment and environment variables."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("examples", "plugins"):  # what the pages name from the repository's root
        shutil.copytree(
            ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
        )
    bin_dir = make_venv(folder / ".venv")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(folder / ".venv"),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_OFFLINE": "1",
        "MMLLM_CACHE": str(folder / ".cache"),
        "MMLLM_AUTO_DTYPE": "float32",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "120",
    }
    env.pop("PYTHONPATH", None)
    return Page(folder=folder, env=env, python=str(bin_dir / "python"))
