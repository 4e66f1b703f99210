"""ModalitySpec: a modality's name, its placeholder in text and how its files are read."""

from __future__ import annotations

import os
import re
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmllm_sdk.errors import InputError

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
DIRECTORY = "/"  # the loaders key of a loader that reads folders


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
        if not _NAME.match(self.name):
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
        return source if self.normalize is None else self.normalize(source)

    def load_url(self, url: str) -> Any:
        """Download ``url`` to a temporary file (keeping its suffix) and read it like a local file."""
        suffix = Path(urllib.parse.urlparse(url).path).suffix.lower()
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
        except (OSError, ValueError) as exc:
            raise InputError(
                f"The {self.name} URL {url!r} could not be downloaded ({exc}); "
                "check it, or download the file and pass its path."
            ) from exc
        with tempfile.TemporaryDirectory(prefix="mmllm-url-") as folder:
            path = Path(folder) / f"download{suffix}"
            path.write_bytes(data)
            try:
                return self.load_file(path)
            except InputError as exc:
                raise InputError(str(exc).replace(repr(str(path)), repr(url))) from exc

    def load_file(self, path: Path) -> Any:
        if not path.exists():
            raise InputError(
                f"The {self.name} file {str(path)!r} does not exist; "
                f"check the path (relative paths are read from {os.getcwd()!r})."
            )
        if path.is_dir():
            loader = self.loaders.get(DIRECTORY)
            if loader is None:
                raise InputError(
                    f"{str(path)!r} is a directory; {self.name} inputs must be files ({self._suffixes()})."
                )
            return loader(path)
        if path.stat().st_size == 0:
            raise InputError(f"The {self.name} file {str(path)!r} is empty (0 bytes); re-export or re-download it.")
        suffix = path.suffix.lower()
        loader = self.loaders.get(suffix)
        if loader is None:
            raise InputError(
                f"The {self.name} file {str(path)!r} has suffix {suffix or '(none)'!r}, which no loader reads; "
                f"supported: {self._suffixes()}. Convert it, or register a loader in a plugin."
            )
        try:
            return loader(path)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(
                f"The {self.name} file {str(path)!r} could not be read ({type(exc).__name__}: {exc}); "
                "it may be corrupt or truncated: re-export it or remove it from the data."
            ) from exc

    def _suffixes(self) -> str:
        return ", ".join(sorted(s for s in self.loaders if s != DIRECTORY)) or "none registered"
