"""The C library's memory allocator during a CPU training run.

A training step frees and allocates the same large buffers (activations, gradients, logits chunks) every step. glibc's
malloc serves a block of 128 KiB or more with a fresh ``mmap`` and hands it back to the kernel when it is freed, so
each step faults every page of those buffers in again and the kernel zeroes them: 40,000 to 80,000 page faults a PT
step of benchmarks/run.py on a 2-core VM. PyTorch's CPU tuning guide avoids it by preloading tcmalloc or jemalloc;
glibc's own settings (``mallopt``) do the same inside the process: large blocks come from the heap and freed ones stay
there for the next step. When the run ends, freed memory goes back to the kernel again (glibc's trim threshold) and
what was kept is returned.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
# large blocks from the heap, up to 2 GiB of freed memory kept there, and the heap grown 64 MiB at a time
KEPT = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: (1 << 31) - 1, M_TOP_PAD: 64 << 20}
# afterwards: glibc's trim and pad defaults; the mmap threshold at the ceiling glibc's own adjustment grows it to
AFTER = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 128 << 10, M_TOP_PAD: 128 << 10}
_depth = [0]  # blocks open: the outermost one sets and restores (a benchmark around mmllm_sdk.train, say)


def _glibc() -> ctypes.CDLL | None:
    """The running process's C library, where it is glibc (musl and macOS have no ``mallopt`` settings to change)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


@contextmanager
def freed_memory_kept(enabled: bool = True) -> Iterator[bool]:
    """Within the block, glibc keeps freed memory for the next allocation instead of returning it to the kernel;
    yields whether it applies (``enabled`` and glibc). When the outermost such block ends, glibc's trim threshold is
    back to its default and the kept memory is returned (``malloc_trim``)."""
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    if _depth[0] == 0:
        for option, value in KEPT.items():
            libc.mallopt(option, value)
    _depth[0] += 1
    try:
        yield True
    finally:
        _depth[0] -= 1
        if _depth[0] == 0:
            for option, value in AFTER.items():
                libc.mallopt(option, value)
            libc.malloc_trim(0)
