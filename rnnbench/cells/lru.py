"""Linear recurrent unit (Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu & De 2023, "Resurrecting
Recurrent Neural Networks for Long Sequences").

A complex diagonal linear recurrence, stable by construction, read out by a real linear map:

    lambda  = exp(-exp(nu_log) + i exp(theta_log))            |lambda| < 1 for any parameters
    gamma   = exp(gamma_log)                                   normalisation, sqrt(1 - |lambda|^2) at init
    x_t     = lambda * x_{t-1} + gamma * (u_t B)               x_t in C^N, u_t [D], B [D, N] complex
    y_t     = act(Re(x_t C) + u_t D)                           C [N, H] complex, D [D, H] real

The recurrence is linear, so the whole sequence also runs as one ``associative_scan``
(``mode="parallel"``; ``"sequential"`` steps through it; ``"auto"``, the default, is sequential on CPU,
where it measured faster, and parallel on GPU/TPU). Initialisation as the paper (Appendix A):
|lambda| uniform on the ring [r_min, r_max] (defaults 0.9 and 0.999, the paper's long-range setting),
phase uniform in [0, max_phase]; B and C complex Glorot-like (real and imaginary parts
N(0, 1/(2D)) and N(0, 1/N)).

Deviations from the paper, because here the LRU is a cell in a stack with a linear readout rather
than a block with an MLP: the skip term D is a dense [D, H] matrix (N(0, 1/D)) since the input and
output widths differ (the paper's D is diagonal, widths equal), and the output goes through an
elementwise ``activation`` (exact, erf GELU by default; ``none`` gives the paper's linear layer), which stands in
for the paper's MLP/GLU after the recurrence.

The state x_t is kept as real ``[B, 2N]`` (real parts, then imaginary parts): the carry, on which the
gradient diagnostics read dL/dx_t, is real like every other cell's. The output y_t is not the state,
so the cell has ``emit``. N = ``state_size`` (default: H).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell, check_choice, check_positive_int, make_cell, use_parallel
from rnnbench.cells.linear_scan import linear_recurrence

_ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "none": lambda v: v,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
}


def lru(
    hidden_size: int,
    state_size: int | None = None,
    r_min: float = 0.9,
    r_max: float = 0.999,
    max_phase: float = 2 * math.pi,
    activation: str = "gelu",
    mode: str = "auto",
) -> Cell:
    """LRU. Params: ``nu_log, theta_log, gamma_log [N]``, ``b_re, b_im [D, N]``, ``c_re, c_im [N, H]``,
    ``d [D, H]``; carry ``[B, 2N]`` (Re x, Im x)."""
    check_positive_int("hidden_size", hidden_size)
    use_parallel(mode)  # checks mode
    check_choice("activation", activation, tuple(_ACTIVATIONS))
    if not 0.0 <= r_min < r_max <= 1.0:
        raise ValueError(f"r_min={r_min}, r_max={r_max}: need 0 <= r_min < r_max <= 1")
    if not max_phase > 0:
        raise ValueError(f"max_phase={max_phase} must be > 0")
    H = hidden_size
    N = H if state_size is None else state_size
    check_positive_int("state_size", N)
    act = _ACTIVATIONS[activation]

    def init(key, input_dim):
        k1, k2, kb_re, kb_im, kc_re, kc_im, kd = jax.random.split(key, 7)
        u1 = jax.random.uniform(k1, (N,), jnp.float32)
        u2 = jax.random.uniform(k2, (N,), jnp.float32)
        nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        theta_log = jnp.log(max_phase * u2)
        modulus = jnp.exp(-jnp.exp(nu_log))
        normal = jax.random.normal
        return {
            "nu_log": nu_log,
            "theta_log": theta_log,
            "gamma_log": jnp.log(jnp.sqrt(1.0 - jnp.square(modulus))),
            "b_re": normal(kb_re, (input_dim, N), jnp.float32) / math.sqrt(2 * input_dim),
            "b_im": normal(kb_im, (input_dim, N), jnp.float32) / math.sqrt(2 * input_dim),
            "c_re": normal(kc_re, (N, H), jnp.float32) / math.sqrt(N),
            "c_im": normal(kc_im, (N, H), jnp.float32) / math.sqrt(N),
            "d": normal(kd, (input_dim, H), jnp.float32) / math.sqrt(input_dim),
        }

    def initial_carry(batch_shape, dtype=jnp.float32):
        return jnp.zeros((*batch_shape, 2 * N), dtype)

    def lam(params):
        return jnp.exp(-jnp.exp(params["nu_log"]) + 1j * jnp.exp(params["theta_log"]))

    def project_input(params, x):
        """``[Re(gamma * u B), Im(gamma * u B), u D]`` -> ``[..., 2N + H]``."""
        gamma = jnp.exp(params["gamma_log"])
        gamma = gamma.reshape(1, N)
        return x @ jnp.concatenate([params["b_re"] * gamma, params["b_im"] * gamma, params["d"]], axis=-1)

    def emit(params, state, gx):
        w_out = jnp.concatenate([params["c_re"], -params["c_im"]], axis=0)  # Re(x C) = Re x C_re - Im x C_im
        return act(state @ w_out + gx[..., 2 * N :])

    def recurrence(params, state, gx):
        x = jax.lax.complex(state[..., :N], state[..., N:])
        x = lam(params).reshape((1,) * (x.ndim - 1) + (N,)) * x + jax.lax.complex(gx[..., :N], gx[..., N : 2 * N])
        state = jnp.concatenate([jnp.real(x), jnp.imag(x)], axis=-1)
        return state, emit(params, state, gx)

    def parallel(params, state0, gx, mask=None, reverse=False):
        bu = jax.lax.complex(gx[..., :N], gx[..., N : 2 * N])  # [T, B, N]
        x0 = jax.lax.complex(state0[..., :N], state0[..., N:])
        a = jnp.broadcast_to(lam(params), bu.shape)
        x_final, xs = linear_recurrence(a, bu, x0, mask, reverse)
        states = jnp.concatenate([jnp.real(xs), jnp.imag(xs)], axis=-1)
        ys = emit(params, states, gx)
        if mask is not None:
            ys = jnp.where(mask[..., None], ys, jnp.zeros_like(ys))
        return jnp.concatenate([jnp.real(x_final), jnp.imag(x_final)], axis=-1), ys

    return make_cell(name="lru", hidden_size=H, init=init, initial_carry=initial_carry,
                     project_input=project_input, recurrence=recurrence, emit=emit,
                     parallel=parallel if use_parallel(mode) else None)
