"""MUT1, MUT2 and MUT3: the three best architectures of Jozefowicz, Zaremba & Sutskever 2015's search
("An Empirical Exploration of Recurrent Network Architectures", section 3), GRU-like cells evolved
from the GRU. In the paper's notation (h_{t+1} the new state, x_t the input):

MUT1:  z = sigmoid(W_xz x_t + b_z)
       r = sigmoid(W_xr x_t + W_hr h_t + b_r)
       h_{t+1} = tanh(W_hh (r * h_t) + tanh(x_t) + b_h) * z + h_t * (1 - z)

MUT2:  z = sigmoid(W_xz x_t + W_hz h_t + b_z)
       r = sigmoid(x_t + W_hr h_t + b_r)
       h_{t+1} = tanh(W_hh (r * h_t) + W_xh x_t + b_h) * z + h_t * (1 - z)

MUT3:  z = sigmoid(W_xz x_t + W_hz tanh(h_t) + b_z)
       r = sigmoid(W_xr x_t + W_hr h_t + b_r)
       h_{t+1} = tanh(W_hh (r * h_t) + W_xh x_t + b_h) * z + h_t * (1 - z)

MUT1 and MUT2 add the raw input to an H-wide pre-activation (``tanh(x_t)``, ``x_t``), which needs
D == H: in the paper x_t is a learned embedding of width H. rnnbench does the same: when the input
width D differs from H, x_t there is ``x_t E`` with a learned ``E [D, H]`` (Glorot-uniform, part of the
fused input matrix); when D == H it is x_t itself and there is no E.

Fused parameters (row vectors, ``x W``): ``w_x [D, 3H]`` (blocks z, r, h~; for MUT1 the h~ block is E
and for MUT2 the r block is E, absent when D == H), ``w_h [H, nH]`` (MUT1: blocks r, h~; MUT2 and
MUT3: z, r, h~), ``b [3H]``. Initialisation as the GRU's: Glorot-uniform input blocks, orthogonal
recurrent blocks, zero biases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell, gate_blocks, initializer, make_cell

VARIANTS = (1, 2, 3)


def mut(
    hidden_size: int,
    variant: int = 1,
    kernel_init: str = "glorot_uniform",
    recurrent_init: str = "orthogonal",
) -> Cell:
    """MUT1/2/3. Carry ``h [B, H]``; see the module docstring for the parameters."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not allowed; choose one of: 1, 2, 3")
    k_init, r_init = initializer(kernel_init), initializer(recurrent_init)
    H = hidden_size
    n_rec = 2 if variant == 1 else 3
    raw_block = {1: 2, 2: 1, 3: None}[variant]  # the input block that is raw x_t (or its embedding)

    def init(key, input_dim):
        kx, kh, ke = jax.random.split(key, 3)
        w_x = gate_blocks(k_init, kx, input_dim, H, 3)
        if raw_block is not None and input_dim == H:
            # x_t itself: no embedding, so the block is the identity and is not a parameter
            w_x = jnp.concatenate([w_x[:, : raw_block * H], w_x[:, (raw_block + 1) * H :]], axis=-1)
        elif raw_block is not None:
            w_x = w_x.at[:, raw_block * H : (raw_block + 1) * H].set(k_init(ke, (input_dim, H), jnp.float32))
        return {"w_x": w_x, "w_h": gate_blocks(r_init, kh, H, H, n_rec), "b": jnp.zeros((3 * H,), jnp.float32)}

    def initial_carry(batch_shape, dtype=jnp.float32):
        return jnp.zeros((*batch_shape, H), dtype)

    def project_input(params, x):
        xw = x @ params["w_x"]
        if raw_block is not None and xw.shape[-1] == 2 * H:  # D == H: x_t itself is the raw block
            xw = jnp.concatenate([xw[..., : raw_block * H], x, xw[..., raw_block * H :]], axis=-1)
        if variant == 1:  # tanh(x_t) + b_h: the bias comes after the tanh
            xw = jnp.concatenate([xw[..., : 2 * H], jnp.tanh(xw[..., 2 * H :])], axis=-1)
        return xw + params["b"].reshape((1,) * (xw.ndim - 1) + (3 * H,))

    def activations(params, h, gx):
        gx_z, gx_r, _ = jnp.split(gx, 3, axis=-1)
        w_h = params["w_h"]
        if variant == 1:
            z = jax.nn.sigmoid(gx_z)
            r = jax.nn.sigmoid(gx_r + h @ w_h[:, :H])
        else:
            z = jax.nn.sigmoid(gx_z + (h if variant == 2 else jnp.tanh(h)) @ w_h[:, :H])
            r = jax.nn.sigmoid(gx_r + h @ w_h[:, H : 2 * H])
        return z, r

    def recurrence(params, h, gx):
        z, r = activations(params, h, gx)
        candidate = jnp.tanh((r * h) @ params["w_h"][:, -H:] + gx[..., 2 * H :])
        h = candidate * z + h * (1.0 - z)
        return h, h

    def gates(params, h, gx):
        z, r = activations(params, h, gx)
        return {"update": z, "reset": r}

    return make_cell(name=f"mut{variant}", hidden_size=H, init=init, initial_carry=initial_carry,
                     project_input=project_input, recurrence=recurrence, gates=gates)
