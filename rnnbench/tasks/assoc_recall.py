"""Multi-query associative recall, MQAR (Arora et al. 2023, "Zoology", section 3).

A sequence of T = ``seq_len`` steps opens with P = ``num_pairs`` key-value pairs as alternating
tokens k_1 v_1 k_2 v_2 ... (keys distinct, drawn from K = ``num_keys`` key symbols; values distinct,
drawn from V = ``num_values`` value symbols, both without replacement as in Zoology's generator);
filler steps follow, and the last Q = ``num_queries`` steps are queries: Q distinct keys of the pairs
in uniformly random order. At each query step the target is the value paired with the queried key.

Paper setting: vocabulary 8192 (keys and values from its two halves), T = 64 .. 512, P = 4 .. 64,
every key queried once (Q = P), the queries scattered among random filler tokens at power-law gaps.
Here: T = 64, P = Q = 8, K = V = 16, a blank filler and the queries together at the end (so one
structure per length, and ``length_range`` varies only the gap between the pairs and the queries).

Encoding (token ids; the input is their one-hot code, D = K + V + 1):

    0 .. K-1   keys        K .. K+V-1   values (value j is token K + j)        K+V   filler
    input:   k_1, K+v_1, ..., k_P, K+v_P,  T - 2P - Q fillers,  q_1 .. q_Q
    target:  y [B, T] int32: at query step q_i, the value index v (a class in 0..V-1, O = V) paired
             with key q_i; -1 on every other step (no loss there) and on padding

The loss is the cross-entropy over the Q query steps only; the metric is the accuracy there.

Trivial baseline. Each value is uniform on the V symbols whatever the keys, the query order and the
length (values are drawn independently of them), so a predictor that does not read the values in the
context, e.g. one that sees only the query token and its position, can do no better than the uniform
guess: baseline = ln V per query (ln 16 = 2.77 by default). A model that remembers which values
occurred but not to which key they belong predicts uniformly over the P distinct values in the
context: ln P (ln 8 = 2.08), the level of memory without association. The solved threshold,
``solved_ratio`` * ln V, must lie below ln P (checked), so that only a model that binds keys to
values counts as solving the task.

``length_range=[lo, hi]`` draws each sequence's length T from lo..hi (lo >= 2P + Q): the pairs open
every sequence and its queries fill its own last Q steps, so the filler gap varies; the batch is
padded to hi steps (padding: all-zero input, target -1, mask False). The baseline is ln V at every
length.
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


def _distinct(key, batch_size: int, n: int, k: int):
    """``[B, k]`` int32: k distinct draws from 0..n-1 per row, in uniformly random order."""
    return jnp.argsort(jax.random.uniform(key, (batch_size, n)), axis=1)[:, :k].astype(jnp.int32)


def assoc_recall(seq_len: int = 64, num_pairs: int = 8, num_queries: int = 8, num_keys: int = 16,
                 num_values: int = 16, solved_ratio: float = 0.1, length_range: list[int] | None = None) -> Task:
    """MQAR with sequences of ``seq_len`` steps in total (see the module docstring)."""
    check_positive_int("task.seq_len", seq_len)
    check_positive_int("task.num_pairs", num_pairs)
    check_positive_int("task.num_queries", num_queries)
    check_positive_int("task.num_keys", num_keys)
    check_positive_int("task.num_values", num_values)
    P, Q, K, V = num_pairs, num_queries, num_keys, num_values
    if P < 2:
        raise ValueError(f"task.num_pairs={P} must be >= 2: with one pair, remembering the lone value answers "
                         "every query without binding it to its key")
    if Q > P:
        raise ValueError(f"task.num_queries={Q} must be <= task.num_pairs={P}: the queried keys are distinct")
    if K < P:
        raise ValueError(f"task.num_keys={K} must be >= task.num_pairs={P}: the keys of a sequence are distinct")
    if V < P:
        raise ValueError(f"task.num_values={V} must be >= task.num_pairs={P}: the values of a sequence are distinct")
    minimum = 2 * P + Q
    if seq_len < minimum:
        raise ValueError(f"task.seq_len={seq_len} is too short for {P} pairs and {Q} queries: it needs "
                         f">= 2 * num_pairs + num_queries = {minimum}")
    check_solved_ratio(solved_ratio)
    baseline = math.log(V)
    threshold = solved_ratio * baseline
    if threshold >= math.log(P):
        raise ValueError(f"task.solved_ratio={solved_ratio} puts the solved threshold at {threshold:.3g}, not below "
                         f"ln(num_pairs) = {math.log(P):.3g}, which remembering the values without their keys "
                         "reaches: lower it")
    lengths_range = check_length_range(length_range, minimum)
    width = seq_len if lengths_range is None else lengths_range[1]
    filler = K + V

    def sample(key, batch_size):
        k_keys, k_values, k_order, k_len = jax.random.split(key, 4)
        lengths = draw_lengths(k_len, batch_size, seq_len, lengths_range)  # [B]
        keys = _distinct(k_keys, batch_size, K, P)  # [B, P]
        values = _distinct(k_values, batch_size, V, P)
        order = _distinct(k_order, batch_size, P, Q)  # which pair each query asks for
        pairs = jnp.stack([keys, K + values], axis=2).reshape(batch_size, 2 * P)
        steps = jnp.arange(width, dtype=jnp.int32)[None, :]
        tokens = jnp.full((batch_size, width), filler, jnp.int32).at[:, : 2 * P].set(pairs)
        query = steps - (lengths - Q)[:, None]  # index of the query at each step
        querying = (query >= 0) & (query < Q)
        asked = jnp.take_along_axis(order, jnp.clip(query, 0, Q - 1), axis=1)  # [B, width] pair indices
        tokens = jnp.where(querying, jnp.take_along_axis(keys, asked, axis=1), tokens)
        y = jnp.where(querying, jnp.take_along_axis(values, asked, axis=1), IGNORE)
        real = length_mask(lengths, width)
        tokens = jnp.where(real, tokens, -1)  # one_hot(-1) is all zeros: padding carries no token
        x = jax.nn.one_hot(tokens, K + V + 1, dtype=jnp.float32)
        return Batch(x, y, None if lengths_range is None else real)

    return Task(name="assoc_recall", seq_len=width, input_dim=K + V + 1, output_dim=V, readout="all",
                sample=sample, loss=labelled_cross_entropy, metric=labelled_accuracy, metric_name="accuracy",
                baseline_loss=baseline,
                solved_threshold=threshold, length_range=lengths_range)
