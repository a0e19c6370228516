"""Independently recurrent neural network (Li, Li, Cook, Zhu & Gao 2018, "IndRNN").

Each unit sees only its own past, through one recurrent weight (a Hadamard product, no matrix):

    h_t = act(x_t W_x + u * h_{t-1} + b)            W_x [D, H], u [H], b [H], act = ReLU

Because the recurrence is diagonal, dh_t/dh_{t-1} = diag(act'(.) u): the gradient over k steps scales
as u^k per unit, which the paper controls by bounding |u|. With ``recurrent_max`` set (the paper uses
2^(1/T) for the adding problem, so that u^T <= 2), the forward pass uses clip(u, -recurrent_max,
recurrent_max) (the parameter itself is unconstrained; the clip passes no gradient beyond the bound,
where the paper instead clips the weights after each update). u starts uniform in
[``recurrent_init_min``, ``recurrent_init_max``] (default [0, 1]: every unit starts with a
non-negative, non-exploding memory), W_x Glorot-uniform, b zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell, affine, initializer, make_cell

_ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}


def indrnn(
    hidden_size: int,
    activation: str = "relu",
    recurrent_init_min: float = 0.0,
    recurrent_init_max: float = 1.0,
    recurrent_max: float | None = None,
    kernel_init: str = "glorot_uniform",
) -> Cell:
    """IndRNN. Params: ``w_x [D, H]``, ``u [H]``, ``b [H]``; carry ``h [B, H]``."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not allowed; choose one of: {', '.join(_ACTIVATIONS)}")
    if not recurrent_init_min <= recurrent_init_max:
        raise ValueError(f"recurrent_init_min={recurrent_init_min} must be <= recurrent_init_max={recurrent_init_max}")
    if recurrent_max is not None and recurrent_max <= 0:
        raise ValueError(f"recurrent_max={recurrent_max} must be > 0 (or null for no bound)")
    act = _ACTIVATIONS[activation]
    k_init = initializer(kernel_init)
    H = hidden_size

    def init(key, input_dim):
        kx, ku = jax.random.split(key)
        return {
            "w_x": k_init(kx, (input_dim, H), jnp.float32),
            "u": jax.random.uniform(ku, (H,), jnp.float32, recurrent_init_min, recurrent_init_max),
            "b": jnp.zeros((H,), jnp.float32),
        }

    def initial_carry(batch_shape, dtype=jnp.float32):
        return jnp.zeros((*batch_shape, H), dtype)

    def project_input(params, x):
        return affine(x, params["w_x"], params["b"])

    def recurrence(params, h, gx):
        u = params["u"] if recurrent_max is None else jnp.clip(params["u"], -recurrent_max, recurrent_max)
        h = act(gx + u.reshape((1,) * (h.ndim - 1) + (H,)) * h)
        return h, h

    return make_cell(name="indrnn", hidden_size=H, init=init, initial_carry=initial_carry,
                     project_input=project_input, recurrence=recurrence)
