"""The peephole LSTM (Gers & Schmidhuber 2000) and the eight ablations of Greff et al. 2017.

Greff et al.'s "vanilla" LSTM ("LSTM: A Search Space Odyssey", eq. 1-6), y the output, c the cell:

    z_t = g(x_t W_z + y_{t-1} R_z + b_z)                           block input
    i_t = sigmoid(x_t W_i + y_{t-1} R_i + p_i * c_{t-1} + b_i)     input gate
    f_t = sigmoid(x_t W_f + y_{t-1} R_f + p_f * c_{t-1} + b_f)     forget gate
    c_t = z_t * i_t + c_{t-1} * f_t
    o_t = sigmoid(x_t W_o + y_{t-1} R_o + p_o * c_t + b_o)         output gate (peeks at the NEW cell)
    y_t = h(c_t) * o_t                                             g = h = tanh

The p are diagonal peephole weights (the source document's W^{ci}, W^{cf}, W^{co}). Each ablation is
one switch of the same implementation:

    NIG  no input gate          i_t = 1
    NFG  no forget gate         f_t = 1
    NOG  no output gate         o_t = 1
    NIAF no input activation    g(x) = x
    NOAF no output activation   h(x) = x
    NP   no peepholes           p_i = p_f = p_o = 0 (removed): the plain LSTM of ``lstm.py``
    CIFG coupled gates          f_t = 1 - i_t (no forget-gate parameters)
    FGR  full gate recurrence   every gate also reads all gates of t-1:
                                i_t = sigmoid(... + [i_{t-1}, f_{t-1}, o_{t-1}] R^g_i), likewise f, o

Fused parameters: ``w_x [D, nH]``, ``w_h [H, nH]``, ``b [nH]`` for the n pre-activations present, in
the order z, i, f, o; ``p_i, p_f, p_o [H]`` (zeros at init, so an untrained peephole LSTM equals NP);
FGR adds ``w_g [3H, 3H]`` (gates of t-1 to gate pre-activations, orthogonal blocks). The forget
bias starts at ``forget_bias`` (1.0, as ``lstm``); in CIFG, where f = 1 - i, the input-gate bias starts
at ``-forget_bias`` so that f starts at the same value. Carry: ``(c, y)``, or ``(gates_{t-1}, c, y)``
for FGR (y last, the Cell convention).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell, affine, gate_blocks, initializer, make_cell


def _identity(x):
    return x


def greff_lstm(
    hidden_size: int,
    peepholes: bool = True,
    input_gate: bool = True,
    forget_gate: bool = True,
    output_gate: bool = True,
    input_activation: bool = True,
    output_activation: bool = True,
    coupled_input_forget: bool = False,
    full_gate_recurrence: bool = False,
    forget_bias: float = 1.0,
    kernel_init: str = "glorot_uniform",
    recurrent_init: str = "orthogonal",
    name: str = "peephole_lstm",
) -> Cell:
    """The vanilla (peephole) LSTM of Greff et al. 2017 with each of their ablations as a switch."""
    if coupled_input_forget and not (input_gate and forget_gate):
        raise ValueError("coupled_input_forget=True needs both the input and the forget gate switched on")
    if full_gate_recurrence and (coupled_input_forget or not (input_gate and forget_gate and output_gate)):
        raise ValueError("full_gate_recurrence=True needs all three gates, uncoupled")
    k_init, r_init = initializer(kernel_init), initializer(recurrent_init)
    H = hidden_size
    g_act = jnp.tanh if input_activation else _identity
    h_act = jnp.tanh if output_activation else _identity
    has_f_params = forget_gate and not coupled_input_forget
    # pre-activations with parameters, in order
    names = ["z"] + (["i"] if input_gate else []) + (["f"] if has_f_params else []) + (["o"] if output_gate else [])
    index = {n: k for k, n in enumerate(names)}
    peephole_names = [n for n in ("i", "f", "o") if peepholes and n in index]

    def init(key, input_dim):
        kx, kh, kg = jax.random.split(key, 3)
        b = jnp.zeros((len(names) * H,), jnp.float32)
        if has_f_params:
            b = b.at[index["f"] * H : (index["f"] + 1) * H].set(forget_bias)
        if coupled_input_forget:
            b = b.at[index["i"] * H : (index["i"] + 1) * H].set(-forget_bias)
        params = {
            "w_x": gate_blocks(k_init, kx, input_dim, H, len(names)),
            "w_h": gate_blocks(r_init, kh, H, H, len(names)),
            "b": b,
        }
        params.update({f"p_{n}": jnp.zeros((H,), jnp.float32) for n in peephole_names})
        if full_gate_recurrence:
            params["w_g"] = jnp.concatenate([gate_blocks(r_init, k, H, H, 3) for k in jax.random.split(kg, 3)], 0)
        return params

    def initial_carry(batch_shape, dtype=jnp.float32):
        zeros = jnp.zeros((*batch_shape, H), dtype)
        if full_gate_recurrence:
            return jnp.zeros((*batch_shape, 3 * H), dtype), zeros, zeros
        return zeros, zeros

    def project_input(params, x):
        return affine(x, params["w_x"], params["b"])

    def peep(params, n, c):
        return params[f"p_{n}"].reshape((1,) * (c.ndim - 1) + (H,)) * c if n in peephole_names else 0.0

    def activations(params, carry, gx):
        """Gates (i, f, o, each None when switched off), block input z and the new cell c_t."""
        c, y = carry[-2], carry[-1]
        pre = gx + y @ params["w_h"]
        if full_gate_recurrence:
            # gates of t-1 feed i, f, o (the last three pre-activation blocks; z is not a gate)
            pre = pre + jnp.concatenate([jnp.zeros_like(pre[..., :H]), carry[0] @ params["w_g"]], axis=-1)
        blocks = jnp.split(pre, len(names), axis=-1)
        z = g_act(blocks[index["z"]])
        i = jax.nn.sigmoid(blocks[index["i"]] + peep(params, "i", c)) if input_gate else None
        if coupled_input_forget:
            f = 1.0 - i
        elif forget_gate:
            f = jax.nn.sigmoid(blocks[index["f"]] + peep(params, "f", c))
        else:
            f = None
        c_new = z * (1.0 if i is None else i) + c * (1.0 if f is None else f)
        o = jax.nn.sigmoid(blocks[index["o"]] + peep(params, "o", c_new)) if output_gate else None
        return i, f, o, c_new

    def recurrence(params, carry, gx):
        i, f, o, c = activations(params, carry, gx)
        y = h_act(c) * (1.0 if o is None else o)
        if full_gate_recurrence:
            return (jnp.concatenate([i, f, o], axis=-1), c, y), y
        return (c, y), y

    def gates(params, carry, gx):
        i, f, o, _ = activations(params, carry, gx)
        return {k: v for k, v in (("input", i), ("forget", f), ("output", o)) if v is not None}

    return make_cell(name=name, hidden_size=H, init=init, initial_carry=initial_carry,
                     project_input=project_input, recurrence=recurrence, gates=gates)
