"""The Task contract: a pure, seeded generator of batches with its loss, metric and baselines.

    task = adding(seq_len=100)
    batch = task.sample(key, batch_size)            # Batch(x [B, T, D], y, mask [B, T] or None)
    loss = task.loss(pred, batch)                    # scalar, comparable with task.baseline_loss
    metric = task.metric(pred, batch)                # scalar, named task.metric_name

``sample`` is pure and jittable: the same key gives the same batch, on any device. ``baseline_loss`` is
the loss of the best predictor that ignores the dependency the task tests (the "trivial baseline" each
paper reports); a run counts as solved when its evaluation loss falls below ``solved_threshold``.

Variable length. A task built with ``length_range=[lo, hi]`` draws each sequence's length L uniformly
from lo..hi (L plays the role of ``seq_len``), lays it out from t = 0 and pads the batch to the width
of the longest possible sequence; ``mask [B, T]`` marks the real steps, the loss and the metric ignore
the padding, and ``Task.seq_len`` is hi. ``draw_lengths``, ``length_mask``, ``masked_mean`` and
``mean_cross_entropy(..., weights)`` are the shared pieces; each task places its own structure (markers,
delimiters, queries) relative to each sequence's own length. With ``length_range`` unset, every
sequence has length ``seq_len`` and ``mask`` is None.

Length generalisation. ``generalises`` says whether the task can be rebuilt at another ``seq_len``
with the same input and output widths, so that a model trained at one length can be evaluated at
others (``eval.seq_lens``).
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
      baseline_loss: loss of the trivial baseline (at the mean length under ``length_range``).
      solved_threshold: loss below which it is solved.
      length_range: ``(lo, hi)`` when lengths vary within a batch, else None.
      generalises: whether the task can be rebuilt at another seq_len with the same widths.
      sample_eval: draws held-out batches (e.g. a data set's test split) for evaluation and the
        diagnostics; None: ``sample`` (synthetic tasks, whose fresh draws are held out already).
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
    length_range: tuple[int, int] | None = None
    generalises: bool = True
    sample_eval: Callable[[PRNGKey, int], Batch] | None = None


def check_solved_ratio(value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < value < 1.0:
        raise ValueError(f"task.solved_ratio={value!r} must be in (0, 1): a fraction of the baseline loss")


def check_length_range(length_range, minimum: int) -> tuple[int, int] | None:
    """``length_range`` as ``(lo, hi)``, or None; a one-line ValueError unless minimum <= lo <= hi."""
    if length_range is None:
        return None
    values = list(length_range) if isinstance(length_range, (list, tuple)) else None
    ok = (values is not None and len(values) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
          and minimum <= values[0] <= values[1])
    if not ok:
        raise ValueError(f"task.length_range={length_range!r} must be [lo, hi], integers with {minimum} <= lo <= hi "
                         "(or null for fixed-length sequences)")
    return values[0], values[1]


def draw_lengths(key: PRNGKey, batch_size: int, seq_len: int, length_range: tuple[int, int] | None) -> Array:
    """Each sequence's length ``[B]`` int32: uniform on lo..hi, or ``seq_len`` for all."""
    if length_range is None:
        return jnp.full((batch_size,), seq_len, jnp.int32)
    lo, hi = length_range
    return jax.random.randint(key, (batch_size,), lo, hi + 1, jnp.int32)


def length_mask(lengths: Array, width: int) -> Array:
    """``[B, width]`` bool, True on the first ``lengths[b]`` steps of row b."""
    return jnp.arange(width, dtype=jnp.int32)[None, :] < lengths[:, None]


def masked_mean(values: Array, weights: Array | None = None) -> Array:
    """Mean of ``values`` over the entries where ``weights`` (bool or float, same shape) is nonzero."""
    if weights is None:
        return jnp.mean(values)
    w = weights.astype(values.dtype)
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1.0)


def mean_cross_entropy(logits: Array, labels: Array, weights: Array | None = None) -> Array:
    """Mean of -log softmax(logits)[label] over positions (those with nonzero ``weights``, if given).

    ``logits [..., C]``, ``labels [...]`` int, ``weights [...]``: the mask of positions that count.
    """
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]
    return -masked_mean(logp, weights)


def accuracy(logits: Array, labels: Array, weights: Array | None = None) -> Array:
    """Fraction of positions (with nonzero ``weights``) whose argmax equals the label."""
    return masked_mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32), weights)


IGNORE = -1  # the label of a step that carries no loss, padding included (Zoology's -100)


def labelled_steps(batch: Batch) -> Array:
    """``[B, T]`` bool: the steps whose label is not ``IGNORE`` (and that are real, under a mask)."""
    scored = batch.y >= 0
    return scored if batch.mask is None else scored & batch.mask


def labelled_cross_entropy(logits: Array, batch: Batch) -> Array:
    """Mean cross-entropy over the labelled steps (for per-step tasks whose other steps are IGNORE)."""
    return mean_cross_entropy(logits, jnp.maximum(batch.y, 0), labelled_steps(batch))


def labelled_accuracy(logits: Array, batch: Batch) -> Array:
    """Accuracy over the labelled steps."""
    return accuracy(logits, jnp.maximum(batch.y, 0), labelled_steps(batch))
