"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): gates that read only x_t.

Dropping h_{t-1} from the gates and the candidate makes the cell linear in its state, so a sequence
runs in parallel (``linear_scan.py``). With ``log_space=True`` (the paper's log-space versions, the
default) the candidate goes through g(v) = v + 1/2 for v >= 0, sigmoid(v) for v < 0, which keeps it
positive so the scan can run on logarithms; ``log_space=False`` is the paper's plain version (the
candidate is the linear map itself, the scan runs on the values).

minGRU:   [k_z, k_h] = x_t W_x + b                     W_x [D, 2H], b [2H]
          z_t = sigmoid(k_z),   h~_t = g(k_h)
          h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

minLSTM:  [k_f, k_i, k_h] = x_t W_x + b                W_x [D, 3H], b [3H]
          f_t = sigmoid(k_f),  i_t = sigmoid(k_i),  h~_t = g(k_h)
          f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)       (time-independent scale)
          h_t = f'_t * h_{t-1} + i'_t * h~_t

In log space, log(1 - z) = -softplus(k_z), log z = -softplus(-k_z); for minLSTM, with
d = softplus(-k_f) - softplus(-k_i), log f' = -softplus(d) and log i' = -softplus(-d) (the paper's
Listing 4). ``mode="parallel"`` gives the cell its ``parallel`` form; ``"sequential"`` runs the same
equations step by step; ``"auto"`` (default) is sequential on CPU, where the parallel scan measured
2-10x slower (``make bench-parallel``), and parallel on GPU/TPU. The two agree to float tolerance for
any initial state (tested).
Initialisation: Glorot-uniform W_x, zero b (the paper's code uses PyTorch's ``nn.Linear`` default);
minLSTM's forget block of b starts at ``forget_bias`` (0 by default, as in the paper).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell, affine, gate_blocks, initializer, make_cell, use_parallel
from rnnbench.cells.linear_scan import linear_recurrence, log_linear_recurrence


def g(v):
    """The paper's positive candidate activation: v + 1/2 for v >= 0, sigmoid(v) below (continuous at 0)."""
    return jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v))


def log_g(v):
    """log g(v), computed without forming g(v) for v < 0 (log sigmoid = -softplus(-v))."""
    return jnp.where(v >= 0, jnp.log(jax.nn.relu(v) + 0.5), -jax.nn.softplus(-v))


def _common(hidden_size, n_blocks, kernel_init, mode, first_bias=0.0):
    """init, initial_carry, project_input shared by both; block 0 of the bias starts at ``first_bias``."""
    k_init = initializer(kernel_init)
    H = hidden_size

    def init(key, input_dim):
        b = jnp.zeros((n_blocks * H,), jnp.float32).at[:H].set(first_bias)
        return {"w_x": gate_blocks(k_init, key, input_dim, H, n_blocks), "b": b}

    def initial_carry(batch_shape, dtype=jnp.float32):
        return jnp.zeros((*batch_shape, H), dtype)

    def project_input(params, x):
        return affine(x, params["w_x"], params["b"])

    return init, initial_carry, project_input


def mingru(
    hidden_size: int,
    log_space: bool = True,
    mode: str = "auto",
    kernel_init: str = "glorot_uniform",
) -> Cell:
    """minGRU. Params: ``w_x [D, 2H]``, ``b [2H]`` (blocks z, h~); carry ``h [B, H]``."""
    H = hidden_size
    init, initial_carry, project_input = _common(H, 2, kernel_init, mode)
    candidate = g if log_space else (lambda v: v)

    def recurrence(params, h, gx):
        k_z, k_h = jnp.split(gx, 2, axis=-1)
        z = jax.nn.sigmoid(k_z)
        h = (1.0 - z) * h + z * candidate(k_h)
        return h, h

    def gates(params, h, gx):
        return {"update": jax.nn.sigmoid(gx[..., :H])}

    def parallel(params, h0, gx, mask=None, reverse=False):
        k_z, k_h = jnp.split(gx, 2, axis=-1)
        if log_space:
            return log_linear_recurrence(-jax.nn.softplus(k_z), -jax.nn.softplus(-k_z) + log_g(k_h), h0, mask,
                                         reverse)
        z = jax.nn.sigmoid(k_z)
        return linear_recurrence(1.0 - z, z * k_h, h0, mask, reverse)

    return make_cell(name="mingru", hidden_size=H, init=init, initial_carry=initial_carry,
                     project_input=project_input, recurrence=recurrence, gates=gates,
                     parallel=parallel if use_parallel(mode) else None)


def minlstm(
    hidden_size: int,
    log_space: bool = True,
    mode: str = "auto",
    forget_bias: float = 0.0,
    kernel_init: str = "glorot_uniform",
) -> Cell:
    """minLSTM. Params: ``w_x [D, 3H]``, ``b [3H]`` (blocks f, i, h~); carry ``h [B, H]``."""
    H = hidden_size
    init, initial_carry, project_input = _common(H, 3, kernel_init, mode, forget_bias)
    candidate = g if log_space else (lambda v: v)

    def normalised_gates(gx):
        f, i = jax.nn.sigmoid(gx[..., :H]), jax.nn.sigmoid(gx[..., H : 2 * H])
        return f / (f + i), i / (f + i)

    def recurrence(params, h, gx):
        f, i = normalised_gates(gx)
        h = f * h + i * candidate(gx[..., 2 * H :])
        return h, h

    def gates(params, h, gx):
        f, i = normalised_gates(gx)
        return {"forget": f, "input": i}

    def parallel(params, h0, gx, mask=None, reverse=False):
        k_f, k_i, k_h = jnp.split(gx, 3, axis=-1)
        if log_space:
            d = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
            return log_linear_recurrence(-jax.nn.softplus(d), -jax.nn.softplus(-d) + log_g(k_h), h0, mask, reverse)
        f, i = normalised_gates(gx)
        return linear_recurrence(f, i * k_h, h0, mask, reverse)

    return make_cell(name="minlstm", hidden_size=H, init=init, initial_carry=initial_carry,
                     project_input=project_input, recurrence=recurrence, gates=gates,
                     parallel=parallel if use_parallel(mode) else None)
