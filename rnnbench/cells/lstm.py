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

``backward="fused"`` runs the whole sequence through ``fused_lstm_sequence``, whose backward pass is
written by hand in cuDNN's structure: a reverse scan with only the dL/dh_{t-1} matmul per step, the
activated gates kept from the forward pass, and the weight gradients as one matmul over all T*B rows
after it. A training step measured 1.17-1.26x (S), 1.14-1.16x (L) and 1.11x (W) autodiff's speed on
the 2-core CPU, in two runs on a loaded machine (``python -m rnnbench.bench_lstm_backward``; keeping
only the states and recomputing the gates measured 0.79-0.94x), so ``backward="auto"`` picks it on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell, affine, gate_blocks, initializer, make_cell
from rnnbench.cells.fused import (
    h_prev,
    hold,
    mask_cotangent,
    masked_outputs,
    pass_through,
    rows,
    scan_prefetched,
    use_fused_backward,
)


def lstm(
    hidden_size: int,
    forget_bias: float | str = 1.0,
    chrono_t_max: int | None = None,
    kernel_init: str = "glorot_uniform",
    recurrent_init: str = "orthogonal",
    backward: str = "auto",
) -> Cell:
    """LSTM with forget gate. Params: ``w_x [D, 4H]``, ``w_h [H, 4H]``, ``b [4H]``; carry ``(c, h)``.

    ``backward="fused"`` gives the cell a ``sequence`` form, ``fused_lstm_sequence`` (a hand-written
    backward pass); ``"autodiff"`` leaves the backward to JAX; ``"auto"``: see ``use_fused_backward``.
    The equations, and so the numbers to float tolerance, are the same.
    """
    fused = use_fused_backward(backward)
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

    def sequence(params, carry, xs, mask=None, reverse=False):
        return fused_lstm_sequence(params["w_x"], params["b"], params["w_h"], *carry, xs, mask, reverse)

    return make_cell(name="lstm", hidden_size=H, init=init, initial_carry=initial_carry,
                     project_input=project_input, recurrence=recurrence, gates=gates,
                     sequence=sequence if fused else None)


# --- the fused sequence: a hand-written backward (cuDNN's structure) -------------------------------


def _activate(z):
    """Gate pre-activations ``z [..., 4H]`` -> ``(i, f, g, o)``: sigmoid, sigmoid, tanh, sigmoid."""
    i, f, g, o = jnp.split(z, 4, axis=-1)
    return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def _forward_scan(w_h, c0, h0, inputs, mask, reverse, save_gates, project):
    """The LSTM over ``inputs [T, B, .]``; per step it also emits what the backward reads.

    ``project(inputs_t) -> gx_t [B, 4H]``, the input projection. Returns
    ``((c_T, h_T), (gates [T, B, 4H] or None, c_prev [T, B, H], h [T, B, H]))``, where ``h`` is the
    carried state (held, not zeroed, on padded steps) and c_prev the cell before the step.
    """
    def body(carry, step_in):
        c, h = carry
        in_t, m_t = step_in
        i, f, g, o = _activate(project(in_t) + h @ w_h)
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        c_new, h_new = hold(m_t, c_new, c), hold(m_t, h_new, h)
        gates = jnp.concatenate([i, f, g, o], axis=-1) if save_gates else None
        return (c_new, h_new), (gates, c, h_new)

    return scan_prefetched(body, (c0, h0), (inputs, mask), reverse)


