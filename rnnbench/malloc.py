"""glibc malloc tuned from inside the process (``train.tune_malloc``): freed memory kept for reuse.

XLA:CPU allocates each execution's temporaries (a training step's saved gates, the scan's stacked
outputs: tens of MB at shape S) with malloc and frees them at the end. With glibc's defaults such
blocks are mmap'd and unmapped, or trimmed off the heap, every step, and each page is faulted in again
on first touch: about 8,900 page faults per LSTM training step at (B64, T100, H128), at roughly 1.7 us
each in these VMs. Tuned (no mmap'd chunks, one arena, the top of the heap kept up to 2 GiB) as
``MALLOC_MMAP_MAX_=0 MALLOC_ARENA_MAX=1 MALLOC_TRIM_THRESHOLD_`` would from the environment, the step
reuses the same pages (about 440 faults) and LSTM and GRU training steps ran 1.13-1.6x faster at the
benchmark's shapes S, L and W, the tanh RNN 1.2-1.36x at L and W (``make bench``, BENCHMARKS.md).
Where the temporaries are small it costs: the RNN at S ran 0.87-0.89x, every cell at the tiny shape
T 0.63-0.95x (one arena's lock, shared by XLA's threads, matters more than page faults there).
One arena per core instead of one was faster at S (by 4-11%) but unreliable: a thread's arena
cannot hold a block over 64 MiB, glibc then mmaps it each step whatever ``M_MMAP_MAX`` says, and an
LSTM step at W measured 155,000 page faults and 1.65 s against 0 and 1.06 s with one arena.
The cost: memory freed by the process is not returned to the OS until it exits.

So ``train.tune_malloc=null`` (auto, the default) tunes on the CPU backend when a training step's
per-step activations, batch x T x G x 4 bytes over the layers, directions and seeds (G the width of
the recurrent projection: 4H for the LSTM, 3H the GRU, H the tanh RNN), reach ``AUTO_MIN_BYTES`` = 8 MiB: at or
below 3.3 MB (shape T, the RNN at S) tuning measured 0.63-0.95x, from 9.8 MB (the GRU at S) up
1.13-1.6x. ``true`` and ``false`` force it.

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


AUTO_MIN_BYTES = 8 << 20
_tuned = False  # whether this process was tuned (by tune_malloc), so that False has something to undo


def activation_bytes(batch: int, seq_len: int, width: int, layers: int = 1, directions: int = 1,
                     seeds: int = 1) -> int:
    """float32 bytes of a training step's per-step activations, batch x T x width over layers etc."""
    return 4 * batch * seq_len * width * layers * directions * seeds


def resolve(setting: bool | None, step_bytes: int, backend: str = "cpu") -> bool:
    """``train.tune_malloc``: True or False as set; None (auto): on the CPU backend, whether ``step_bytes``
    >= AUTO_MIN_BYTES (on GPU/TPU the step's temporaries live in device memory: no)."""
    if setting is not None:
        return bool(setting)
    return backend == "cpu" and step_bytes >= AUTO_MIN_BYTES


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
    """Set glibc malloc to ``TUNED`` for this process, or, when ``tuned`` is False, back to glibc's
    documented defaults if an earlier call tuned it (a multirun's jobs share the process; an untouched
    process is left alone). Returns whether the process is now as asked (False off Linux/glibc)."""
    global _tuned
    if not tuned and not _tuned:
        return _libc() is not None
    took = set_malloc(TUNED if tuned else GLIBC_DEFAULTS)
    _tuned = tuned and took
    return took
