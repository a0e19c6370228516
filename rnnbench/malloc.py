"""glibc malloc tuned from inside the process (``train.tune_malloc``): freed memory kept for reuse.

XLA:CPU allocates each execution's temporaries (a training step's saved gates, the scan's stacked
outputs: tens of MB at shape S) with malloc and frees them at the end. With glibc's defaults such
blocks are mmap'd and unmapped, or trimmed off the heap, every step, and each page is faulted in again
on first touch: about 8,900 page faults per LSTM training step at (B64, T100, H128), at roughly 1.7 us
each in these VMs. Tuned (no mmap'd chunks, one arena, the top of the heap kept up to 2 GiB) as
``MALLOC_MMAP_MAX_=0 MALLOC_ARENA_MAX=1 MALLOC_TRIM_THRESHOLD_`` would from the environment, the step
reuses the same pages (about 440 faults) and LSTM and GRU training steps ran 1.13-1.3x faster at the
benchmark's shapes S, L and W (``make bench``, BENCHMARKS.md). Where the temporaries are small it
costs a little: the tanh RNN at S ran 0.87-0.89x, and every cell at the tiny shape T 0.8-0.95x.
One arena per core instead of one was faster at S (by 4-11%) but unreliable: a thread's arena
cannot hold a block over 64 MiB, glibc then mmaps it each step whatever ``M_MMAP_MAX`` says, and an
LSTM step at W measured 155,000 page faults and 1.65 s against 0 and 1.06 s with one arena.
The cost: memory freed by the process is not returned to the OS until it exits.

``mallopt`` takes an ``int``: the trim threshold must stay below 2**31 (a 64 GiB value, as the
environment variable ``MALLOC_TRIM_THRESHOLD_`` accepts, wraps to 0 and then trims on every free).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
TUNED = ((M_MMAP_MAX, 0), (M_ARENA_MAX, 1), (M_TRIM_THRESHOLD, 2**31 - 1))
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
