"""The Cell contract: a recurrent cell is a factory returning a NamedTuple of pure functions.

Modelled on optax's ``GradientTransformation(init, update)``: no classes with hidden state, params
are plain pytrees (dicts of arrays), and every function is jittable.

    cell = lstm(hidden_size=64)
    params = cell.init(key, input_dim)                     # pytree
    carry = cell.initial_carry((B,))                       # zeros
    carry, h_t = cell.step(params, carry, x_t)             # x_t [B, D] -> h_t [B, H]

Every cell in rnnbench splits its step into an input projection and a recurrence,

    step(params, carry, x_t) == recurrence(params, carry, project_input(params, x_t)),

so ``scan.py`` may compute ``project_input`` for all time steps as one large matmul before the scan
("hoisting"), or call ``step`` inside it; which is faster depends on the backend (see scan.py).
Gate matmuls are fused: one ``[D, G]`` input matrix and one ``[H, G]`` recurrent matrix per cell.
By convention the carry's last leaf is the state h_t the gradient diagnostics perturb and read
dL/dh_t at (the LSTM's carry is ``(c, h)``). It is also the output, unless the cell has ``emit``: the
LRU's output is a readout of its complex state, ``y_t = Re(C x_t) + D u_t``.

Cells linear in their state (minGRU, minLSTM, LRU) may also have ``parallel``: the whole sequence at
once with ``jax.lax.associative_scan``, equal to the step-by-step scan to float tolerance. A cell may
instead have ``sequence``: the whole sequence (raw inputs, not projected) through one function with its
own VJP (the LSTM's hand-written backward pass), equal to the step-by-step scan in value and gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnbench.types import Array, Carry, Params, PRNGKey


class Cell(NamedTuple):
    """A recurrent cell as pure functions (see the module docstring for the contract).

    Attributes:
      init: ``(key, input_dim) -> params``.
      initial_carry: ``(batch_shape, dtype=float32) -> carry`` (zeros).
      step: ``(params, carry, x_t [B, D]) -> (carry, h_t [B, H])``.
      hidden_size: H, the width of ``h_t``.
      project_input: ``(params, x [..., D]) -> gx [..., G]``, the part of ``step`` that reads only x.
      recurrence: ``(params, carry, gx_t [B, G]) -> (carry, h_t)``, the rest of ``step``.
      name: the cell's name in the literature.
      gates: ``(params, carry, gx_t) -> {gate name: activation [B, H]}`` for gated cells (the
        sigmoid gates, which the diagnostics watch for saturation), None for ungated cells.
      emit: ``(params, new carry, gx_t) -> h_t``, the output given the state after the step; None when
        the output is the carry's last leaf (every cell but the LRU).
      parallel: ``(params, carry, gx [T, B, G], mask [T, B] | None, reverse) -> (carry, hs [T, B, H])``,
        the scan over a whole (time-major, projected) sequence in O(log T) depth; None for cells that
        are nonlinear in their state, or when the cell was built with ``mode="sequential"``.
      sequence: ``(params, carry, xs [T, B, D], mask [T, B] | None, reverse) -> (carry, hs [T, B, H])``,
        the step-by-step scan over a whole (time-major, raw) sequence as one function with a
        hand-written backward pass (the LSTM's ``backward="fused"``); None for the other cells.
    """

    init: Callable[[PRNGKey, int], Params]
    initial_carry: Callable[..., Carry]
    step: Callable[[Params, Carry, Array], tuple[Carry, Array]]
    hidden_size: int
    project_input: Callable[[Params, Array], Array]
    recurrence: Callable[[Params, Carry, Array], tuple[Carry, Array]]
    name: str
    gates: Callable[[Params, Carry, Array], dict[str, Array]] | None = None
    emit: Callable[[Params, Carry, Array], Array] | None = None
    parallel: Callable[..., tuple[Carry, Array]] | None = None
    sequence: Callable[..., tuple[Carry, Array]] | None = None


def make_cell(
    *,
    name: str,
    hidden_size: int,
    init: Callable[[PRNGKey, int], Params],
    initial_carry: Callable[..., Carry],
    project_input: Callable[[Params, Array], Array],
    recurrence: Callable[[Params, Carry, Array], tuple[Carry, Array]],
    gates: Callable[[Params, Carry, Array], dict[str, Array]] | None = None,
    emit: Callable[[Params, Carry, Array], Array] | None = None,
    parallel: Callable[..., tuple[Carry, Array]] | None = None,
    sequence: Callable[..., tuple[Carry, Array]] | None = None,
) -> Cell:
    """Assemble a Cell whose ``step`` is ``recurrence`` after ``project_input`` (one definition)."""
    check_positive_int("hidden_size", hidden_size)

    def step(params: Params, carry: Carry, x_t: Array) -> tuple[Carry, Array]:
        return recurrence(params, carry, project_input(params, x_t))

    return Cell(init, initial_carry, step, hidden_size, project_input, recurrence, name, gates, emit, parallel,
                sequence)


# --- initialisers ------------------------------------------------------------------------------

def _identity(key: PRNGKey, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    """Identity recurrent matrix (IRNN, Le et al. 2015); key unused."""
    del key
    return jnp.eye(shape[0], shape[1], dtype=dtype)


_INITIALIZERS: dict[str, Callable[[], Callable]] = {
    "glorot_uniform": jax.nn.initializers.glorot_uniform,
    "glorot_normal": jax.nn.initializers.glorot_normal,
    "lecun_uniform": jax.nn.initializers.lecun_uniform,
    "lecun_normal": jax.nn.initializers.lecun_normal,
    "he_uniform": jax.nn.initializers.he_uniform,
    "he_normal": jax.nn.initializers.he_normal,
    "orthogonal": jax.nn.initializers.orthogonal,
    "identity": lambda: _identity,
    "zeros": lambda: jax.nn.initializers.zeros,
}
INITIALIZER_NAMES = tuple(_INITIALIZERS)


def initializer(name: str) -> Callable:
    """Look up a weight initialiser by its name in the literature (``"orthogonal"``, ...)."""
    if name not in _INITIALIZERS:
        raise ValueError(f"unknown initialiser {name!r}; choose one of: {', '.join(INITIALIZER_NAMES)}")
    return _INITIALIZERS[name]()


def gate_blocks(init: Callable, key: PRNGKey, fan_in: int, hidden_size: int, n_gates: int) -> Array:
    """``[fan_in, n_gates * H]``: one independent ``[fan_in, H]`` draw per gate, side by side.

    Initialising each gate's block on its own (as flax's per-gate Dense layers do) keeps every
    recurrent block orthogonal and every input block Glorot-scaled for its own fan-out H; one draw
    over the fused ``[H, 4H]`` matrix would give none of the blocks that property.
    """
    keys = jax.random.split(key, n_gates)
    return jnp.concatenate([init(k, (fan_in, hidden_size), jnp.float32) for k in keys], axis=-1)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise a one-line ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of: {', '.join(choices)}")


MODES = ("auto", "parallel", "sequential")


def use_parallel(mode: str) -> bool:
    """Whether a cell built with ``mode`` gets its parallel form: ``auto`` is sequential on CPU, where
    the associative scan measured 2-10x slower than ``lax.scan`` (``make bench-parallel``), and
    parallel on GPU/TPU, where its O(log T) depth is the point (Feng et al. 2024; Orvieto et al. 2023)."""
    check_choice("mode", mode, MODES)
    return mode == "parallel" or (mode == "auto" and jax.default_backend() != "cpu")


def check_positive_int(name: str, value: object) -> None:
    """Raise a one-line ValueError unless ``value`` is a positive int."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def affine(x: Array, w: Array, b: Array) -> Array:
    """``x [..., D] @ w [D, G] + b [G]`` with the bias broadcast explicitly.

    Explicit so the code runs under ``jax_numpy_rank_promotion="raise"``, which the tests turn on to
    catch silent broadcasting bugs.
    """
    y = x @ w
    return y + b.reshape((1,) * (y.ndim - 1) + b.shape)
