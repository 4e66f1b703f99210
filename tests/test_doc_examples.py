"""Every example of README.md, docs/ and the plugin READMEs runs as written, offline (see doc_harness.py)."""

from __future__ import annotations

import subprocess

import pytest
from doc_harness import ROOT, RUNNABLE, TEMPLATE_README, blocks, page_files, prepare, problems

PAGES = [str(path.relative_to(ROOT)) for path in page_files()]


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory):
    """The hub ids the docs name, as offline stand-ins in a hub cache folder."""
    from mmllm_sdk.testing.hub import offline_hub

    return offline_hub(tmp_path_factory.mktemp("hub"))


def test_every_example_runs_or_is_marked_with_the_reason_it_cannot():
    pages = [*page_files(), TEMPLATE_README]
    wrong = [problem for page in pages for block in blocks(page) for problem in problems(block)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("page", PAGES)
def test_the_examples_of_a_page_run_as_written(page, tmp_path, hub_cache):
    run = prepare(tmp_path / "page", hub_cache)
    try:
        for block in blocks(ROOT / page):
            if block.language in RUNNABLE or "file" in block.attributes:
                run.run(block)
    finally:
        run.close()


def test_the_readme_of_a_generated_plugin_runs_as_written(tmp_path, hub_cache):
    run = prepare(tmp_path / "page", hub_cache)
    made = subprocess.run(
        ["bash", "-c", "mmllm new-plugin ecg --no-input"], cwd=run.folder, env=run.env, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    run.folder = run.folder / "mmllm-ecg"  # the reader works in the generated package
    try:
        for block in blocks(run.folder / "README.md", name="mmllm-ecg/README.md (from the template)"):
            if block.language in RUNNABLE or "file" in block.attributes:
                run.run(block)
    finally:
        run.close()
