"""JANET, "just another network" (van der Westhuizen & Lasenby 2018, "The unreasonable effectiveness
of the forget gate"): an LSTM with only its forget gate, whose complement also gates the input.

    s_t  = x_t W_xf + h_{t-1} W_hf + b_f
    c~_t = tanh(x_t W_xc + h_{t-1} W_hc + b_c)
    c_t  = sigmoid(s_t) * c_{t-1} + (1 - sigmoid(s_t - beta)) * c~_t
    h_t  = c_t

The shift beta (1 by default, as the paper) lets a little more input in than the forget gate lets go.
Fused parameters ``w_x [D, 2H]``, ``w_h [H, 2H]``, ``b [2H]`` (blocks f, c~). The paper initialises the
forget bias with the chrono initialiser of Tallec & Ollivier 2018, b_f ~ log(U(1, T_max - 1)), which
spreads the units' memory time scales up to the longest dependency T_max; ``chrono_t_max`` is T_max
(the config sets it to the task's sequence length), and with ``chrono_t_max=null`` b_f is the constant
``forget_bias``. Glorot-uniform input and orthogonal recurrent blocks, as the paper's Keras code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell, affine, gate_blocks, initializer, make_cell


def janet(
    hidden_size: int,
    beta: float = 1.0,
    chrono_t_max: int | None = None,
    forget_bias: float = 1.0,
    kernel_init: str = "glorot_uniform",
    recurrent_init: str = "orthogonal",
) -> Cell:
    """JANET. Params: ``w_x [D, 2H]``, ``w_h [H, 2H]``, ``b [2H]``; carry ``c [B, H]`` (= h)."""
    if chrono_t_max is not None and (isinstance(chrono_t_max, bool) or chrono_t_max < 3):
        raise ValueError(f"chrono_t_max={chrono_t_max!r} must be an integer >= 3 (or null for a constant forget_bias)")
    k_init, r_init = initializer(kernel_init), initializer(recurrent_init)
    H = hidden_size

    def init(key, input_dim):
        kx, kh, kb = jax.random.split(key, 3)
        if chrono_t_max is None:
            b_f = jnp.full((H,), forget_bias, jnp.float32)
        else:
            b_f = jnp.log(jax.random.uniform(kb, (H,), jnp.float32, 1.0, chrono_t_max - 1.0))
        return {
            "w_x": gate_blocks(k_init, kx, input_dim, H, 2),
            "w_h": gate_blocks(r_init, kh, H, H, 2),
            "b": jnp.concatenate([b_f, jnp.zeros((H,), jnp.float32)]),
        }

    def initial_carry(batch_shape, dtype=jnp.float32):
        return jnp.zeros((*batch_shape, H), dtype)

    def project_input(params, x):
        return affine(x, params["w_x"], params["b"])

    def recurrence(params, c, gx):
        s, pre_c = jnp.split(gx + c @ params["w_h"], 2, axis=-1)
        c = jax.nn.sigmoid(s) * c + (1.0 - jax.nn.sigmoid(s - beta)) * jnp.tanh(pre_c)
        return c, c

    def gates(params, c, gx):
        return {"forget": jax.nn.sigmoid(gx[..., :H] + c @ params["w_h"][:, :H])}

    return make_cell(name="janet", hidden_size=H, init=init, initial_carry=initial_carry,
                     project_input=project_input, recurrence=recurrence, gates=gates)
