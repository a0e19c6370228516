"""Long short-term memory with a forget gate (Hochreiter & Schmidhuber 1997; Gers et al. 2000).

    [i, f, g, o] = x_t W_x + b + h_{t-1} W_h        fused: W_x [D, 4H], W_h [H, 4H], b [4H]
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

Gate order i, f, g, o as in flax's ``LSTMCell``, which this equals given the same weights. The forget
bias starts at ``forget_bias`` (1.0 by default, as Jozefowicz et al. 2015 recommend: it keeps the cell
remembering from the first step, and closes most of the gap to the GRU on their tasks).

``forget_bias="chrono"`` replaces the constant with the chrono initialisation of Tallec & Ollivier 2018
("Can recurrent neural networks warp time?", eq. 16) up to ``T_max = chrono_t_max`` (the config sets it
to the task's length): b_f ~ log(U(1, T_max - 1)) per unit and b_i = -b_f, which spreads the units'
characteristic forgetting times 1/(1 - sigmoid(b_f)) = 1 + exp(b_f) over 2..T_max instead of starting
every unit at the same 3.7 steps (forget_bias=1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell, affine, gate_blocks, initializer, make_cell


def lstm(
    hidden_size: int,
    forget_bias: float | str = 1.0,
    chrono_t_max: int | None = None,
    kernel_init: str = "glorot_uniform",
    recurrent_init: str = "orthogonal",
) -> Cell:
    """LSTM with forget gate. Params: ``w_x [D, 4H]``, ``w_h [H, 4H]``, ``b [4H]``; carry ``(c, h)``."""
    chrono = forget_bias == "chrono"
    if isinstance(forget_bias, str) and not chrono:
        raise ValueError(f"forget_bias={forget_bias!r} must be a number or 'chrono'")
    if chrono and (not isinstance(chrono_t_max, int) or isinstance(chrono_t_max, bool) or chrono_t_max < 3):
        raise ValueError(f"chrono_t_max={chrono_t_max!r} must be an integer >= 3 for forget_bias='chrono'")
    k_init, r_init = initializer(kernel_init), initializer(recurrent_init)
    H = hidden_size

    def init(key, input_dim):
        kx, kh = jax.random.split(key)
        if not chrono:
            b = jnp.zeros((4 * H,), jnp.float32).at[H : 2 * H].set(forget_bias)
        else:  # chrono: b_f ~ log U(1, T_max - 1), b_i = -b_f
            kb = jax.random.fold_in(key, 2)  # (the weights stay those of the constant-bias init)
            b_f = jnp.log(jax.random.uniform(kb, (H,), jnp.float32, 1.0, chrono_t_max - 1.0))
            b = jnp.concatenate([-b_f, b_f, jnp.zeros((2 * H,), jnp.float32)])
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
