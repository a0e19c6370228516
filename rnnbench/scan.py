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

Parallel form. A cell linear in its state may carry ``cell.parallel`` (``cells/linear_scan.py``): then
the input projection is hoisted and the whole sequence runs as one ``associative_scan``. The
diagnostics, which perturb and probe every step, run the same cell step by step (``step`` and
``parallel`` are tested equal).

Whole-sequence form. A cell may carry ``cell.sequence`` instead (the LSTM's ``backward="fused"``): a
step-by-step scan over the raw inputs with a backward pass written by hand (it projects the input
itself, so ``hoist_input`` does not apply). The diagnostics run the cell step by step here too; so
does ``remat=True``, whose point is memory.

Rematerialisation. ``remat=True`` wraps the scan body in ``jax.checkpoint``: the backward pass then
recomputes each step's gates from the saved carry instead of storing them, trading about one extra
forward pass for memory that no longer grows with the gates of every step (``make bench`` measures
both at T=1000).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

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
    remat: bool = False,
) -> tuple[Carry, Array]:
    """Run ``cell`` over ``xs [B, T, D]``; returns ``(final carry, hs [B, T, H])``.

    ``reverse`` scans from t = T-1 down to 0 (outputs stay in input order). ``mask [B, T]`` holds the
    carry and zeroes the output on padded steps. ``carry`` defaults to ``cell.initial_carry``.
    """
    carry, hs, _ = scan_cell_observed(cell, params, xs, mask, reverse=reverse, carry=carry, unroll=unroll,
                                      hoist_input=hoist_input, remat=remat)
    return carry, hs


def scan_cell_observed(
    cell: Cell,
    params: Params,
    xs: Array,
    mask: Array | None = None,
    *,
    reverse: bool = False,
    carry: Carry | None = None,
    unroll: int = 1,
    hoist_input: bool | None = None,
    remat: bool = False,
    perturb: Carry | None = None,
    probe: Callable[[Carry, Array], Any] | None = None,
) -> tuple[Carry, Array, Any]:
    """``scan_cell`` that can also watch and nudge the state; the one implementation of both.

    ``perturb`` is a carry-shaped pytree with a time axis (leaves ``[B, T, ...]``) added to the state
    after each step: with zeros, differentiating the loss by it gives dL/d(state_t) for every t in one
    backward pass (``diagnostics.py``). ``probe(carry_before, gx_t)`` is evaluated at every step on the
    state before the step and the projected input ``gx_t [B, G]``; its results come back stacked as
    ``[T, ...]`` (time-major). Returns ``(final carry, hs [B, T, H], probes or None)``.
    """
    if hoist_input is None:
        hoist_input = default_hoist_input()
    if carry is None:
        carry = cell.initial_carry(xs.shape[:1], xs.dtype)
    xs_tm = jnp.swapaxes(xs, 0, 1)  # [T, B, D]
    if perturb is None and probe is None and (cell.parallel is not None or (cell.sequence is not None and not remat)):
        mask_tm = None if mask is None else jnp.swapaxes(mask, 0, 1)
        if cell.parallel is not None:
            carry, hs = cell.parallel(params, carry, cell.project_input(params, xs_tm), mask_tm, reverse)
        else:
            carry, hs = cell.sequence(params, carry, xs_tm, mask_tm, reverse)
        return carry, jnp.swapaxes(hs, 0, 1), None
    if hoist_input:
        inputs, update = cell.project_input(params, xs_tm), cell.recurrence  # [T, B, G]
    else:
        inputs, update = xs_tm, cell.step
    per_step: dict[str, Any] = {"input": inputs}
    if mask is not None:
        per_step["mask"] = jnp.swapaxes(mask, 0, 1)
    if perturb is not None:
        per_step["perturb"] = jax.tree.map(lambda e: jnp.swapaxes(e, 0, 1), perturb)

    def body(c, step_in):
        inp = step_in["input"]
        new_c, h = update(params, c, inp)
        if "perturb" in step_in:
            # The output is read from the nudged state: the carry's last leaf, or the cell's emit.
            new_c = jax.tree.map(jnp.add, new_c, step_in["perturb"])
            if cell.emit is None:
                h = jax.tree.leaves(new_c)[-1]
            else:
                h = cell.emit(params, new_c, inp if hoist_input else cell.project_input(params, inp))
        if "mask" in step_in:
            m_t = step_in["mask"]
            new_c, h = _hold_where_padded(m_t, new_c, c), jnp.where(m_t[:, None], h, jnp.zeros_like(h))
        if probe is None:
            return new_c, h
        return new_c, (h, probe(c, inp if hoist_input else cell.project_input(params, inp)))

    carry, out = jax.lax.scan(jax.checkpoint(body) if remat else body, carry, per_step, reverse=reverse,
                              unroll=unroll)
    hs, probes = out if probe is not None else (out, None)
    return carry, jnp.swapaxes(hs, 0, 1), probes


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
    hs, summary, _ = scan_layer_observed(layer, params, xs, mask, **kw)
    return hs, summary


def scan_layer_observed(
    layer: Layer,
    params: Params,
    xs: Array,
    mask: Array | None = None,
    *,
    perturb: Any = None,
    probe: Callable[[Cell, Params], Callable] | None = None,
    **kw,
) -> tuple[Array, Array, Any]:
    """``scan_layer`` with ``scan_cell_observed``'s perturbations and probes, per direction.

    For a bidirectional layer ``perturb`` is ``{"fwd": ..., "bwd": ...}`` and so are the probes.
    ``probe(cell, params)`` returns the per-step probe for that direction's cell.
    """
    def run(cell, p, eps, reverse):
        return scan_cell_observed(cell, p, xs, mask, reverse=reverse, perturb=eps,
                                  probe=None if probe is None else probe(cell, p), **kw)

    if layer.backward is None:
        _, hs, probes = run(layer.forward, params, perturb, False)
        return hs, last_valid(hs, mask), probes
    eps = perturb or {"fwd": None, "bwd": None}
    _, hs_f, probes_f = run(layer.forward, params["fwd"], eps["fwd"], False)
    _, hs_b, probes_b = run(layer.backward, params["bwd"], eps["bwd"], True)
    hs = jnp.concatenate([hs_f, hs_b], axis=-1)
    summary = jnp.concatenate([last_valid(hs_f, mask), hs_b[:, 0]], axis=-1)
    return hs, summary, {"fwd": probes_f, "bwd": probes_b}


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
