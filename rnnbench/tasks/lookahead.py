"""Lookahead: output at step t the input that arrives ``offset`` steps later.

The inputs are i.i.d. uniform symbols from V = ``vocab_size``; the target at step t is the symbol of
step t + k (k = ``offset``) for t < T - k, and the last k steps carry no loss. A causal
(unidirectional) model has seen only x_0 .. x_t at step t, which are independent of x_{t+k}, so it
cannot beat chance; a bidirectional model's backward direction has seen x_{t+k} and only has to
hold it for k steps. This is the argument for bidirectional recurrent networks (Schuster & Paliwal
1997, "Bidirectional recurrent neural networks": a causal network cannot use the input that follows
the step it labels); the task is this framework's control for it, not a benchmark from that paper:
a cell that "solves" it unidirectionally leaks future information.

Encoding (token ids 0 .. V-1; the input is their one-hot code, D = V):

    input:   x_0 .. x_{T-1}, i.i.d. uniform on 0..V-1
    target:  y [B, T] int32: y_t = x_{t+k} (a class in 0..V-1, O = V) for t < T - k; -1 on the last
             k steps (no loss there) and on padding

The loss is the cross-entropy over the T - k scored steps; the metric is the accuracy there.
Defaults: T = 100, V = 8, k = 5.

Baseline. x_{t+k} is uniform and independent of x_0 .. x_t (and of t), so the uniform guess, ln V
per scored step (ln 8 = 2.08), is both the trivial baseline and the best any causal model can reach,
in expectation. Solved (only by a model that sees the future) when the loss < ``solved_ratio`` * ln V.

``length_range=[lo, hi]`` draws each sequence's length T from lo..hi (lo > k): each sequence's last
k real steps carry no loss, the batch is padded to hi steps (padding: all-zero input, target -1,
mask False), and a bidirectional model's backward pass starts at each sequence's own last step. The
baseline is ln V at every length.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnnbench.cells.base import check_positive_int
from rnnbench.tasks.base import (
    IGNORE,
    Batch,
    Task,
    check_length_range,
    check_solved_ratio,
    draw_lengths,
    labelled_accuracy,
    labelled_cross_entropy,
    length_mask,
)


def lookahead(seq_len: int = 100, vocab_size: int = 8, offset: int = 5, solved_ratio: float = 0.1,
              length_range: list[int] | None = None) -> Task:
    """Lookahead by ``offset`` steps over sequences of ``seq_len`` steps (see the module docstring)."""
    check_positive_int("task.seq_len", seq_len)
    check_positive_int("task.vocab_size", vocab_size)
    check_positive_int("task.offset", offset)
    if vocab_size < 2:
        raise ValueError(f"task.vocab_size={vocab_size} must be >= 2: with one symbol there is nothing to predict")
    if seq_len <= offset:
        raise ValueError(f"task.seq_len={seq_len} is too short for task.offset={offset}: it needs >= {offset + 1} "
                         "(at least one scored step)")
    check_solved_ratio(solved_ratio)
    lengths_range = check_length_range(length_range, offset + 1)
    V, k = vocab_size, offset
    width = seq_len if lengths_range is None else lengths_range[1]

    def sample(key, batch_size):
        k_sym, k_len = jax.random.split(key)
        lengths = draw_lengths(k_len, batch_size, seq_len, lengths_range)  # [B]
        real = length_mask(lengths, width)
        tokens = jnp.where(real, jax.random.randint(k_sym, (batch_size, width), 0, V, jnp.int32), -1)
        ahead = jnp.concatenate([tokens[:, k:], jnp.full((batch_size, k), IGNORE, jnp.int32)], axis=1)
        y = jnp.where(length_mask(lengths - k, width), ahead, IGNORE)
        x = jax.nn.one_hot(tokens, V, dtype=jnp.float32)  # one_hot(-1) is all zeros: padding carries no token
        return Batch(x, y, None if lengths_range is None else real)

    baseline = math.log(V)
    return Task(name="lookahead", seq_len=width, input_dim=V, output_dim=V, readout="all",
                sample=sample, loss=labelled_cross_entropy, metric=labelled_accuracy, metric_name="accuracy",
                baseline_loss=baseline,
                solved_threshold=solved_ratio * baseline, length_range=lengths_range)
