"""Vanishing-gradient diagnostics: how dL/dh_t decays over t, recurrent Jacobians, gate saturation.

All pure and jittable; computed for one seed on a fixed diagnostic batch (``train.py`` maps it over
seeds). Conventions: the carry's last leaf is h_t (for the LSTM, carry = (c, h)); curves are of the
last layer; for a bidirectional layer a step's norm combines both directions, sqrt(|g_fwd|^2 + |g_bwd|^2).

Gradient flow in one backward pass. A zero perturbation e_t is added to the state after every step
(``scan.scan_cell_observed``); since L(h_t + e_t) depends on e_t exactly as on h_t,

    dL/de_t = dL/dh_t      (the total derivative, through the readout and all later steps)

for every t at once. ``grad_norm_per_step[t]`` is its Frobenius norm over the batch and units.
From the curve n_t (t = 1..T) and the lag k = T - t:

    grad_ratio_first_last = n_1 / n_T
    grad_decay_rate       = -slope of ln n_{T-k} against k (least squares): > 0 vanishes, < 0 explodes
    grad_horizon          = the largest k such that n_{T-j} / n_T >= horizon_threshold for all j <= k
                            (-1 when undefined: n_T is 0 or not finite)

Recurrent Jacobian. For sampled t and each span s, the spectral norm of the state Jacobian
d state_{t+s} / d state_t (for s = 1, dh_t/dh_{t-1}; for the LSTM over the full (c, h) state), per
example by power iteration on J^T J with ``jax.linearize``/``jax.vjp`` (no dense Jacobian), averaged
over examples. Gate statistics: per layer, gate and time step, the mean activation and the fraction
of activations below 0.05 or above 0.95 (saturated), for cells that expose ``gates``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnbench.model import Model
from rnnbench.scan import scan_cell, scan_layer_observed
from rnnbench.tasks.base import Batch
from rnnbench.types import Array, Params

SATURATION = (0.05, 0.95)


class DiagnosticsOptions(NamedTuple):
    horizon_threshold: float = 1e-3
    jacobian_times: int = 3  # sampled time steps
    jacobian_spans: tuple[int, ...] = (1, 8)  # products of this many consecutive step Jacobians
    jacobian_batch: int = 16  # examples used for the Jacobian (a prefix of the diagnostic batch)
    power_iters: int = 10


DEFAULT_OPTIONS = DiagnosticsOptions()


def _tree_sq_norm_per_example(tree: Any) -> Array:
    """Sum of squares over every axis but the first (examples) and over leaves -> [B]."""
    return sum(jnp.sum(jnp.square(x).reshape(x.shape[0], -1), axis=1) for x in jax.tree.leaves(tree))


def curve_statistics(curve: Array, threshold: float) -> dict[str, Array]:
    """``grad_ratio_first_last``, ``grad_decay_rate`` and ``grad_horizon`` of a curve n_t, t = 1..T."""
    T = curve.shape[0]
    by_lag = curve[::-1]  # by_lag[k] = n_{T-k}
    lag = jnp.arange(T, dtype=curve.dtype)
    valid = jnp.isfinite(by_lag) & (by_lag > 0)
    logn = jnp.where(valid, jnp.log(jnp.where(valid, by_lag, 1.0)), 0.0)
    w = valid.astype(curve.dtype)
    n = jnp.maximum(jnp.sum(w), 1.0)
    mean_k, mean_l = jnp.sum(w * lag) / n, jnp.sum(w * logn) / n
    var_k = jnp.sum(w * jnp.square(lag - mean_k))
    slope = jnp.where(var_k > 0, jnp.sum(w * (lag - mean_k) * (logn - mean_l)) / jnp.maximum(var_k, 1e-30), 0.0)
    ratio = by_lag / by_lag[0]
    above = ratio >= threshold
    horizon = jnp.where(jnp.all(above), T - 1, jnp.argmin(above) - 1)
    return {
        "grad_ratio_first_last": curve[0] / curve[-1],
        "grad_decay_rate": -slope,
        "grad_horizon": horizon.astype(jnp.int32),
    }


def spectral_norm(f: Callable[[Any], Any], state: Any, key: jax.Array, iters: int) -> Array:
    """Per-example spectral norm of the Jacobian of ``f`` at ``state`` (leaves [B, ...]) -> [B].

    Power iteration on J^T J; f must act on each example independently (a batched recurrence does),
    so the batch Jacobian is block-diagonal and one iteration runs every example's at once.
    """
    _, jvp = jax.linearize(f, state)
    _, vjp = jax.vjp(f, state)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(key, len(leaves))
    v0 = treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)])

    def normalise(v):
        norm = jnp.sqrt(_tree_sq_norm_per_example(v))
        return jax.tree.map(lambda x: x / jnp.maximum(norm, 1e-30).reshape((-1,) + (1,) * (x.ndim - 1)), v)

    def body(_, v):
        (u,) = vjp(jvp(v))
        return normalise(u)

    v = jax.lax.fori_loop(0, iters, body, normalise(v0))
    return jnp.sqrt(_tree_sq_norm_per_example(jvp(v)))


def _zero_perturbation(layer, B: int, T: int, dtype) -> Any:
    def zeros(cell):
        return jax.tree.map(lambda c: jnp.zeros((B, T, *c.shape[1:]), c.dtype), cell.initial_carry((B,), dtype))

    if layer.backward is None:
        return zeros(layer.forward)
    return {"fwd": zeros(layer.forward), "bwd": zeros(layer.backward)}


def _probe(keep_state: bool) -> Callable:
    """Per-step probe factory: gate statistics, and the state before the step when ``keep_state``
    (only the last layer's, which the Jacobian needs: the others would be [T, B, ...] for nothing)."""
    return lambda cell, params: _gate_probe(cell, params, keep_state)


def _gate_probe(cell, params, keep_state: bool) -> Callable:
    def probe(carry, gx):
        stats = {"state": carry} if keep_state else {}
        if cell.gates is not None:
            lo, hi = SATURATION
            stats["gates"] = {
                name: {"mean": jnp.mean(a), "saturation": jnp.mean(((a < lo) | (a > hi)).astype(a.dtype))}
                for name, a in cell.gates(params, carry, gx).items()
            }
        return stats

    return probe


def diagnose(
    model: Model,
    loss_fn: Callable[[Array, Batch], Array],
    params: Params,
    batch: Batch,
    key: jax.Array,
    options: DiagnosticsOptions = DEFAULT_OPTIONS,
) -> dict[str, Any]:
    """Every diagnostic for one model on one batch (see the module docstring). Pure and jittable.

    Returns arrays: ``grad_norm_per_step [T]`` (h), ``grad_norm_per_step_state`` (a list, one ``[T]``
    curve per carry leaf: for the LSTM [c, h]), the three curve statistics, ``jacobian_norm
    [n_spans, n_times]`` with ``jacobian_times [n_times]``, and ``gates``: per layer, per direction
    ("fwd", "bwd"), per gate, ``mean`` and ``saturation`` curves ``[T]``.
    """
    x, mask = batch.x, batch.mask
    B, T = x.shape[:2]
    n_layers = len(model.layers)

    def forward(perturbation):
        hs, probes = x, []
        for i, (layer, p) in enumerate(zip(model.layers, params["layers"], strict=True)):
            last_layer = i == n_layers - 1
            layer_in = hs
            hs, summary, pr = scan_layer_observed(layer, p, hs, mask, perturb=perturbation if last_layer else None,
                                                  probe=_probe(keep_state=last_layer))
            probes.append(pr)
        return loss_fn(model.head(params, hs, summary), batch), (probes, layer_in)

    last = model.layers[-1]
    zeros = _zero_perturbation(last, B, T, x.dtype)
    grads, (probes, last_in) = jax.grad(forward, has_aux=True)(zeros)

    # Gradient flow: per carry leaf, per step; both directions combined for a bidirectional layer.
    directions = [grads] if last.backward is None else [grads["fwd"], grads["bwd"]]
    by_direction = [jax.tree.leaves(d) for d in directions]  # leaves [B, T, ...]
    leaf_curves = [
        jnp.sqrt(sum(jnp.sum(jnp.square(g), axis=(0, *range(2, g.ndim))) for g in (d[j] for d in by_direction)))
        for j in range(len(by_direction[0]))
    ]
    out: dict[str, Any] = {"grad_norm_per_step": leaf_curves[-1], "grad_norm_per_step_state": leaf_curves}
    out.update(curve_statistics(leaf_curves[-1], options.horizon_threshold))

    # Recurrent Jacobian of the last layer's forward cell at sampled steps, over each span.
    cell = last.forward._replace(sequence=None)  # step by step: a custom VJP has no forward mode (linearize)
    cell_params = params["layers"][-1] if last.backward is None else params["layers"][-1]["fwd"]
    fwd_probes = probes[-1] if last.backward is None else probes[-1]["fwd"]
    Bj = min(options.jacobian_batch, B)
    states = jax.tree.map(lambda s: s[:, :Bj], fwd_probes["state"])  # [T, Bj, ...] state before step t
    inputs = last_in[:Bj]
    spans = [s for s in options.jacobian_spans if s <= T] or [1]
    times = np.linspace(0, T - max(spans), options.jacobian_times).round().astype(int)  # static 0-based t
    # All sampled times at once: their start states side by side in one batch of n_times * Bj.
    n_times = len(times)
    norms = []
    for si, span in enumerate(spans):
        xs = jnp.concatenate([inputs[:, t : t + span] for t in times], axis=0)
        state0 = jax.tree.map(lambda s: jnp.concatenate([s[t] for t in times], axis=0), states)

        def run(state, xs=xs):
            final, _ = scan_cell(cell, cell_params, xs, carry=state)
            return final

        sigma = spectral_norm(run, state0, jax.random.fold_in(key, si), options.power_iters)
        norms.append(jnp.mean(sigma.reshape(n_times, Bj), axis=1))
    out["jacobian_norm"] = jnp.stack(norms)  # [n_spans, n_times]
    out["jacobian_spans"] = jnp.asarray(spans, jnp.int32)
    out["jacobian_times"] = jnp.asarray(times + 1, jnp.int32)  # 1-based t, as the curve

    # Gate statistics per layer and direction.
    gates = []
    for layer_probes in probes:
        per_dir = layer_probes if isinstance(layer_probes, dict) and "fwd" in layer_probes else {"fwd": layer_probes}
        gates.append({d: pr.get("gates", {}) for d, pr in per_dir.items()})
    out["gates"] = gates
    return out
