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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell, affine, gate_blocks, initializer, make_cell


def gru(
    hidden_size: int,
    reset_after: bool = True,
    kernel_init: str = "glorot_uniform",
    recurrent_init: str = "orthogonal",
) -> Cell:
    """GRU. Params: ``w_x [D, 3H]``, ``w_h [H, 3H]``, ``b [3H]`` (+ ``b_hn [H]`` if reset_after)."""
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

    return make_cell(name="gru", hidden_size=H, init=init, initial_carry=initial_carry,
                     project_input=project_input, recurrence=recurrence, gates=gates)
