"""Selective copying (Gu & Dao 2023, "Mamba", section 3.1 and appendix E.1).

The copy task with its data tokens scattered: N = ``num_tokens`` data tokens, drawn i.i.d. uniformly
from V = ``vocab_size`` data symbols, sit at N distinct, uniformly drawn steps of a prefix of
P = ``seq_len`` steps whose other steps hold a noise token; N recall markers follow. At the n-th
marker the model outputs the n-th data token in order of appearance. Because the data positions
vary, a fixed delay line (a time-invariant convolution) cannot solve it: the model has to select
what to remember by content. This is the generator of the S4/Mamba code (``torch_copying_data``
with ``variable=True``): L noise + M data tokens, then M markers.

Paper setting: length 4096, 16 data tokens, a vocabulary of 16 (counting the noise token). The
default here, P = 100 with N = 8 tokens from V = 8 symbols, shrinks all three for a 2-core CPU.

Encoding (token ids; the input is their one-hot code, D = V + 2; a sequence has P + N steps):

    0 .. V-1   data symbols          V   noise        V+1   recall marker
    input:   P prefix steps (N data tokens at sorted random positions, noise elsewhere), N markers
    target:  y [B, P + N] int32: at the n-th marker the n-th data token (a class in 0..V-1, O = V);
             -1 on every other step (no loss there) and on padding

The loss is the cross-entropy over the N marker steps only; the metric is the token accuracy there.

Trivial baseline. The data tokens are i.i.d. uniform on V symbols and independent of everything
else in the sequence (positions, length, markers), so without remembering them no predictor does
better than the uniform guess: baseline = ln V per recall step (ln 8 = 2.08 by default). Solved when
the loss < ``solved_ratio`` * ln V.

``length_range=[lo, hi]`` draws each sequence's prefix length P from lo..hi (lo >= N): its data
tokens are scattered over its own prefix, its markers follow it, the batch is padded to hi + N
steps (padding: all-zero input, target -1, mask False). The baseline is ln V at every length.
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


def selective_copy(seq_len: int = 100, num_tokens: int = 8, vocab_size: int = 8, solved_ratio: float = 0.1,
                   length_range: list[int] | None = None) -> Task:
    """Selective copying with a prefix of ``seq_len`` steps (see the module docstring)."""
    check_positive_int("task.seq_len", seq_len)
    check_positive_int("task.num_tokens", num_tokens)
    check_positive_int("task.vocab_size", vocab_size)
    if vocab_size < 2:
        raise ValueError(f"task.vocab_size={vocab_size} must be >= 2: with one symbol there is nothing to remember")
    if seq_len < num_tokens:
        raise ValueError(f"task.seq_len={seq_len} is too short: the prefix must hold task.num_tokens={num_tokens} "
                         f"data tokens (seq_len >= {num_tokens})")
    check_solved_ratio(solved_ratio)
    lengths_range = check_length_range(length_range, num_tokens)
    V, N = vocab_size, num_tokens
    noise, marker = V, V + 1
    widest = seq_len if lengths_range is None else lengths_range[1]  # the longest prefix
    width = widest + N

    def sample(key, batch_size):
        k_sym, k_pos, k_len = jax.random.split(key, 3)
        prefix = draw_lengths(k_len, batch_size, seq_len, lengths_range)  # [B]
        steps = jnp.arange(width, dtype=jnp.int32)[None, :]
        symbols = jax.random.randint(k_sym, (batch_size, N), 0, V, jnp.int32)
        # N distinct positions, uniform over each row's own prefix: the N smallest of i.i.d. uniforms
        # (positions past the prefix get 2.0, above every draw), in order of appearance.
        u = jax.random.uniform(k_pos, (batch_size, widest))
        u = jnp.where(steps[:, :widest] < prefix[:, None], u, 2.0)
        positions = jnp.sort(jnp.argsort(u, axis=1)[:, :N], axis=1)
        rows = jnp.arange(batch_size)[:, None]
        tokens = jnp.full((batch_size, width), noise, jnp.int32).at[rows, positions].set(symbols)
        recall = steps - prefix[:, None]  # index of the marker at each step
        recalling = (recall >= 0) & (recall < N)
        tokens = jnp.where(recalling, marker, tokens)
        y = jnp.where(recalling, jnp.take_along_axis(symbols, jnp.clip(recall, 0, N - 1), axis=1), IGNORE)
        real = length_mask(prefix + N, width)
        tokens = jnp.where(real, tokens, -1)  # one_hot(-1) is all zeros: padding carries no token
        x = jax.nn.one_hot(tokens, V + 2, dtype=jnp.float32)
        return Batch(x, y, None if lengths_range is None else real)

    baseline = math.log(V)
    return Task(name="selective_copy", seq_len=widest, input_dim=V + 2, output_dim=V, readout="all",
                sample=sample, loss=labelled_cross_entropy, metric=labelled_accuracy, metric_name="accuracy",
                baseline_loss=baseline,
                solved_threshold=solved_ratio * baseline, length_range=lengths_range)
