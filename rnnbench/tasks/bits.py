"""Boolean long-dependency tasks over random bit strings: delayed XOR and parity.

Both draw i.i.d. fair bits, read one binary class at each sequence's last real step (readout "last",
``y [B]`` int32 in {0, 1}, logits ``[B, 2]``), use the cross-entropy loss and report accuracy.

Delayed XOR (``xor``): the "strongly delayed XOR problem" of Hochreiter & Schmidhuber 1997 (section 6,
the XOR of two widely separated inputs somewhere in a noisy sequence), also one of the pathological
problems of Martens & Sutskever 2011. The layout is the adding problem's (Arjovsky et al. 2016, as in
``adding.py``) with bits for values:

    x [B, T, 2] = (bit, marker),  bit in {0, 1} uniform,  marker 1 on exactly two steps:
    t1 uniform on [0, T/2),  t2 uniform on [T/2, T)   (T/2 by integer division),  y = bit[t1] XOR bit[t2]

So the first marked bit must be held at least T - T/2 steps (until t2, then the XOR until the end,
or the two bits separately) and the lag grows with T. Baseline: y is a fair coin independent of the
marker positions and of either marked bit alone (bit[t2] XOR a fair bit is fair: the task cannot be
solved in halves, which is why the 1997 paper calls it hard), so without both bits the best prediction
is 1/2: cross-entropy ln 2, accuracy 1/2.

Parity (``parity``): the parity problem of Bengio, Simard & Frasconi 1994, in the form of OpenAI's
Requests for Research 2.0 (2018): the XOR of all bits of a random string, one bit per step.

    x [B, T, 1] = bit in {0, 1} uniform,  y = (sum of the T bits) mod 2

Baseline: y is a fair coin independent of any T - 1 of the bits, so every predictor that misses a bit
has cross-entropy ln 2 and accuracy 1/2. Gradient descent gets no signal from partial solutions, so
recurrent nets find fixed-length parity hard beyond a few tens of bits; varying the length
(``length_range=[1, 50]``, OpenAI's second setting) lets the short strings teach the running parity.

``length_range=[lo, hi]`` draws each sequence's length L from lo..hi: its bits (and, for XOR, its
marker halves, split at L/2) are laid out from t = 0, the batch is padded to hi steps with zeros and
masked, and the label uses the L real bits only. Baselines stay ln 2 at every length. Defaults:
``xor`` T = 100 (the adding problem's usual length), ``parity`` T = 50 (OpenAI's string length, fixed
length as in its first setting). Both rebuild at any T with the same widths (``generalises``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnnbench.cells.base import check_positive_int
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

BASELINE = math.log(2.0)
XOR_MIN_LEN = 2  # one step per half


def _loss(pred, batch):
    return mean_cross_entropy(pred, batch.y)


def _metric(pred, batch):
    return accuracy(pred, batch.y)


def xor(seq_len: int = 100, solved_ratio: float = 0.1, length_range: list[int] | None = None) -> Task:
    """Delayed XOR of two marked bits of a length-``seq_len`` bit stream (module docstring)."""
    check_positive_int("task.seq_len", seq_len)
    if seq_len < XOR_MIN_LEN:
        raise ValueError(f"task.seq_len={seq_len} is too short for xor: it needs >= {XOR_MIN_LEN} (a bit per half)")
    check_solved_ratio(solved_ratio)
    lengths_range = check_length_range(length_range, XOR_MIN_LEN)
    width = seq_len if lengths_range is None else lengths_range[1]

    def sample(key, batch_size):
        k_bits, k1, k2, k_len = jax.random.split(key, 4)
        lengths = draw_lengths(k_len, batch_size, seq_len, lengths_range)
        real = length_mask(lengths, width)
        steps = jnp.arange(width, dtype=jnp.int32)[None, :]
        bits = jnp.where(real, jax.random.randint(k_bits, (batch_size, width), 0, 2, jnp.int32), 0)
        half = lengths // 2
        first = jax.random.randint(k1, (batch_size,), 0, half, jnp.int32)
        second = jax.random.randint(k2, (batch_size,), half, lengths, jnp.int32)
        marked = (steps == first[:, None]) | (steps == second[:, None])
        y = jnp.sum(jnp.where(marked, bits, 0), axis=1) % 2
        x = jnp.stack([bits.astype(jnp.float32), marked.astype(jnp.float32)], axis=-1)
        return Batch(x, y, None if lengths_range is None else real)

    return Task(name="xor", seq_len=width, input_dim=2, output_dim=2, readout="last", sample=sample,
                loss=_loss, metric=_metric, metric_name="accuracy", baseline_loss=BASELINE,
                solved_threshold=solved_ratio * BASELINE, length_range=lengths_range)


def parity(seq_len: int = 50, solved_ratio: float = 0.1, length_range: list[int] | None = None) -> Task:
    """Parity of a random bit string of length ``seq_len`` (module docstring)."""
    check_positive_int("task.seq_len", seq_len)
    check_solved_ratio(solved_ratio)
    lengths_range = check_length_range(length_range, 1)
    width = seq_len if lengths_range is None else lengths_range[1]

    def sample(key, batch_size):
        k_bits, k_len = jax.random.split(key)
        lengths = draw_lengths(k_len, batch_size, seq_len, lengths_range)
        real = length_mask(lengths, width)
        bits = jnp.where(real, jax.random.randint(k_bits, (batch_size, width), 0, 2, jnp.int32), 0)
        y = jnp.sum(bits, axis=1) % 2
        return Batch(bits[..., None].astype(jnp.float32), y, None if lengths_range is None else real)

    return Task(name="parity", seq_len=width, input_dim=1, output_dim=2, readout="last", sample=sample,
                loss=_loss, metric=_metric, metric_name="accuracy", baseline_loss=BASELINE,
                solved_threshold=solved_ratio * BASELINE, length_range=lengths_range)
