"""Built-in export formats: ``hf-llava``, a folder transformers' LlavaForConditionalGeneration loads.

Registered lazily: listing plugins or building the ``mmllm`` parser does not import torch. Here too the one rule of
every export's output path, :func:`staged_output`: nothing that exists is replaced unless the caller asks for it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mmllm_sdk.errors import ExportError
from mmllm_sdk.files import swap_in
from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.plugins import Lazy
from mmllm_sdk.registry import Exporter

HF_LLAVA = Exporter(
    Lazy(f"{__name__}.hf_llava:export_hf_llava"),
    description="writes a folder that transformers.LlavaForConditionalGeneration.from_pretrained loads "
    "(CLIP vision encoder, linear or mlp projector, Llama-family LLM).",
    usage="load it with transformers.LlavaForConditionalGeneration.from_pretrained",
)


@hookimpl
def register_exporters(register):
    register("hf-llava", HF_LLAVA)


def refuse_existing(output: str | os.PathLike[str], overwrite: bool) -> None:
    """ExportError when ``output`` holds something an export would replace (a file, a symlink, a folder that is not
    empty) and ``overwrite`` is false. An empty folder holds nothing to lose."""
    path = Path(output)
    if overwrite or not os.path.lexists(path):
        return
    if path.is_symlink():
        kind = "a symlink (to " + os.readlink(path) + ")"
    elif path.is_dir():
        try:
            if not any(path.iterdir()):
                return
        except OSError:  # a folder we cannot list: it may hold anything
            pass
        kind = "a folder that is not empty"
    else:
        kind = "a file" if path.is_file() else "something that is not a folder"
    raise ExportError(
        f"The export output {str(path)!r} already exists ({kind}) and is left as it is; pick another path, or pass "
        "--overwrite (overwrite=True in Python) to replace it."
    )


@contextlib.contextmanager
def staged_output(
    output: str | os.PathLike[str], *, overwrite: bool = False, writer: str = "The exporter"
) -> Iterator[Path]:
    """Yield a path that does not exist yet, in a hidden staging folder beside ``output``; write the export there.

    Once the block ends, what was written replaces ``output`` (only with ``overwrite``: see :func:`refuse_existing`,
    checked before and again at the swap). The old ``output`` is removed only after the new one is in place; a
    symlink is replaced itself, never its target. If the block raises, ``output`` is left as it was. ``writer``
    names who writes, for the error when nothing was written.
    """
    output = Path(os.path.abspath(output))
    if output == output.parent:
        raise ExportError(f"The export output {str(output)!r} is a filesystem root; name a folder or file in it.")
    refuse_existing(output, overwrite)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    except OSError as exc:
        raise ExportError(f"Cannot write the export output {str(output)!r}: {exc.strerror or exc}.") from None
    try:
        yield staging / output.name
        if not os.path.lexists(staging / output.name):
            raise ExportError(
                f"{writer} wrote nothing at the path it was given for {str(output)!r}; nothing was changed."
            )
        _readable(staging / output.name)
        refuse_existing(output, overwrite)  # something may have appeared meanwhile
        _swap(staging / output.name, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap(new: Path, output: Path) -> None:
    try:
        swap_in(new, output)
    except OSError as exc:
        raise ExportError(
            f"Cannot put the export at {str(output)!r}: {exc.strerror or exc}; what was there is left as it was."
        ) from None


def _readable(path: Path) -> None:
    """Give what was written the modes a plain write would (0777 / 0666 less the umask, execute bits kept): some
    writers (safetensors) create files as 0600, hidden from the other users of a shared model folder."""
    umask = os.umask(0)
    os.umask(umask)
    for item in [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]:
        if not item.is_symlink():
            mode = 0o777 if item.is_dir() else 0o666 | (item.stat().st_mode & 0o111)
            os.chmod(item, mode & ~umask)
