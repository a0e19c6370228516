"""A model is a stack of recurrent layers plus a linear readout, as pure ``init`` / ``apply``.

    hs, summary = scan_stack(layers, x)        hs [B, T, F], summary [B, F]
    y = summary @ W_o + b_o                    readout="last":  y [B, O]  (many-to-one)
    y = hs @ W_o + b_o                         readout="all":   y [B, T, O] (one output per step)

F = H, or 2H when bidirectional. The readout kernel is Glorot-initialised, its bias zero.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnbench.cells.base import Cell, affine, check_positive_int
from rnnbench.scan import Layer, scan_stack
from rnnbench.types import Array, Params, PRNGKey

READOUTS = ("last", "all")


class Model(NamedTuple):
    """``init(key, input_dim) -> params``; ``apply(params, x, mask=None, *, dropout_key=None) -> y``.

    ``dropout_key=None`` means evaluation (no dropout). ``layers`` and ``head(params, hs, summary)``
    (the readout) let ``diagnostics.py`` run the same model while watching its last layer.
    """

    init: Callable[[PRNGKey, int], Params]
    apply: Callable[..., Array]
    layers: tuple[Layer, ...]
    head: Callable[[Params, Array, Array], Array]


def make_model(
    cell_factory: Callable[[int], Cell],
    *,
    hidden_size: int,
    output_dim: int,
    readout: str,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    unroll: int = 1,
    hoist_input: bool | None = None,
    remat: bool = False,
) -> Model:
    """Build the model; ``cell_factory(hidden_size) -> Cell`` is called once per direction and layer."""
    check_positive_int("model.hidden_size", hidden_size)
    check_positive_int("model.num_layers", num_layers)
    check_positive_int("model.unroll", unroll)
    if readout not in READOUTS:
        raise ValueError(f"readout={readout!r} is not allowed; choose one of: {', '.join(READOUTS)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout={dropout!r} must be in [0, 1)")
    layers = tuple(
        Layer(cell_factory(hidden_size), cell_factory(hidden_size) if bidirectional else None)
        for _ in range(num_layers)
    )

    def init(key: PRNGKey, input_dim: int) -> Params:
        keys = jax.random.split(key, num_layers + 1)
        stack, width = [], input_dim
        for layer, k in zip(layers, keys[:-1], strict=True):
            stack.append(layer.init(k, width))
            width = layer.output_size
        w = jax.nn.initializers.glorot_uniform()(keys[-1], (width, output_dim), jnp.float32)
        return {"layers": stack, "readout": {"w": w, "b": jnp.zeros((output_dim,), jnp.float32)}}

    def head(params: Params, hs: Array, summary: Array) -> Array:
        features = summary if readout == "last" else hs
        return affine(features, params["readout"]["w"], params["readout"]["b"])

    def apply(params: Params, x: Array, mask: Array | None = None, *, dropout_key: PRNGKey | None = None) -> Array:
        hs, summary = scan_stack(layers, params["layers"], x, mask, dropout_rate=dropout,
                                 dropout_key=dropout_key, unroll=unroll, hoist_input=hoist_input,
                                 remat=remat)
        return head(params, hs, summary)

    return Model(init, apply, layers, head)


def count_params(params: Params) -> int:
    """Number of trainable scalars in a params pytree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def model_param_count(cell_factory: Callable[[int], Cell], hidden_size: int, *, input_dim: int, output_dim: int,
                      readout: str, num_layers: int = 1, bidirectional: bool = False) -> int:
    """Trainable parameters of the model ``make_model`` builds, counted from shapes (nothing runs)."""
    model = make_model(cell_factory, hidden_size=hidden_size, output_dim=output_dim, readout=readout,
                       num_layers=num_layers, bidirectional=bidirectional)
    return count_params(jax.eval_shape(lambda k: model.init(k, input_dim), jax.random.key(0)))


def hidden_size_for_budget(cell_factory: Callable[[int], Cell], budget: int, *, input_dim: int, output_dim: int,
                           readout: str, num_layers: int = 1, bidirectional: bool = False,
                           max_hidden: int = 1 << 16) -> tuple[int, int]:
    """The hidden size whose model has the parameter count nearest ``budget``: ``(H, count)``.

    The count grows with H (quadratically for matrix recurrences, linearly for diagonal ones) on each
    side of H = D, the input width, where a cell may drop a block (MUT1 and MUT2 use x_t itself instead
    of an embedding when D == H, so their count dips there). So each side is searched on its own
    (bisection for the first H whose count reaches the budget) and the nearest of the sizes around
    the two crossings wins (ties go to the smaller H).
    """
    check_positive_int("model.param_budget", budget)

    @functools.cache
    def count(h: int) -> int:
        return model_param_count(cell_factory, h, input_dim=input_dim, output_dim=output_dim, readout=readout,
                                 num_layers=num_layers, bidirectional=bidirectional)

    def first_reaching(lo: int, hi: int) -> int:
        """The first h in [lo, hi] with count(h) >= budget (count non-decreasing there), or hi."""
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if count(mid) < budget else (lo, mid)
        return lo

    segments = [(1, min(input_dim, max_hidden) - 1), (min(input_dim, max_hidden), max_hidden)]
    candidates: set[int] = set()
    for lo, hi in segments:
        if lo > hi:
            continue
        top = lo
        while count(top) < budget and top < hi:  # grow the bracket: budgets are usually far below max_hidden
            top = min(2 * top, hi)
        crossing = first_reaching(max(lo, top // 2), top)
        candidates.update(h for h in range(crossing - 2, crossing + 3) if lo <= h <= hi)
    best = min(candidates, key=lambda h: (abs(count(h) - budget), h))
    if count(best) < budget and best == max_hidden:
        raise ValueError(f"model.param_budget={budget} needs a hidden size above {max_hidden}")
    return best, count(best)