def _backward_scan(w_h, dc_T, dh_T, gates_or_z, c_prev, dys, mask, reverse, save_gates):
    """The reverse scan of the chain rule (``fused_lstm_sequence``): ``((dc0, dh0), dz [T, B, 4H])``.

    ``gates_or_z``: the activated gates of every step (``save_gates``), else their pre-activations."""
    w_h_t = w_h.T

    def body(carry, step_in):
        dc, dh = carry
        a_t, c_p, dy_t, m_t = step_in
        i, f, g, o = jnp.split(a_t, 4, axis=-1) if save_gates else _activate(a_t)
        # the step's own output and state (zero on padded steps)
        dh_new, dc_new = mask_cotangent(m_t, dh + dy_t, dc)
        tc = jnp.tanh(f * c_p + i * g)
        dc_new = dc_new + dh_new * o * (1.0 - tc * tc)
        dz = jnp.concatenate([dc_new * g * i * (1.0 - i), dc_new * c_p * f * (1.0 - f),
                              dc_new * i * (1.0 - g * g), dh_new * tc * o * (1.0 - o)], axis=-1)
        dh_prev, dc_prev = dz @ w_h_t, dc_new * f
        # a padded step passed its carry through unchanged
        dh_prev, dc_prev = pass_through(m_t, dh_prev, dh), pass_through(m_t, dc_prev, dc)
        return (dc_prev, dh_prev), dz

    return scan_prefetched(body, (dc_T, dh_T), (gates_or_z, c_prev, dys, mask), not reverse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def fused_lstm_sequence(w_x, b, w_h, c0, h0, xs, mask, reverse=False, save_gates=True):
    """The LSTM over a whole sequence with a hand-written backward pass (cuDNN's structure).

    ``xs [T, B, D]`` (time-major), ``mask [T, B]`` or None, carry ``(c0, h0)`` ``[B, H]`` each. Returns
    ``((c_T, h_T), hs [T, B, H])`` with ``scan.py``'s masking rule (padded steps hold the carry and
    output zero) and ``reverse`` (t = T-1 .. 0), equal to scanning ``lstm(...).step``. The forward
    computes z_t = x_t W_x + b + h_{t-1} W_h inside each step (hoisting x W_x out of the scan measured
    slower on XLA:CPU, ``scan.py``). The VJP is a reverse ``lax.scan`` that writes out the chain rule,

        dh = dL/dh_t (from the output and from step t+1),   dc = dL/dc_t (from step t+1)
        dc += dh * o * (1 - tanh(c_t)^2)
        dz = [dc * g * i(1 - i),  dc * c_{t-1} * f(1 - f),  dc * i * (1 - g^2),  dh * tanh(c_t) * o(1 - o)]
        dL/dh_{t-1} = dz W_h^T,   dL/dc_{t-1} = dc * f,

    with only the ``[B, 4H] x [4H, H]`` matmul of dL/dh_{t-1} inside the loop; after it, over all T*B
    rows at once: ``dW_h = h_{t-1}^T dz`` (one ``[H, T*B] x [T*B, 4H]`` matmul), ``dW_x = x^T dz``,
    ``db = sum dz`` and ``dL/dx = dz W_x^T``. ``save_gates`` keeps the activated gates of every step
    for the backward; otherwise only the states are kept and the pre-activations are recomputed by
    matmuls over all T*B rows before the backward scan.
    """
    (c, h), (_, _, hs) = _forward_scan(w_h, c0, h0, xs, mask, reverse, False, lambda x: affine(x, w_x, b))
    return (c, h), masked_outputs(hs, mask)


def _fused_fwd(w_x, b, w_h, c0, h0, xs, mask, reverse, save_gates):
    (c, h), (gates, c_prev, hs) = _forward_scan(w_h, c0, h0, xs, mask, reverse, save_gates,
                                                lambda x: affine(x, w_x, b))
    return ((c, h), masked_outputs(hs, mask)), (w_x, b, w_h, h0, xs, mask, gates, c_prev, hs)


def _fused_bwd(reverse, save_gates, residuals, cotangents):
    w_x, b, w_h, h0, xs, mask, gates, c_prev, hs = residuals
    (dc_T, dh_T), dys = cotangents
    T, B, _ = xs.shape
    hp = h_prev(h0, hs, reverse)
    if not save_gates:
        gates = (affine(rows(xs), w_x, b) + rows(hp) @ w_h).reshape(T, B, -1)
    (dc0, dh0), dz = _backward_scan(w_h, dc_T, dh_T, gates, c_prev, dys, mask, reverse, save_gates)
    dz_rows = rows(dz)
    return (rows(xs).T @ dz_rows, jnp.sum(dz_rows, axis=0), rows(hp).T @ dz_rows, dc0, dh0,
            (dz_rows @ w_x.T).reshape(xs.shape), None)


fused_lstm_sequence.defvjp(_fused_fwd, _fused_bwd)
