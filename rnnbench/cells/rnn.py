"""The simple (Elman 1990) recurrent network: the baseline every gated cell is measured against.

    h_t = act(x_t W_x + b + h_{t-1} W_h)            x_t [B, D], h_t [B, H]

``act`` is tanh by default (the classic tanh RNN); ``relu`` with ``recurrent_init="identity"`` gives
the IRNN of Le et al. 2015.

``backward="fused"`` runs the whole sequence through ``fused_rnn_sequence``, whose backward pass is
written by hand in cuDNN's structure (``cells/fused.py``): per step only the ``[B, H] x [H, H]`` matmul
of dL/dh_{t-1}, the weight gradients as single matmuls over all T*B rows after the reverse scan, and the
activation's derivative read off the saved outputs (1 - h^2 for tanh, [h > 0] for relu).
``backward="auto"`` picks it on CPU, where it measured faster than autodiff
(``python -m rnnbench.bench_backward``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell, affine, gate_blocks, initializer, make_cell
from rnnbench.cells.fused import (
    h_prev,
    hold,
    mask_cotangent,
    masked_outputs,
    pass_through,
    rows,
    scan_prefetched,
    use_fused_backward,
)

_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def rnn(
    hidden_size: int,
    activation: str = "tanh",
    kernel_init: str = "glorot_uniform",
    recurrent_init: str = "orthogonal",
    backward: str = "auto",
) -> Cell:
    """Elman RNN. Params: ``w_x [D, H]``, ``w_h [H, H]``, ``b [H]``; carry: ``h [B, H]``.

    ``backward``: ``"fused"`` (a hand-written backward pass, ``fused_rnn_sequence``), ``"autodiff"``, or
    ``"auto"``: fused on CPU, autodiff on GPU/TPU (``use_fused_backward``).
    """
    fused = use_fused_backward(backward)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not allowed; choose one of: {', '.join(_ACTIVATIONS)}")
    act = _ACTIVATIONS[activation]
    k_init, r_init = initializer(kernel_init), initializer(recurrent_init)

    def init(key, input_dim):
        kx, kh = jax.random.split(key)
        return {
            "w_x": gate_blocks(k_init, kx, input_dim, hidden_size, 1),
            "w_h": gate_blocks(r_init, kh, hidden_size, hidden_size, 1),
            "b": jnp.zeros((hidden_size,), jnp.float32),
        }

    def initial_carry(batch_shape, dtype=jnp.float32):
        return jnp.zeros((*batch_shape, hidden_size), dtype)

    def project_input(params, x):
        return affine(x, params["w_x"], params["b"])

    def recurrence(params, h, gx):
        h = act(gx + h @ params["w_h"])
        return h, h

    def sequence(params, h, xs, mask=None, reverse=False):
        return fused_rnn_sequence(params["w_x"], params["b"], params["w_h"], h, xs, mask, reverse, activation)

    return make_cell(name="rnn", hidden_size=hidden_size, init=init, initial_carry=initial_carry,
                     project_input=project_input, recurrence=recurrence, sequence=sequence if fused else None)


# --- the fused sequence: a hand-written backward (cuDNN's structure) -------------------------------


def _derivative(activation, h):
    """act'(a) from h = act(a): 1 - h^2 for tanh, [h > 0] for relu (0 at a = 0, as jax.nn.relu's)."""
    return 1.0 - h * h if activation == "tanh" else (h > 0).astype(h.dtype)


def _forward_scan(w_x, b, w_h, h0, xs, mask, reverse, activation):
    act = _ACTIVATIONS[activation]

    def body(h, step_in):
        x_t, m_t = step_in
        h_new = hold(m_t, act(affine(x_t, w_x, b) + h @ w_h), h)
        return h_new, h_new

    return scan_prefetched(body, h0, (xs, mask), reverse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def fused_rnn_sequence(w_x, b, w_h, h0, xs, mask, reverse=False, activation="tanh"):
    """The Elman RNN over a whole sequence with a hand-written backward pass (cuDNN's structure).

    ``xs [T, B, D]`` (time-major), ``mask [T, B]`` or None, ``h0 [B, H]``. Returns ``(h_T, hs [T, B, H])``
    with ``scan.py``'s masking rule and ``reverse``, equal to scanning ``rnn(...).step``. The VJP is a
    reverse ``lax.scan`` of the chain rule, with dh = dL/dh_t (from the output and from step t+1):

        da = dh act'(a_t)          (a_t = x_t W_x + b + h_{t-1} W_h, act' read off h_t)
        dL/dh_{t-1} = da W_h^T

    and after it, over all T*B rows at once: ``dW_h = h_{t-1}^T da``, ``dW_x = x^T da``, ``db = sum da``
    and ``dL/dx = da W_x^T``.
    """
    h, hs = _forward_scan(w_x, b, w_h, h0, xs, mask, reverse, activation)
    return h, masked_outputs(hs, mask)


def _fused_fwd(w_x, b, w_h, h0, xs, mask, reverse, activation):
    h, hs = _forward_scan(w_x, b, w_h, h0, xs, mask, reverse, activation)
    return (h, masked_outputs(hs, mask)), (w_x, w_h, h0, xs, mask, hs)


def _fused_bwd(reverse, activation, residuals, cotangents):
    w_x, w_h, h0, xs, mask, hs = residuals
    dh_T, dys = cotangents
    w_h_t = w_h.T

    def body(dh, step_in):
        h_t, dy_t, m_t = step_in
        (dh_new,) = mask_cotangent(m_t, dh + dy_t)
        da = dh_new * _derivative(activation, h_t)
        return pass_through(m_t, da @ w_h_t, dh), da

    dh0, da = scan_prefetched(body, dh_T, (hs, dys, mask), not reverse)
    da = rows(da)
    return (rows(xs).T @ da, jnp.sum(da, axis=0), rows(h_prev(h0, hs, reverse)).T @ da, dh0,
            (da @ w_x.T).reshape(xs.shape), None)


fused_rnn_sequence.defvjp(_fused_fwd, _fused_bwd)
