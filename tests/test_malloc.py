"""glibc malloc tuning (``train.tune_malloc``, rnnbench/malloc.py): that it takes, what it does to page
faults, when ``null`` (auto) turns it on, and that the job applies it."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest
from test_cli import TINY, rnnbench

from rnnbench.cells.gru import gru
from rnnbench.cells.lru import lru
from rnnbench.cells.lstm import lstm
from rnnbench.cells.rnn import rnn
from rnnbench.job import _recurrent_width
from rnnbench.malloc import AUTO_MIN_BYTES, activation_bytes, resolve

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")

FAULTS_SCRIPT = """
import ctypes, resource, sys
from rnnbench.malloc import tune_malloc
calls = {"pristine": [], "tuned": [True], "defaults": [False], "tuned then defaults": [True, False]}[sys.argv[1]]
took = all([tune_malloc(c) for c in calls])
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
size = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MiB): mmap'd under the defaults

def touch():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(ctypes.c_void_p(p))

touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    touch()
print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@linux_only
def test_tuned_malloc_reuses_freed_memory_instead_of_faulting_it_in_again():
    """A 64 MiB block allocated, written and freed, again and again: under glibc's defaults every round
    maps fresh pages (16,384 faults of 4 KiB); tuned, the freed block is reused (no new faults); tuning
    undone (a multirun's next job with tune_malloc=false), the defaults' behaviour is back."""
    faults = {}
    for mode in ("pristine", "tuned", "defaults", "tuned then defaults"):
        out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True,
                             timeout=120, check=True)
        took, count = out.stdout.split()
        assert took == "True", mode
        faults[mode] = float(count)
    pages = (64 << 20) // 4096
    assert faults["tuned"] < 0.01 * pages
    for mode in ("pristine", "defaults", "tuned then defaults"):
        assert faults[mode] >= 0.9 * pages, mode


def test_auto_tunes_from_8_mib_of_step_activations():
    # shape S (B64, T100, H128): the RNN's 3.3 MB stays untuned (measured 0.87-0.89x tuned), the GRU's
    # 9.8 MB and the LSTM's 13.1 MB are tuned (1.2-1.3x); every cell at shape T (B16, T100, H32) stays untuned
    assert activation_bytes(64, 100, 128) == 64 * 100 * 128 * 4
    assert [resolve(None, activation_bytes(64, 100, g * 128)) for g in (1, 3, 4)] == [False, True, True]
    assert not any(resolve(None, activation_bytes(16, 100, g * 32)) for g in (1, 3, 4))
    assert resolve(None, AUTO_MIN_BYTES) and not resolve(None, AUTO_MIN_BYTES - 1)
    assert activation_bytes(64, 100, 128, layers=2, directions=2, seeds=3) == 12 * activation_bytes(64, 100, 128)
    assert resolve(True, 0) and not resolve(False, 1 << 40)  # true and false force it
    assert not resolve(None, 1 << 40, "gpu") and resolve(True, 0, "gpu")  # auto: CPU only


@pytest.mark.parametrize(("factory", "width"), [(lstm, 4 * 6), (gru, 3 * 6), (rnn, 6),
                                                (functools.partial(lru, state_size=10), 6)])
def test_recurrent_width_is_read_from_the_cells_parameter_shapes(factory, width):
    assert _recurrent_width(factory, 6, 3) == width  # the LRU has no w_h: H


@linux_only
def test_a_multirun_applies_each_jobs_setting_in_turn(tmp_path):
    """The rnnbench command tunes malloc per job: forced on, forced off (undoing the first job's tuning in
    the same process), and auto, which leaves a tiny model's process at glibc's defaults."""
    out = rnnbench("-m", "cell=rnn", "train.tune_malloc=true,false,null", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   *TINY, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    said = [line.split("glibc malloc ", 1)[1] for line in (out.stdout + out.stderr).splitlines()
            if "glibc malloc " in line]
    assert [s.split(" (")[0] for s in said] == ["tuned", "at its defaults", "at its defaults"], said
    assert "train.tune_malloc=None, step activations 0.0 MiB" in said[2]
