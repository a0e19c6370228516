"""Gated recurrent unit (Cho et al. 2014) in both published forms.

``reset_after=True`` (default; cuDNN, PyTorch, Keras v3 and flax's ``GRUCell``): the reset gate
multiplies the recurrent projection, so all three recurrent matmuls fuse into one ``h W_h``:

    [r, z, n_x] = x_t W_x + b,      [r_h, z_h, n_h] = h_{t-1} W_h       W_x [D, 3H], W_h [H, 3H]
    r = sigmoid(r + r_h),  z = sigmoid(z + z_h)
    n = tanh(n_x + r * (n_h + b_hn))
    h_t = (1 - z) * n + z * h_{t-1}

``reset_after=False`` (Cho et al. 2014): the reset gate multiplies the state before its projection,
so the candidate needs a second, dependent matmul:

    n = tanh(n_x + (r * h_{t-1}) W_hn)     (no b_hn: b already holds the candidate's bias)

Both interpolate with z on the old state, as flax and PyTorch do.

``backward="fused"`` (reset_after only) runs the whole sequence through ``fused_gru_sequence``, whose
backward pass is written by hand in cuDNN's structure (``cells/fused.py``): per step only the
``[B, 3H] x [3H, H]`` matmul of dL/dh_{t-1}, the weight gradients as single matmuls over all T*B rows
after the reverse scan. ``backward="auto"`` picks it on CPU, where it measured faster than autodiff
(``python -m rnnbench.bench_backward``), and for ``reset_after=True``.
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


def gru(
    hidden_size: int,
    reset_after: bool = True,
    kernel_init: str = "glorot_uniform",
    recurrent_init: str = "orthogonal",
    backward: str = "auto",
) -> Cell:
    """GRU. Params: ``w_x [D, 3H]``, ``w_h [H, 3H]``, ``b [3H]`` (+ ``b_hn [H]`` if reset_after).

    ``backward``: ``"fused"`` (a hand-written backward pass, ``fused_gru_sequence``; reset_after only),
    ``"autodiff"``, or ``"auto"``: fused on CPU when reset_after, else autodiff (``use_fused_backward``).
    """
    fused = use_fused_backward(backward)
    if backward == "fused" and not reset_after:
        raise ValueError("backward='fused' needs reset_after=True (the Cho et al. form has a second, dependent "
                         "recurrent matmul); use backward='auto' or 'autodiff'")
    fused = fused and reset_after
    k_init, r_init = initializer(kernel_init), initializer(recurrent_init)
    H = hidden_size

    def init(key, input_dim):
        kx, kh = jax.random.split(key)
        params = {
            "w_x": gate_blocks(k_init, kx, input_dim, H, 3),
            "w_h": gate_blocks(r_init, kh, H, H, 3),
            "b": jnp.zeros((3 * H,), jnp.float32),
        }
        if reset_after:
            params["b_hn"] = jnp.zeros((H,), jnp.float32)
        return params

    def initial_carry(batch_shape, dtype=jnp.float32):
        return jnp.zeros((*batch_shape, H), dtype)

    def project_input(params, x):
        return affine(x, params["w_x"], params["b"])

    def activations(params, h, gx):
        """(r, z, n): reset gate, update gate, candidate state."""
        w_h = params["w_h"]
        if reset_after:
            b_hn = params["b_hn"].reshape((1,) * (h.ndim - 1) + (H,))
            r_h, z_h, n_h = jnp.split(h @ w_h, 3, axis=-1)
            r_x, z_x, n_x = jnp.split(gx, 3, axis=-1)
            r = jax.nn.sigmoid(r_x + r_h)
            z = jax.nn.sigmoid(z_x + z_h)
            n = jnp.tanh(n_x + r * (n_h + b_hn))
        else:
            rz = jax.nn.sigmoid(gx[..., : 2 * H] + h @ w_h[:, : 2 * H])
            r, z = rz[..., :H], rz[..., H:]
            n = jnp.tanh(gx[..., 2 * H :] + (r * h) @ w_h[:, 2 * H :])
        return r, z, n

    def recurrence(params, h, gx):
        _, z, n = activations(params, h, gx)
        h = (1.0 - z) * n + z * h
        return h, h

    def gates(params, h, gx):
        r, z, _ = activations(params, h, gx)
        return {"reset": r, "update": z}

    def sequence(params, h, xs, mask=None, reverse=False):
        return fused_gru_sequence(params["w_x"], params["b"], params["w_h"], params["b_hn"], h, xs, mask, reverse)

    return make_cell(name="gru", hidden_size=H, init=init, initial_carry=initial_carry,
                     project_input=project_input, recurrence=recurrence, gates=gates,
                     sequence=sequence if fused else None)


# --- the fused sequence (reset_after): a hand-written backward (cuDNN's structure) ------------------


def _forward_scan(w_x, b, w_h, b_hn, h0, xs, mask, reverse):
    """The GRU over ``xs [T, B, D]``: ``(h_T, ((r, z, n, q) [T, B, H] each, hs [T, B, H]))`` with
    ``q = h_{t-1} W_hn + b_hn``, what the backward reads; ``hs`` is the carried state (held on padding)."""
    H = h0.shape[-1]
    b_hn = b_hn.reshape(1, H)

    def body(h, step_in):
        x_t, m_t = step_in
        gx, hw = affine(x_t, w_x, b), h @ w_h
        rz = jax.nn.sigmoid(gx[:, : 2 * H] + hw[:, : 2 * H])
        r, z = rz[:, :H], rz[:, H:]
        q = hw[:, 2 * H :] + b_hn
        n = jnp.tanh(gx[:, 2 * H :] + r * q)
        h_new = hold(m_t, (1.0 - z) * n + z * h, h)
        return h_new, ((r, z, n, q), h_new)

    return scan_prefetched(body, h0, (xs, mask), reverse)


def _backward_scan(w_h, dh_T, saved, hp, dys, mask, reverse):
    """The reverse scan of the chain rule: ``(dh0, (dhw [T, B, 3H], dn_pre [T, B, H]))``, the gradients
    by ``h_{t-1} W_h`` and by the candidate's pre-activation (the n block of ``x_t W_x + b``)."""
    w_h_t = w_h.T

    def body(dh, step_in):
        (r, z, n, q), h_p, dy_t, m_t = step_in
        (dh_new,) = mask_cotangent(m_t, dh + dy_t)
        dn_pre = dh_new * (1.0 - z) * (1.0 - n * n)
        dhw = jnp.concatenate([dn_pre * q * r * (1.0 - r), dh_new * (h_p - n) * z * (1.0 - z), dn_pre * r], axis=-1)
        dh_prev = pass_through(m_t, dhw @ w_h_t + dh_new * z, dh)
        return dh_prev, (dhw, dn_pre)

    return scan_prefetched(body, dh_T, (saved, hp, dys, mask), not reverse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def fused_gru_sequence(w_x, b, w_h, b_hn, h0, xs, mask, reverse=False):
    """The GRU (reset_after) over a whole sequence with a hand-written backward pass (cuDNN's structure).

    ``xs [T, B, D]`` (time-major), ``mask [T, B]`` or None, ``h0 [B, H]``. Returns ``(h_T, hs [T, B, H])``
    with ``scan.py``'s masking rule and ``reverse``, equal to scanning ``gru(...).step``. The VJP is a
    reverse ``lax.scan`` of the chain rule, with dh = dL/dh_t (from the output and from step t+1):

        dn' = dh (1 - z)(1 - n^2)                      (n' = n_x + r q, the candidate's pre-activation)
        d(h W_h) = [dn' q r(1 - r),  dh (h_{t-1} - n) z(1 - z),  dn' r]
        d(x W_x + b) = [the same r and z blocks,  dn']
        dL/dh_{t-1} = d(h W_h) W_h^T + dh z

    and after it, over all T*B rows at once: ``dW_h = h_{t-1}^T d(h W_h)``, ``db_hn`` = the sum of its
    n block, ``dW_x = x^T d(x W_x + b)``, ``db`` its sum and ``dL/dx = d(x W_x + b) W_x^T``.
    """
    h, (_, hs) = _forward_scan(w_x, b, w_h, b_hn, h0, xs, mask, reverse)
    return h, masked_outputs(hs, mask)


def _fused_fwd(w_x, b, w_h, b_hn, h0, xs, mask, reverse):
    h, (saved, hs) = _forward_scan(w_x, b, w_h, b_hn, h0, xs, mask, reverse)
    return (h, masked_outputs(hs, mask)), (w_x, w_h, h0, xs, mask, saved, hs)


def _fused_bwd(reverse, residuals, cotangents):
    w_x, w_h, h0, xs, mask, saved, hs = residuals
    dh_T, dys = cotangents
    H = h0.shape[-1]
    hp = h_prev(h0, hs, reverse)
    dh0, (dhw, dn_pre) = _backward_scan(w_h, dh_T, saved, hp, dys, mask, reverse)
    dhw = rows(dhw)
    dgx = jnp.concatenate([dhw[:, : 2 * H], rows(dn_pre)], axis=-1)
    return (rows(xs).T @ dgx, jnp.sum(dgx, axis=0), rows(hp).T @ dhw, jnp.sum(dhw[:, 2 * H :], axis=0), dh0,
            (dgx @ w_x.T).reshape(xs.shape), None)


fused_gru_sequence.defvjp(_fused_fwd, _fused_bwd)
