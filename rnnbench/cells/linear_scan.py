"""First-order linear recurrences over a whole sequence with ``jax.lax.associative_scan``.

The cells that are linear in their state (minGRU, minLSTM, LRU) all run

    h_t = a_t * h_{t-1} + b_t          elementwise, time-major a, b [T, B, ...], h_0 given,

whose solution is h_t = A_t h_0 + B_t with (A_t, B_t) the prefix "product" of the pairs (a_k, b_k)
under the associative operator (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2): O(T) work in O(log T)
depth instead of T dependent steps. Feng et al. 2024 run minGRU and minLSTM in log space, where
a_t in (0, 1) and b_t > 0, so that long products neither underflow nor lose precision:

    (la1, lb1) o (la2, lb2) = (la1 + la2, logaddexp(lb1 + la2, lb2)),    h_t = exp(LA_t) h_0 + exp(LB_t).

h_0 stays outside the logarithm, so any initial state works, whatever its sign.

Masking (``scan.py``'s rule): on a padded step (mask False) the state is held (a = 1, b = 0; in log
space la = 0, lb = a large negative number rather than -inf, whose gradients would be NaN) and the
output is zero. ``reverse`` runs t = T-1 .. 0: the same operator over the reversed sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnbench.types import Array

_LOG_ZERO = -1e30  # exp() of it is 0 in float32 and float64; sums of a few of them stay finite


def _time_mask(mask: Array | None, like: Array) -> Array | None:
    return None if mask is None else mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def _final(hs: Array, reverse: bool) -> Array:
    return hs[0] if reverse else hs[-1]


def _zero_padding(hs: Array, m: Array | None) -> Array:
    return hs if m is None else jnp.where(m, hs, jnp.zeros_like(hs))


def linear_recurrence(a: Array, b: Array, h0: Array, mask: Array | None = None,
                      reverse: bool = False) -> tuple[Array, Array]:
    """``h_t = a_t h_{t-1} + b_t`` for all t; returns ``(final h, hs [T, ...])``. Real or complex."""
    a = jnp.broadcast_to(a, b.shape)  # a may be time-invariant (the LRU's lambda)
    m = _time_mask(mask, b)
    if m is not None:
        a, b = jnp.where(m, a, jnp.ones_like(a)), jnp.where(m, b, jnp.zeros_like(b))

    def combine(first, second):
        a1, b1 = first
        a2, b2 = second
        return a1 * a2, a2 * b1 + b2

    prod_a, acc_b = jax.lax.associative_scan(combine, (a, b), reverse=reverse, axis=0)
    hs = prod_a * h0[None] + acc_b
    return _final(hs, reverse), _zero_padding(hs, m)


def log_linear_recurrence(log_a: Array, log_b: Array, h0: Array, mask: Array | None = None,
                          reverse: bool = False) -> tuple[Array, Array]:
    """``h_t = a_t h_{t-1} + b_t`` from ``log a_t`` and ``log b_t`` (a, b > 0); any real ``h0``."""
    m = _time_mask(mask, log_b)
    if m is not None:
        log_a = jnp.where(m, log_a, jnp.zeros_like(log_a))
        log_b = jnp.where(m, log_b, jnp.full_like(log_b, _LOG_ZERO))

    def combine(first, second):
        la1, lb1 = first
        la2, lb2 = second
        return la1 + la2, jnp.logaddexp(lb1 + la2, lb2)

    cum_la, cum_lb = jax.lax.associative_scan(combine, (log_a, log_b), reverse=reverse, axis=0)
    hs = jnp.exp(cum_la) * h0[None] + jnp.exp(cum_lb)
    return _final(hs, reverse), _zero_padding(hs, m)
