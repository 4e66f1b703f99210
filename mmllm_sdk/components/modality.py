"""ModalitySpec: a modality's name, its placeholder in text and how its files are read."""

from __future__ import annotations

import os
import re
import stat
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmllm_sdk.errors import InputError, MMLLMError, PluginError
from mmllm_sdk.files import read_url

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
DIRECTORY = "/"  # the loaders key of a loader that reads folders
URL_LIMIT = 1 << 30  # bytes a modality URL may hold (load_url); module constants, so tests can lower them
URL_DEADLINE = 120.0  # seconds a modality URL may take to download, in all


@dataclass(frozen=True)
class AudioClip:
    """Mono audio as float32 samples in [-1, 1] and their sampling rate in Hz."""

    samples: np.ndarray  # (T,)
    sampling_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sampling_rate


@dataclass(frozen=True)
class VideoClip:
    """A video as a list of RGB frames (PIL images) and its frame rate, when known."""

    frames: list  # list[PIL.Image.Image]
    fps: float | None = None


@dataclass(frozen=True)
class ModalitySpec:
    """What the SDK needs to know of a modality before any encoder sees it."""

    name: str  # "image"; the ``type`` of a message content part
    placeholder: str  # "<image>"; one tokenizer token, expanded to the projector's token count
    loaders: Mapping[str, Callable[[Path], Any]] = field(default_factory=dict)  # ".png" -> loader(path); "/": folders
    normalize: Callable[[Any], Any] | None = None  # an in-memory object -> an item, or raise InputError
    # an output modality: (suffix, save(item, path)), how a generated item is written (".png", PIL's save)
    saver: tuple[str, Callable[[Any, Path], None]] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"Modality name {self.name!r} must be lower case letters, digits, '-' or '_', starting with a letter."
            )
        if not self.placeholder or any(ch.isspace() for ch in self.placeholder):
            raise ValueError(
                f"Placeholder {self.placeholder!r} of modality {self.name!r} must be non-empty, without spaces."
            )
        for suffix in self.loaders:
            if (suffix != DIRECTORY and not suffix.startswith(".")) or suffix != suffix.lower():
                raise ValueError(
                    f"Loader suffix {suffix!r} of modality {self.name!r} must look like '.png' (lower case), or be "
                    f"{DIRECTORY!r} for a loader of folders."
                )

    def load(self, source: Any) -> Any:
        """Read one item from a path, a ``file://`` or ``http(s)://`` URL, or normalize an in-memory object."""
        if isinstance(source, str) and source.startswith(("http://", "https://")):
            return self.load_url(source)
        if isinstance(source, str) and source.startswith("file://"):
            return self.load_file(Path(urllib.parse.unquote(urllib.parse.urlparse(source).path)))
        if isinstance(source, (str, os.PathLike)):
            return self.load_file(Path(source))
        what = f"A {self.name} {type(source).__name__}"  # "A video dict could not be read by ..."
        return source if self.normalize is None else _run(self.normalize, source, what)

    def load_url(self, url: str) -> Any:
        """Download ``url`` (bounded: :data:`URL_DEADLINE`, :data:`URL_LIMIT`) to a temporary file; read it as a file."""
        suffix = Path(urllib.parse.urlparse(url).path).suffix.lower()
        data = read_url(url, f"The {self.name} URL", limit=URL_LIMIT, deadline=URL_DEADLINE, error=InputError)
        with tempfile.TemporaryDirectory(prefix="mmllm-url-") as folder:
            path = Path(folder) / f"download{suffix}"
            path.write_bytes(data)
            try:
                return self.load_file(path)
            except InputError as exc:
                raise InputError(str(exc).replace(repr(str(path)), repr(url))) from exc

    def load_file(self, path: Path) -> Any:
        """Read a regular file (or a folder, with a folder loader); a FIFO or a device is refused before any read."""
        shown = f"The {self.name} file {str(path)!r}"
        try:
            info = path.stat()  # follows links: a link to /dev/zero is a device
        except (OSError, ValueError) as exc:
            found = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc})"
            raise InputError(
                f"{shown} {found}; check the path (relative paths are read from {os.getcwd()!r})."
            ) from None
        if stat.S_ISDIR(info.st_mode):
            loader = self.loaders.get(DIRECTORY)
            if loader is None:
                raise InputError(f"{shown} is a folder; {self.name} inputs are files ({self._suffixes()}).")
            return _run(loader, path, shown)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{shown} is a FIFO, device or socket, not a regular file; pass a file.")
        if info.st_size == 0:
            raise InputError(f"{shown} is empty (0 bytes); re-export or re-download it.")
        suffix = path.suffix.lower()
        loader = self.loaders.get(suffix)
        if loader is None:
            raise InputError(
                f"{shown} has suffix {suffix or '(none)'!r}, which no loader reads; "
                f"supported: {self._suffixes()}. Convert it, or register a loader in a plugin."
            )
        return _run(loader, path, shown)

    def _suffixes(self) -> str:
        return ", ".join(sorted(s for s in self.loaders if s != DIRECTORY)) or "none registered"


def component_name(component: Any) -> str:
    """``module.Qualname`` of a function, or of an object's class: how an error names the component at fault."""
    named = component if hasattr(component, "__qualname__") else type(component)
    return f"{named.__module__}.{named.__qualname__}"


def _run(read: Callable[[Any], Any], item: Any, what: str) -> Any:
    """``read(item)``; an exception that is not an MMLLMError becomes an InputError naming ``what`` and ``read``."""
    try:
        return read(item)
    except MMLLMError:
        raise
    except Exception as exc:
        raise InputError(
            f"{what} could not be read by {component_name(read)} ({type(exc).__name__}: {exc}); it may be corrupt "
            "or truncated: re-export it or remove it from the data."
        ) from exc


def preprocess(encoder: Any, modality: str, items: list[Any], sources: Sequence[Any]) -> dict[str, Any]:
    """``encoder.preprocess(items)``; an exception that is not an MMLLMError becomes a PluginError naming the
    encoder's class, the modality and the items' sources (``sources[i]`` is where ``items[i]`` was read from)."""
    try:
        return encoder.preprocess(items)
    except MMLLMError:
        raise
    except Exception as exc:
        shown = ", ".join(repr(str(s)) if isinstance(s, (str, os.PathLike)) else type(s).__name__ for s in sources[:3])
        raise PluginError(
            f"{component_name(encoder)}.preprocess() failed on {len(sources)} {modality} input(s) ({shown}"
            f"{', ...' * (len(sources) > 3)}): {type(exc).__name__}: {exc}. If they are valid, report it to the plugin."
        ) from exc
