"""Run cells over sequences: ``lax.scan``, masks, reverse, bidirectional layers and stacks.

Everything here is cell-agnostic: it only uses the Cell contract (``cells/base.py``).

Masking. A mask ``[B, T]`` marks real steps (True) and padding after each sequence's end (False).
On a padded step the carry is held and the output is zero, so padding never changes a sequence's
outputs or its final state. The backward direction scans t = T-1 .. 0 with the same rule: it holds
its initial carry through the trailing padding and so starts at each sequence's own last step.

Hoisting. ``project_input`` can run for all steps at once before the scan (one ``[T*B, D] x [D, G]``
matmul) or inside each step. On XLA:CPU hoisting measured slower (0.78-0.80x: XLA fuses the per-step
slice of the hoisted array into the gate computation, which then runs far slower per step), so
``hoist_input=None`` picks "inside the step" on CPU and "hoisted" on GPU/TPU, where one big matmul is
the textbook win. ``python -m rnnbench.bench`` measures both on the machine at hand.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell
from rnnbench.types import Array, Carry, Params, PRNGKey


def default_hoist_input() -> bool:
    """Whether to hoist the input projection out of the scan on the current default backend."""
    return jax.default_backend() != "cpu"


def _hold_where_padded(m_t: Array, new, old):
    """``new`` where step is real, ``old`` where padded; m_t [B] against leaves [B, ...]."""
    return jax.tree.map(lambda n, o: jnp.where(m_t.reshape(m_t.shape + (1,) * (n.ndim - 1)), n, o), new, old)


def scan_cell(
    cell: Cell,
    params: Params,
    xs: Array,
    mask: Array | None = None,
    *,
    reverse: bool = False,
    carry: Carry | None = None,
    unroll: int = 1,
    hoist_input: bool | None = None,
) -> tuple[Carry, Array]:
    """Run ``cell`` over ``xs [B, T, D]``; returns ``(final carry, hs [B, T, H])``.

    ``reverse`` scans from t = T-1 down to 0 (outputs stay in input order). ``mask [B, T]`` holds the
    carry and zeroes the output on padded steps. ``carry`` defaults to ``cell.initial_carry``.
    """
    if hoist_input is None:
        hoist_input = default_hoist_input()
    if carry is None:
        carry = cell.initial_carry(xs.shape[:1], xs.dtype)
    xs_tm = jnp.swapaxes(xs, 0, 1)  # [T, B, D]
    if hoist_input:
        inputs, update = cell.project_input(params, xs_tm), cell.recurrence  # [T, B, G]
    else:
        inputs, update = xs_tm, cell.step

    if mask is None:
        def body(c, inp):
            return update(params, c, inp)

        carry, hs = jax.lax.scan(body, carry, inputs, reverse=reverse, unroll=unroll)
    else:
        def body(c, inp):
            inp_t, m_t = inp
            new_c, h = update(params, c, inp_t)
            return _hold_where_padded(m_t, new_c, c), jnp.where(m_t[:, None], h, jnp.zeros_like(h))

        mask_tm = jnp.swapaxes(mask, 0, 1)
        carry, hs = jax.lax.scan(body, carry, (inputs, mask_tm), reverse=reverse, unroll=unroll)
    return carry, jnp.swapaxes(hs, 0, 1)


def last_valid(hs: Array, mask: Array | None) -> Array:
    """``hs [B, T, F]`` at each sequence's last real step -> ``[B, F]``."""
    if mask is None:
        return hs[:, -1]
    idx = jnp.maximum(jnp.sum(mask, axis=1, dtype=jnp.int32) - 1, 0)
    return jnp.take_along_axis(hs, idx[:, None, None], axis=1)[:, 0]


class Layer(NamedTuple):
    """One layer of a stack: a forward cell, and a backward cell when bidirectional."""

    forward: Cell
    backward: Cell | None = None

    @property
    def output_size(self) -> int:
        return self.forward.hidden_size * (1 if self.backward is None else 2)

    def init(self, key: PRNGKey, input_dim: int) -> Params:
        if self.backward is None:
            return self.forward.init(key, input_dim)
        kf, kb = jax.random.split(key)
        return {"fwd": self.forward.init(kf, input_dim), "bwd": self.backward.init(kb, input_dim)}


def scan_layer(layer: Layer, params: Params, xs: Array, mask: Array | None = None, **kw) -> tuple[Array, Array]:
    """One (possibly bidirectional) layer over ``xs [B, T, D]``.

    Returns ``hs [B, T, F]`` and ``summary [B, F]``, the state a many-to-one readout uses: the output
    at each sequence's last real step, and for a bidirectional layer, the backward half at t = 0
    (where the backward pass ends after reading the whole sequence), as PyTorch's ``h_n``.
    """
    if layer.backward is None:
        _, hs = scan_cell(layer.forward, params, xs, mask, **kw)
        return hs, last_valid(hs, mask)
    _, hs_f = scan_cell(layer.forward, params["fwd"], xs, mask, **kw)
    _, hs_b = scan_cell(layer.backward, params["bwd"], xs, mask, reverse=True, **kw)
    hs = jnp.concatenate([hs_f, hs_b], axis=-1)
    return hs, jnp.concatenate([last_valid(hs_f, mask), hs_b[:, 0]], axis=-1)


def dropout(key: PRNGKey, rate: float, x: Array) -> Array:
    """Inverted dropout: zero each unit with probability ``rate``, scale the rest by 1/(1-rate)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def scan_stack(
    layers: list[Layer] | tuple[Layer, ...],
    params: list[Params],
    xs: Array,
    mask: Array | None = None,
    *,
    dropout_rate: float = 0.0,
    dropout_key: PRNGKey | None = None,
    **kw,
) -> tuple[Array, Array]:
    """A stack of layers; dropout (when ``dropout_key`` is given) on the outputs between layers.

    Returns the last layer's ``hs [B, T, F]`` and ``summary [B, F]`` (see ``scan_layer``).
    """
    summary = None
    for i, (layer, p) in enumerate(zip(layers, params, strict=True)):
        if i > 0 and dropout_key is not None and dropout_rate > 0.0:
            xs = dropout(jax.random.fold_in(dropout_key, i), dropout_rate, xs)
        xs, summary = scan_layer(layer, p, xs, mask, **kw)
    return xs, summary
