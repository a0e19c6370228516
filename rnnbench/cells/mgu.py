"""Minimal gated unit (Zhou, Wu, Zhang & Zhou 2016, "Minimal Gated Unit for Recurrent Neural Networks").

The GRU with its two gates merged into one forget gate f, which both resets the state inside the
candidate and interpolates (eq. 11 of the paper, rows x h):

    f_t  = sigmoid(x_t W_xf + h_{t-1} W_hf + b_f)
    h~_t = tanh(x_t W_xh + (f_t * h_{t-1}) W_hh + b_h)
    h_t  = (1 - f_t) * h_{t-1} + f_t * h~_t

Fused parameters: ``w_x [D, 2H]``, ``w_h [H, 2H]``, ``b [2H]`` (blocks f, h~). As in Cho's GRU the gate
multiplies the state before its projection, so the candidate needs a second, dependent matmul.
Initialisation as rnnbench's GRU: Glorot-uniform input blocks, orthogonal recurrent blocks, zero biases
(the paper does not prescribe one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell, affine, gate_blocks, initializer, make_cell


def mgu(
    hidden_size: int,
    kernel_init: str = "glorot_uniform",
    recurrent_init: str = "orthogonal",
) -> Cell:
    """MGU. Params: ``w_x [D, 2H]``, ``w_h [H, 2H]``, ``b [2H]``; carry ``h [B, H]``."""
    k_init, r_init = initializer(kernel_init), initializer(recurrent_init)
    H = hidden_size

    def init(key, input_dim):
        kx, kh = jax.random.split(key)
        return {
            "w_x": gate_blocks(k_init, kx, input_dim, H, 2),
            "w_h": gate_blocks(r_init, kh, H, H, 2),
            "b": jnp.zeros((2 * H,), jnp.float32),
        }

    def initial_carry(batch_shape, dtype=jnp.float32):
        return jnp.zeros((*batch_shape, H), dtype)

    def project_input(params, x):
        return affine(x, params["w_x"], params["b"])

    def forget(params, h, gx):
        return jax.nn.sigmoid(gx[..., :H] + h @ params["w_h"][:, :H])

    def recurrence(params, h, gx):
        f = forget(params, h, gx)
        candidate = jnp.tanh(gx[..., H:] + (f * h) @ params["w_h"][:, H:])
        h = (1.0 - f) * h + f * candidate
        return h, h

    def gates(params, h, gx):
        return {"forget": forget(params, h, gx)}

    return make_cell(name="mgu", hidden_size=H, init=init, initial_carry=initial_carry,
                     project_input=project_input, recurrence=recurrence, gates=gates)
