"""The adding problem (Hochreiter & Schmidhuber 1997, experiment 4), in two encodings.

``encoding="arjovsky2016"`` (default; Arjovsky et al. 2016, the encoding most later papers use): each
step carries a value from U[0, 1] and a marker. Exactly two markers are 1: one at a uniformly drawn
step in the first half, one in the second half. The target, read after the last step, is the sum of
the two marked values; the loss is the mean squared error.

    x [B, T, 2] = (value, marker),   y [B, 1] = u1 + u2
    trivial baseline: predict 1.0, the mean: MSE = Var(u1 + u2) = 2/12 = 1/6

``encoding="hochreiter1997"`` (the original): values from U[-1, 1]; one of the first 10 pairs is
marked (its value X1; X1 := 0 if it is the first pair), then one of the first T/2 - 1 still unmarked
pairs (X2); the first and the last pair carry the marker -1 (unless marked); sequences have random
lengths between T and T + T/10 (padded and masked). The target is 0.5 + (X1 + X2) / 4.

    trivial baseline: predict 0.5: MSE = (Var X1 + Var X2) / 16 = (0.9/3 + 1/3) / 16 = 0.0396

The metric, for both, is the fraction of predictions within 0.04 of the target, Hochreiter &
Schmidhuber's criterion for a correct answer. ``length_range=[lo, hi]`` draws each sequence's length
from lo..hi (the original encoding's own range is then replaced by it); each sequence's markers are
placed relative to its own length and the prediction is read at its own last step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnbench.cells.base import check_choice, check_positive_int
from rnnbench.tasks.base import Batch, Task, check_length_range, check_solved_ratio, draw_lengths, length_mask

TOLERANCE = 0.04
BASELINE_MSE = 1.0 / 6.0
BASELINE_MSE_1997 = (0.9 / 3.0 + 1.0 / 3.0) / 16.0
ENCODINGS = ("arjovsky2016", "hochreiter1997")


def adding(seq_len: int = 100, solved_ratio: float = 0.06, encoding: str = "arjovsky2016",
           length_range: list[int] | None = None) -> Task:
    """Adding problem of length ``seq_len``; solved when MSE < ``solved_ratio`` * the trivial baseline.

    The default ratio 0.06 puts the threshold at MSE 0.01 in Arjovsky's encoding, the level papers
    read as "solved".
    """
    check_positive_int("task.seq_len", seq_len)
    check_choice("task.encoding", encoding, ENCODINGS)
    original = encoding == "hochreiter1997"
    minimum = 22 if original else 2  # 1997: ten candidates for X1, then T/2 - 1 > 10 for X2
    if seq_len < minimum:
        raise ValueError(f"task.seq_len={seq_len} is too short for the adding task ({encoding}): it needs >= {minimum}")
    check_solved_ratio(solved_ratio)
    lengths_range = check_length_range(length_range, minimum)
    if lengths_range is None and original:
        lengths_range = (seq_len, seq_len + seq_len // 10)
    width = seq_len if lengths_range is None else lengths_range[1]

    def sample(key, batch_size):
        kv, k1, k2 = jax.random.split(key, 3)  # (the fixed-length stream is unchanged from before lengths varied)
        lengths = draw_lengths(jax.random.fold_in(key, 3), batch_size, seq_len, lengths_range)
        steps = jnp.arange(width)[None, :]
        real = length_mask(lengths, width)
        if not original:
            half = lengths // 2
            values = jax.random.uniform(kv, (batch_size, width), jnp.float32)
            first = jax.random.randint(k1, (batch_size,), 0, half)
            second = jax.random.randint(k2, (batch_size,), half, lengths)
            marked = (steps == first[:, None]) | (steps == second[:, None])
            values = jnp.where(real, values, 0.0)
            y = jnp.sum(jnp.where(marked, values, 0.0), axis=1, keepdims=True)
            markers = marked.astype(jnp.float32)
        else:
            values = jax.random.uniform(kv, (batch_size, width), jnp.float32, -1.0, 1.0)
            values = jnp.where(real, values, 0.0)
            first = jax.random.randint(k1, (batch_size,), 0, 10)
            values = jnp.where(steps == 0, jnp.where(first[:, None] == 0, 0.0, values), values)  # X1 := 0 at t=0
            # X2: uniform over the first T/2 - 1 pairs other than X1's (index j of the unmarked ones)
            j = jax.random.randint(k2, (batch_size,), 0, lengths // 2 - 1)
            second = j + (j >= first).astype(jnp.int32)
            marked = (steps == first[:, None]) | (steps == second[:, None])
            ends = (steps == 0) | (steps == (lengths - 1)[:, None])
            markers = jnp.where(marked, 1.0, jnp.where(ends & real, -1.0, 0.0))
            y = 0.5 + jnp.sum(jnp.where(marked, values, 0.0), axis=1, keepdims=True) / 4.0
        x = jnp.stack([values, markers], axis=-1)
        return Batch(x, y, None if lengths_range is None else real)

    def loss(pred, batch):
        return jnp.mean(jnp.square(pred - batch.y))

    def metric(pred, batch):
        return jnp.mean((jnp.abs(pred - batch.y) < TOLERANCE).astype(jnp.float32))

    baseline = BASELINE_MSE_1997 if original else BASELINE_MSE
    return Task(name="adding", seq_len=width, input_dim=2, output_dim=1, readout="last",
                sample=sample, loss=loss, metric=metric, metric_name="accuracy",
                baseline_loss=baseline, solved_threshold=solved_ratio * baseline, length_range=lengths_range)
