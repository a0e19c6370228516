"""Shared pieces of the hand-written backward passes (``backward="fused"``: LSTM, GRU, tanh/relu RNN).

Each fused cell runs a whole sequence through one ``jax.custom_vjp`` function in cuDNN's structure: a
forward ``lax.scan`` that keeps what the backward needs, a reverse scan with only the
``dL/dh_{t-1} = dz W_h^T`` matmul per step, then the weight gradients (``dW_h = h_{t-1}^T dz``,
``dW_x = x^T dz``, ``db = sum dz``) and ``dL/dx = dz W_x^T`` as single matmuls over all T*B rows.
Per-step weight-gradient matmuls of ``[H, B] x [B, G]`` run at about half of the GEMM peak on
XLA:CPU; one ``[H, T*B] x [T*B, G]`` runs near it, and autodiff of a scan cannot move them out of the
loop by itself.

The masking rule is ``scan.py``'s: a padded step holds the carry and outputs zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnbench.cells.base import check_choice

BACKWARDS = ("auto", "autodiff", "fused")


def use_fused_backward(backward: str) -> bool:
    """Whether ``backward`` means the hand-written backward pass: ``auto`` is ``fused`` on CPU, where it
    measured faster than autodiff for every cell that has one (``python -m rnnbench.bench_backward``),
    and ``autodiff`` on GPU/TPU, where it is not measured yet."""
    check_choice("backward", backward, BACKWARDS)
    return backward == "fused" or (backward == "auto" and jax.default_backend() == "cpu")


def hold(m_t, new, old):
    """``new`` on the real rows of step t, ``old`` on its padded rows (``m_t [B]`` or None: no mask)."""
    return new if m_t is None else jnp.where(m_t[:, None], new, old)


def scan_prefetched(body, carry, xs, reverse):
    """``lax.scan(body, carry, xs, reverse=reverse)``, with each step's slice of ``xs`` read one step early.

    XLA:CPU fuses a scan's per-step slice of a ``[T, ...]`` array into the step's elementwise loops,
    which then run much slower (what makes hoisting the input projection lose, ``scan.py``). Slicing
    step t+1's inputs at the end of step t and passing them in the carry keeps each slice a separate
    copy and the elementwise loops on plain buffers (a hoisted LSTM forward at shape S: 34 -> 23 ms).
    """
    T = jax.tree.leaves(xs)[0].shape[0]

    def take(t):
        return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, t, keepdims=False), xs)

    def step(state, t):
        carry, x_t = state
        carry, y = body(carry, x_t)
        return (carry, take(jnp.clip(t - 1 if reverse else t + 1, 0, T - 1))), y

    (carry, _), ys = jax.lax.scan(step, (carry, take(T - 1 if reverse else 0)), jnp.arange(T), reverse=reverse)
    return carry, ys


def masked_outputs(hs, mask):
    """The outputs ``hs [T, B, H]`` with padded steps zeroed (the carried state is held there)."""
    return hs if mask is None else jnp.where(mask[..., None], hs, jnp.zeros_like(hs))


def h_prev(h0, hs, reverse):
    """h_{t-1} for every t, in the scan's order of time (the initial state enters first)."""
    return jnp.concatenate([hs[1:], h0[None]]) if reverse else jnp.concatenate([h0[None], hs[:-1]])


def rows(a):
    """``[T, B, F] -> [T*B, F]``."""
    return a.reshape(-1, a.shape[-1])


def mask_cotangent(m_t, *cotangents):
    """The step's incoming cotangents, zeroed on padded rows (their outputs and states did not change)."""
    if m_t is None:
        return cotangents
    return tuple(jnp.where(m_t[:, None], d, 0.0) for d in cotangents)


def pass_through(m_t, prev, incoming):
    """Add, on padded rows, the incoming carry cotangent to ``prev``: the step held its carry there."""
    return prev if m_t is None else prev + jnp.where(m_t[:, None], 0.0, incoming)
