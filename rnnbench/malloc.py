"""glibc malloc tuned from inside the process (``train.tune_malloc``): freed memory kept for reuse.

XLA:CPU allocates each execution's temporaries (a training step's saved gates, the scan's stacked
outputs: tens of MB at shape S) with malloc and frees them at the end. With glibc's defaults such
blocks are mmap'd and unmapped, or trimmed off the heap, every step, and each page is faulted in again
on first touch: about 8,900 page faults per LSTM training step at (B64, T100, H128), at roughly 1.7 us
each in these VMs. Tuned (no mmap'd chunks, the top of the heap kept up to 2 GiB, one arena per core),
the step reuses the same pages: 440 faults, and LSTM and GRU training steps ran 1.2-1.3x faster at
shape S (``make bench``; the tanh RNN, whose temporaries are small, 0.99x). One arena for all threads
(as ``MALLOC_ARENA_MAX=1``) measured 0.89-0.96x of one per core (lock contention between XLA's
threads); glibc's default of 8 per core lets threads' arenas return pages and fault them in again.
The cost: memory freed by the process is not returned to the OS until it exits.

``mallopt`` takes an ``int``: the trim threshold must stay below 2**31 (a 64 GiB value, as the
environment variable ``MALLOC_TRIM_THRESHOLD_`` accepts, wraps to 0 and then trims on every free).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
TUNED = ((M_MMAP_MAX, 0), (M_ARENA_MAX, max(2, os.cpu_count() or 1)), (M_TRIM_THRESHOLD, 2**31 - 1))
# glibc's defaults on 64-bit Linux (mallopt(3)): 65536 mmap'd chunks, 8 arenas per core, trim above 128 KiB
GLIBC_DEFAULTS = ((M_MMAP_MAX, 65536), (M_ARENA_MAX, 8 * (os.cpu_count() or 1)), (M_TRIM_THRESHOLD, 128 * 1024))


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (musl, ...)
        return None


def set_malloc(settings) -> bool:
    """``mallopt(param, value)`` for each pair; whether every one took (False off Linux/glibc)."""
    libc = _libc()
    return libc is not None and all([libc.mallopt(param, value) == 1 for param, value in settings])


def tune_malloc(tuned: bool = True) -> bool:
    """Set glibc malloc to ``TUNED`` (or back to glibc's documented defaults when ``tuned`` is False)
    for this process. Returns whether every setting took (False off Linux/glibc: nothing changes)."""
    return set_malloc(TUNED if tuned else GLIBC_DEFAULTS)
