"""The temporal order problem (Hochreiter & Schmidhuber 1997, experiments 6a and 6b).

Classify a sequence by the order of two (6a) or three (6b) relevant symbols, X or Y, hidden among
random distractors. Alphabet, one-hot over D = 8 channels in the paper's order:

    id:      0  1  2  3  4  5  6  7
    symbol:  a  b  c  d  B  E  X  Y        a..d: distractors, E: start, B: end ("trigger symbol")

A sequence starts with E, ends with B (the paper's text: "starts with an E, ends with a B (the
trigger symbol)"), and every other step is a distractor drawn uniformly from {a, b, c, d}, except
the relevant steps t1 < t2 (< t3), each X or Y with probability 1/2. Windows, in step indices
counted from the E at step 0, for a sequence of nominal length n (integer division):

    6a:  t1 in [n/10, n/5],  t2 in [n/2, 6n/10]                               (4 classes)
    6b:  t1 in [n/10, n/5],  t2 in [33n/100, 43n/100],  t3 in [66n/100, 76n/100]  (8 classes)

each lower bound at least 1 (the E keeps step 0), each t uniform in its window. At n = 100 these are
the paper's windows exactly (10..20 and 50..60; 10..20, 33..43 and 66..76). The class is the
relevant symbols read as a binary number, X = 0, Y = 1, the first most significant: 6a XX, XY, YX,
YY -> 0, 1, 2, 3 (the paper's Q, R, S, U); 6b XXX .. YYY -> 0 .. 7 (Q, R, S, U, V, A, B, C).

    x [B, W, 8] one-hot (all-zero rows on padding),  y [B] int32 class,  read at the last real step

Lengths. By default lengths vary as in the paper: the nominal length is n = ``seq_len`` (T) for every
sequence, the windows are placed from it, and each sequence's real length is T + U{0..T/10} (100..110
at T = 100, as ``adding.py``'s hochreiter1997 encoding), so the batch is padded to T + T/10 steps
(``Task.seq_len``, the longest, as under ``length_range``; ``Task.length_range`` is (T, T + T/10))
and masked. ``length_range=[lo, hi]`` replaces that range: each sequence's length L is drawn from
lo..hi and is also its nominal length (windows placed from L, the B at step L - 1);
``length_range=[T, T]`` gives fixed length T. Padded steps are all-zero rows.

Baseline. The classes are uniform and independent of everything but the relevant symbols (the
distractors, the positions and the length are drawn independently of them), so without the
dependency the best prediction is the uniform prior: cross-entropy ln 4 (6a) or ln 8 (6b), and
chance accuracy 1/4 or 1/8. Solved when the loss < ``solved_ratio`` * that (0.1: 0.139 for 6a,
0.208 for 6b); the paper counts a sequence correct when every output is within 0.3 of its target.

Defaults are the paper's setting, nothing shrunk: T = 100 (lengths 100..110), variant 6a. Its LSTM
needed 31,390 training sequences for 6a and 571,100 for 6b; at T = 20-30 an LSTM solves either
variant in a few hundred steps of 64 (the slow test in tests/test_tasks_order.py). The paper's
positions are read as step indices from the E at step 0 (a 1-based reading would shift each window
by one step).
"""

from __future__ import annotations

import math
from itertools import pairwise

import jax
import jax.numpy as jnp

from rnnbench.cells.base import check_choice, check_positive_int
from rnnbench.tasks.base import (
    Batch,
    Task,
    accuracy,
    check_length_range,
    check_solved_ratio,
    draw_lengths,
    length_mask,
    mean_cross_entropy,
)

SYMBOLS = ("a", "b", "c", "d", "B", "E", "X", "Y")  # one-hot channel i is SYMBOLS[i]
NUM_DISTRACTORS = 4  # a, b, c, d are ids 0..3
END, START, X, Y = 4, 5, 6, 7  # B ends the sequence, E starts it (as in the paper)
VARIANTS = ("6a", "6b")
# The relevant steps' windows as percentages (lo, hi) of the nominal length n; the paper's at n = 100.
WINDOWS = {"6a": ((10, 20), (50, 60)), "6b": ((10, 20), (33, 43), (66, 76))}


