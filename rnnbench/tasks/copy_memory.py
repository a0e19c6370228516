"""Copy memory (Hochreiter & Schmidhuber 1997), in the encoding of Arjovsky et al. 2016.

Alphabet: 0 is the blank, 1..S the data symbols (S = ``num_symbols``, 8 in the paper), S+1 the
delimiter. With N = ``copy_len`` (10) and delay T = ``seq_len``, a sequence has T + 2N steps:

    input:  N symbols from 1..S,  T-1 blanks,  the delimiter,  N blanks          (one-hot, D = S+2)
    target: T+N blanks,  then the same N symbols                                   (O = S+1 classes)

The loss is the cross-entropy averaged over all T + 2N output steps. The memoryless baseline
predicts blank for the first T+N steps and a uniform guess over the S symbols for the last N, so
its loss is N ln(S) / (T + 2N): 10 ln 8 / (T + 20) in the paper's setting. The metric is the
accuracy on the N recalled symbols.

``length_range=[lo, hi]`` draws each sequence's delay T from lo..hi: its delimiter and recall come
T-1 and T+N steps after its symbols, the batch is padded to hi + 2N steps, and the loss and accuracy
count real steps only. The baseline is then taken at the mean delay, N ln S / ((lo + hi) / 2 + 2N).
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


def copy_memory(seq_len: int = 100, num_symbols: int = 8, copy_len: int = 10, solved_ratio: float = 0.1,
                length_range: list[int] | None = None) -> Task:
    """Copy memory with delay ``seq_len``; solved when the loss < ``solved_ratio`` * baseline."""
    check_positive_int("task.seq_len", seq_len)
    check_positive_int("task.copy_len", copy_len)
    check_positive_int("task.num_symbols", num_symbols)
    if num_symbols < 2:
        raise ValueError(f"task.num_symbols={num_symbols} must be >= 2: with one symbol there is nothing to remember")
    check_solved_ratio(solved_ratio)
    lengths_range = check_length_range(length_range, 1)
    S, N, T = num_symbols, copy_len, seq_len
    length = T + 2 * N
    delimiter = S + 1
    if lengths_range is not None:
        return _variable_copy(S, N, lengths_range, solved_ratio)

    def sample(key, batch_size):
        symbols = jax.random.randint(key, (batch_size, N), 1, S + 1)
        blanks_in = jnp.zeros((batch_size, T - 1), jnp.int32)
        delim = jnp.full((batch_size, 1), delimiter, jnp.int32)
        tail = jnp.zeros((batch_size, N), jnp.int32)
        tokens = jnp.concatenate([symbols, blanks_in, delim, tail], axis=1)  # [B, T + 2N]
        y = jnp.concatenate([jnp.zeros((batch_size, T + N), jnp.int32), symbols], axis=1)
        return Batch(jax.nn.one_hot(tokens, S + 2, dtype=jnp.float32), y, None)

    def loss(pred, batch):
        return mean_cross_entropy(pred, batch.y)

    def metric(pred, batch):
        recalled = jnp.argmax(pred[:, -N:], axis=-1)
        return jnp.mean((recalled == batch.y[:, -N:]).astype(jnp.float32))

    baseline = N * math.log(S) / length
    return Task(name="copy", seq_len=T, input_dim=S + 2, output_dim=S + 1, readout="all",
                sample=sample, loss=loss, metric=metric, metric_name="accuracy",
                baseline_loss=baseline, solved_threshold=solved_ratio * baseline)


def _variable_copy(S: int, N: int, lengths_range: tuple[int, int], solved_ratio: float) -> Task:
    """Copy memory whose delay varies per sequence (see the module docstring)."""
    lo, hi = lengths_range
    width = hi + 2 * N
    delimiter = S + 1

    def sample(key, batch_size):
        k_sym, k_len = jax.random.split(key)
        delays = draw_lengths(k_len, batch_size, hi, lengths_range)  # [B]
        symbols = jax.random.randint(k_sym, (batch_size, N), 1, S + 1)
        steps = jnp.arange(width)[None, :]
        recall_start = (delays + N)[:, None]  # the first recall step of each sequence
        tokens = jnp.zeros((batch_size, width), jnp.int32)
        tokens = tokens.at[:, :N].set(symbols)
        tokens = jnp.where(steps == recall_start - 1, delimiter, tokens)
        recall_idx = jnp.clip(steps - recall_start, 0, N - 1)
        recalling = (steps >= recall_start) & (steps < recall_start + N)
        y = jnp.where(recalling, jnp.take_along_axis(symbols, recall_idx, axis=1), 0)
        mask = length_mask(delays + 2 * N, width)
        x = jnp.where(mask[..., None], jax.nn.one_hot(tokens, S + 2, dtype=jnp.float32), 0.0)  # padding: zeros
        return Batch(x, y, mask)

    def recall_weights(batch):
        steps = jnp.arange(width)[None, :]
        recall_start = jnp.sum(batch.mask, axis=1, keepdims=True) - N
        return (steps >= recall_start) & batch.mask

    def loss(pred, batch):
        return mean_cross_entropy(pred, batch.y, batch.mask)

    def metric(pred, batch):
        return accuracy(pred, batch.y, recall_weights(batch))

    baseline = N * math.log(S) / ((lo + hi) / 2 + 2 * N)
    return Task(name="copy", seq_len=hi, input_dim=S + 2, output_dim=S + 1, readout="all",
                sample=sample, loss=loss, metric=metric, metric_name="accuracy",
                baseline_loss=baseline, solved_threshold=solved_ratio * baseline, length_range=lengths_range)
