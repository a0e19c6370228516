"""The adding problem (Hochreiter & Schmidhuber 1997), in the encoding of Arjovsky et al. 2016.

Each step carries two numbers: a value drawn from U[0, 1] and a marker. Exactly two markers are 1:
one at a uniformly drawn step in the first half, one in the second half. The target, read after the
last step, is the sum of the two marked values; the loss is the mean squared error.

    x [B, T, 2] = (value, marker),   y [B, 1] = sum of the marked values

Trivial baseline: always predicting 1.0 (the mean of the sum) gives MSE = Var(u1 + u2) = 2/12 = 1/6.
The metric is the fraction of predictions within 0.04 of the target, Hochreiter & Schmidhuber's
criterion for a correct answer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnbench.cells.base import check_positive_int
from rnnbench.tasks.base import Batch, Task, check_solved_ratio

TOLERANCE = 0.04
BASELINE_MSE = 1.0 / 6.0


def adding(seq_len: int = 100, solved_ratio: float = 0.06) -> Task:
    """Adding problem of length ``seq_len`` (>= 2); solved when MSE < ``solved_ratio`` / 6.

    The default ratio 0.06 puts the threshold at MSE 0.01, the level papers read as "solved".
    """
    check_positive_int("task.seq_len", seq_len)
    if seq_len < 2:
        raise ValueError(f"task.seq_len={seq_len} is too short for the adding task: it needs >= 2 (a marker per half)")
    check_solved_ratio(solved_ratio)
    half = seq_len // 2

    def sample(key, batch_size):
        kv, k1, k2 = jax.random.split(key, 3)
        values = jax.random.uniform(kv, (batch_size, seq_len), jnp.float32)
        first = jax.random.randint(k1, (batch_size,), 0, half)
        second = jax.random.randint(k2, (batch_size,), half, seq_len)
        steps = jnp.arange(seq_len)[None, :]
        marker = (steps == first[:, None]) | (steps == second[:, None])
        y = jnp.sum(jnp.where(marker, values, 0.0), axis=1, keepdims=True)
        x = jnp.stack([values, marker.astype(jnp.float32)], axis=-1)
        return Batch(x, y, None)

    def loss(pred, batch):
        return jnp.mean(jnp.square(pred - batch.y))

    def metric(pred, batch):
        return jnp.mean((jnp.abs(pred - batch.y) < TOLERANCE).astype(jnp.float32))

    return Task(name="adding", seq_len=seq_len, input_dim=2, output_dim=1, readout="last",
                sample=sample, loss=loss, metric=metric, metric_name="accuracy",
                baseline_loss=BASELINE_MSE, solved_threshold=solved_ratio * BASELINE_MSE)