def windows(n: int, variant: str) -> list[tuple[int, int]]:
    """The inclusive windows of the relevant steps for a sequence of nominal length ``n``."""
    return [(max(1, n * lo // 100), n * hi // 100) for lo, hi in WINDOWS[variant]]


def windows_fit(n: int, variant: str) -> bool:
    """Whether the windows are non-empty, in order, disjoint and strictly between the E and the B."""
    w = windows(n, variant)
    return (all(lo <= hi for lo, hi in w) and all(a[1] < b[0] for a, b in pairwise(w))
            and w[-1][1] <= n - 2)


def _minimum_length(variant: str, up_to: int = 1000) -> int:
    """The shortest n from which every nominal length (up to ``up_to``; beyond, the windows are wide) fits."""
    n = up_to
    while n > 1 and windows_fit(n - 1, variant):
        n -= 1
    return n


MIN_LEN = {v: _minimum_length(v) for v in VARIANTS}  # 6a: 5, 6b: 7


def temporal_order(seq_len: int = 100, variant: str = "6a", solved_ratio: float = 0.1,
                   length_range: list[int] | None = None) -> Task:
    """Temporal order problem, experiment ``variant``, nominal length ``seq_len`` (module docstring)."""
    check_positive_int("task.seq_len", seq_len)
    check_choice("task.variant", variant, VARIANTS)
    minimum = MIN_LEN[variant]
    if seq_len < minimum:
        raise ValueError(f"task.seq_len={seq_len} is too short for temporal_order {variant}: it needs >= {minimum} "
                         "(E, the relevant-symbol windows, B)")
    check_solved_ratio(solved_ratio)
    lengths_range = check_length_range(length_range, minimum)
    width = seq_len + seq_len // 10 if lengths_range is None else lengths_range[1]
    num_relevant = len(WINDOWS[variant])
    num_classes = 2**num_relevant

    def sample(key, batch_size):
        k_sym, k_rel, k_pos, k_len = jax.random.split(key, 4)
        if lengths_range is None:  # the paper's: windows from T, lengths T..T + T/10
            nominal = jnp.full((batch_size,), seq_len, jnp.int32)
            lengths = seq_len + jax.random.randint(k_len, (batch_size,), 0, seq_len // 10 + 1, jnp.int32)
        else:
            lengths = draw_lengths(k_len, batch_size, seq_len, lengths_range)
            nominal = lengths
        steps = jnp.arange(width, dtype=jnp.int32)[None, :]
        tokens = jax.random.randint(k_sym, (batch_size, width), 0, NUM_DISTRACTORS, jnp.int32)
        relevant = jax.random.randint(k_rel, (batch_size, num_relevant), 0, 2, jnp.int32)  # 0: X, 1: Y
        pos_keys = jax.random.split(k_pos, num_relevant)
        for i, (lo, hi) in enumerate(WINDOWS[variant]):
            first = jnp.maximum(1, nominal * lo // 100)
            t = jax.random.randint(pos_keys[i], (batch_size,), first, nominal * hi // 100 + 1, jnp.int32)
            tokens = jnp.where(steps == t[:, None], X + relevant[:, i : i + 1], tokens)
        tokens = jnp.where(steps == 0, START, tokens)
        tokens = jnp.where(steps == (lengths - 1)[:, None], END, tokens)
        real = length_mask(lengths, width)
        x = jnp.where(real[..., None], jax.nn.one_hot(tokens, len(SYMBOLS), dtype=jnp.float32), 0.0)
        weights = 2 ** jnp.arange(num_relevant - 1, -1, -1, dtype=jnp.int32)
        y = jnp.sum(relevant * weights[None, :], axis=1)
        return Batch(x, y, real)

    def loss(pred, batch):
        return mean_cross_entropy(pred, batch.y)

    def metric(pred, batch):
        return accuracy(pred, batch.y)

    baseline = math.log(num_classes)
    shown_range = (seq_len, width) if lengths_range is None else lengths_range  # the lengths drawn, either way
    return Task(name="temporal_order", seq_len=width, input_dim=len(SYMBOLS), output_dim=num_classes,
                readout="last", sample=sample, loss=loss, metric=metric, metric_name="accuracy",
                baseline_loss=baseline, solved_threshold=solved_ratio * baseline, length_range=shown_range)
