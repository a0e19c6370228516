"""The Task contract: a pure, seeded generator of batches with its loss, metric and baselines.

    task = adding(seq_len=100)
    batch = task.sample(key, batch_size)            # Batch(x [B, T, D], y, mask [B, T] or None)
    loss = task.loss(pred, batch)                    # scalar, comparable with task.baseline_loss
    metric = task.metric(pred, batch)                # scalar, named task.metric_name

``sample`` is pure and jittable: the same key gives the same batch, on any device. ``baseline_loss`` is
the loss of the best predictor that ignores the dependency the task tests (the "trivial baseline" each
paper reports); a run counts as solved when its evaluation loss falls below ``solved_threshold``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnbench.types import Array, PRNGKey


class Batch(NamedTuple):
    """``x [B, T, D]`` float inputs, ``y`` targets (task-specific shape), ``mask [B, T]`` real steps.

    ``mask=None`` means every step is real (fixed-length tasks), which lets the scan skip masking.
    """

    x: Array
    y: Array
    mask: Array | None = None


class Task(NamedTuple):
    """A synthetic task (see the module docstring).

    Attributes:
      name: config name.  seq_len: the task's T as its paper defines it (the config value).
      input_dim: D.  output_dim: O.  readout: "last" (one prediction) or "all" (one per step).
      sample: ``(key, batch_size) -> Batch``.  loss, metric: ``(pred, batch) -> scalar``.
      metric_name: what ``metric`` measures (e.g. "accuracy").
      baseline_loss: loss of the trivial baseline.  solved_threshold: loss below which it is solved.
    """

    name: str
    seq_len: int
    input_dim: int
    output_dim: int
    readout: str
    sample: Callable[[PRNGKey, int], Batch]
    loss: Callable[[Array, Batch], Array]
    metric: Callable[[Array, Batch], Array]
    metric_name: str
    baseline_loss: float
    solved_threshold: float


def check_solved_ratio(value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < value < 1.0:
        raise ValueError(f"task.solved_ratio={value!r} must be in (0, 1): a fraction of the baseline loss")


def mean_cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean over all positions of -log softmax(logits)[label]; logits [..., C], labels [...] int."""
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]
    return -jnp.mean(logp)
