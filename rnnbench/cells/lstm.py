"""Long short-term memory with a forget gate (Hochreiter & Schmidhuber 1997; Gers et al. 2000).

    [i, f, g, o] = x_t W_x + b + h_{t-1} W_h        fused: W_x [D, 4H], W_h [H, 4H], b [4H]
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

Gate order i, f, g, o as in flax's ``LSTMCell``, which this equals given the same weights. The forget
bias starts at ``forget_bias`` (1.0 by default, as Jozefowicz et al. 2015 recommend: it keeps the cell
remembering from the first step, and closes most of the gap to the GRU on their tasks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell, affine, gate_blocks, initializer, make_cell


def lstm(
    hidden_size: int,
    forget_bias: float = 1.0,
    kernel_init: str = "glorot_uniform",
    recurrent_init: str = "orthogonal",
) -> Cell:
    """LSTM with forget gate. Params: ``w_x [D, 4H]``, ``w_h [H, 4H]``, ``b [4H]``; carry ``(c, h)``."""
    k_init, r_init = initializer(kernel_init), initializer(recurrent_init)
    H = hidden_size

    def init(key, input_dim):
        kx, kh = jax.random.split(key)
        b = jnp.zeros((4 * H,), jnp.float32).at[H : 2 * H].set(forget_bias)
        return {
            "w_x": gate_blocks(k_init, kx, input_dim, H, 4),
            "w_h": gate_blocks(r_init, kh, H, H, 4),
            "b": b,
        }

    def initial_carry(batch_shape, dtype=jnp.float32):
        zeros = jnp.zeros((*batch_shape, H), dtype)
        return zeros, zeros

    def project_input(params, x):
        return affine(x, params["w_x"], params["b"])

    def activations(params, carry, gx):
        _, h = carry
        i, f, g, o = jnp.split(gx + h @ params["w_h"], 4, axis=-1)
        return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)

    def recurrence(params, carry, gx):
        i, f, g, o = activations(params, carry, gx)
        c = f * carry[0] + i * g
        h = o * jnp.tanh(c)
        return (c, h), h

    def gates(params, carry, gx):
        i, f, _, o = activations(params, carry, gx)
        return {"input": i, "forget": f, "output": o}

    return make_cell(name="lstm", hidden_size=H, init=init, initial_carry=initial_carry,
                     project_input=project_input, recurrence=recurrence, gates=gates)
