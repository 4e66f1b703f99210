"""The docs harness itself: a doc change that breaks an example fails, and shown output is really compared."""

from __future__ import annotations

import pytest
from doc_harness import blocks, comment_shows, line_matches, prepare, problems, shown_prints, unmatched


def test_a_shown_line_matches_with_wildcards_spacing_and_nearby_decimals():
    assert line_matches("Saved …/runs/pt (load it)", "Saved /tmp/x/runs/pt (load it)")
    assert line_matches("llm   44,256    0", "llm 44,256 0")
    assert line_matches("{'loss': '11.74'}", "{'loss': '11.79'}")  # within 2 %
    assert not line_matches("{'loss': '11.74'}", "{'loss': '12.74'}")
    assert not line_matches("checkpoint-4", "checkpoint-5")  # whole numbers are exact


def test_shown_lines_must_appear_in_order():
    assert unmatched(["a", "c"], ["a", "b", "c"]) is None
    assert unmatched(["c", "a"], ["a", "b", "c"]) == "a"


def test_a_print_comment_is_compared_up_to_its_explanation():
    assert comment_shows("49 768: 7x7 patches of 32 pixels", "49 768\n")
    assert comment_shows("Here it is.   (the text)", "Here it is.\n")
    assert not comment_shows("cross-entropy on the assistant's tokens", "tensor(11.0156)\n")


def test_prints_with_a_comment_record_their_output_and_keep_their_line():
    code, shown = shown_prints("x = 1\nprint(x)  # 1\nprint(x)\nif x:\n    print(x + 1)  # 2\n")
    assert shown == {2: "1", 5: "2"}
    assert code.splitlines()[1] == "__shown__(2, x)  # 1" and code.splitlines()[4] == "    __shown__(5, x + 1)  # 2"


def test_a_block_marked_without_a_reason_or_an_unchecked_yaml_is_a_problem(tmp_path):
    page = tmp_path / "page.md"
    page.write_text('```console skip="gpu"\n$ mmllm plugins\n```\n\n```yaml\nllm: {}\n```\n', encoding="utf-8")
    found = [problem for block in blocks(page, name="page.md") for problem in problems(block)]
    assert len(found) == 2 and 'must be "KIND: reason"' in found[0] and "needs file=PATH" in found[1]


@pytest.fixture
def page(tmp_path):
    run = prepare(tmp_path / "page", tmp_path / "hub")
    yield run
    run.close()


def run_markdown(page, tmp_path, text):
    (tmp_path / "page.md").write_text(text, encoding="utf-8")
    for block in blocks(tmp_path / "page.md", name="page.md"):
        page.run(block)


def test_a_spec_with_a_typo_fails_its_page(page, tmp_path):
    text = "```yaml file=bad.yaml\nllm: {name: hf-causal-lm, parms: {}}\n```\n"
    with pytest.raises(AssertionError, match=r"page.md:2: bad.yaml does not check:[\s\S]*parms"):
        run_markdown(page, tmp_path, text)


def test_output_that_differs_from_what_a_command_prints_fails_its_page(page, tmp_path):
    text = "```console\n$ mmllm validate examples/tiny.yaml\nexamples/tiny.yaml: valid\nLLM backbone  hf-causal-lm: hidden size 64\n```\n"
    with pytest.raises(AssertionError, match=r"did not print the line\n  LLM backbone  hf-causal-lm: hidden size 64"):
        run_markdown(page, tmp_path, text)
