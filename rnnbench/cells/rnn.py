"""The simple (Elman 1990) recurrent network: the baseline every gated cell is measured against.

    h_t = act(x_t W_x + b + h_{t-1} W_h)            x_t [B, D], h_t [B, H]

``act`` is tanh by default (the classic tanh RNN); ``relu`` with ``recurrent_init="identity"`` gives
the IRNN of Le et al. 2015.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell, affine, gate_blocks, initializer, make_cell

_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def rnn(
    hidden_size: int,
    activation: str = "tanh",
    kernel_init: str = "glorot_uniform",
    recurrent_init: str = "orthogonal",
) -> Cell:
    """Elman RNN. Params: ``w_x [D, H]``, ``w_h [H, H]``, ``b [H]``; carry: ``h [B, H]``."""
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

    return make_cell(name="rnn", hidden_size=hidden_size, init=init, initial_carry=initial_carry,
                     project_input=project_input, recurrence=recurrence)
