"""Cells against independent references: numpy equations, flax.linen's cells, finite differences.

The cells under test come from ``configs/cell/*.yaml`` (``_target_`` plus factory kwargs, Hydra defaults
lists applied), plus the hand-listed variants the configs lack (relu RNN, Cho's GRU); with no configs,
the hand-written list alone. Every numpy reference here is written from the published equations, not
from rnnbench's code, and a config whose target no reference covers fails the suite.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from jax.test_util import check_grads
from omegaconf import OmegaConf

from rnnbench.cells.gru import gru
from rnnbench.cells.indrnn import indrnn
from rnnbench.cells.janet import janet
from rnnbench.cells.lru import lru
from rnnbench.cells.lstm import lstm
from rnnbench.cells.mgu import mgu
from rnnbench.cells.minimal import mingru, minlstm
from rnnbench.cells.mut import mut
from rnnbench.cells.peephole import greff_lstm
from rnnbench.cells.rnn import rnn
from rnnbench.scan import scan_cell

CELL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "cell"

# --- numpy references, written from the equations ------------------------------------------------


def np_sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def np_tanh(a):
    return (np.exp(a) - np.exp(-a)) / (np.exp(a) + np.exp(-a))


def _block(w, k, H):
    """Gate block k of a fused matrix / bias (blocks side by side along the last axis)."""
    return w[..., k * H : (k + 1) * H]


def np_rnn_step(activation):
    act = {"tanh": np_tanh, "relu": lambda a: np.maximum(a, 0.0)}[activation]

    def step(p, h, x):
        h = act(x @ p["w_x"] + p["b"] + h @ p["w_h"])
        return h, h

    return step


def np_lstm_step(p, carry, x):
    c, h = carry
    H = h.shape[-1]

    def pre(k):  # gate k in order i, f, g, o
        return x @ _block(p["w_x"], k, H) + _block(p["b"], k, H) + h @ _block(p["w_h"], k, H)

    i, f, g, o = np_sigmoid(pre(0)), np_sigmoid(pre(1)), np_tanh(pre(2)), np_sigmoid(pre(3))
    c = f * c + i * g
    h = o * np_tanh(c)
    return (c, h), h


def np_gru_step(reset_after):
    def step(p, h, x):
        H = h.shape[-1]

        def in_(k):
            return x @ _block(p["w_x"], k, H) + _block(p["b"], k, H)

        def rec(k, state):
            return state @ _block(p["w_h"], k, H)

        r = np_sigmoid(in_(0) + rec(0, h))
        z = np_sigmoid(in_(1) + rec(1, h))
        if reset_after:  # flax / cuDNN form
            n = np_tanh(in_(2) + r * (rec(2, h) + p["b_hn"]))
        else:  # Cho et al. 2014
            n = np_tanh(in_(2) + rec(2, r * h))
        h = (1.0 - z) * n + z * h
        return h, h

    return step


def np_greff_lstm_step(kw):
    """Greff et al. 2017, eq. 1-6 (peephole LSTM, Gers & Schmidhuber 2000) with each ablation switch.

    Params: fused ``w_x``, ``w_h``, ``b`` with one block per pre-activation present, in order z, i, f, o;
    diagonal peepholes ``p_i, p_f, p_o`` for the gates present; FGR's ``w_g [3H, 3H]`` maps the gates
    [i, f, o] of t-1 to the pre-activations of i, f, o. Carry ``(c, y)``, FGR ``([i, f, o]_{t-1}, c, y)``.
    """
    peepholes = kw.get("peepholes", True)
    has_i, has_f, has_o = (kw.get(k, True) for k in ("input_gate", "forget_gate", "output_gate"))
    coupled, fgr = kw.get("coupled_input_forget", False), kw.get("full_gate_recurrence", False)
    g = np_tanh if kw.get("input_activation", True) else (lambda a: a)
    h = np_tanh if kw.get("output_activation", True) else (lambda a: a)
    order = ["z"] + ["i"] * has_i + ["f"] * (has_f and not coupled) + ["o"] * has_o

    def step(p, carry, x):
        if fgr:
            prev_gates, c_prev, y_prev = carry
        else:
            c_prev, y_prev = carry
        H = y_prev.shape[-1]

        def pre(n):
            k = order.index(n)
            a = x @ _block(p["w_x"], k, H) + y_prev @ _block(p["w_h"], k, H) + _block(p["b"], k, H)
            if fgr and n != "z":  # [i, f, o]_{t-1} R^g_n; the block input z is not a gate
                a = a + prev_gates @ _block(p["w_g"], "ifo".index(n), H)
            return a

        def peek(n, cell):
            return p["p_" + n] * cell if peepholes else 0.0

        z = g(pre("z"))
        i = np_sigmoid(pre("i") + peek("i", c_prev)) if has_i else 1.0
        if coupled:
            f = 1.0 - i
        else:
            f = np_sigmoid(pre("f") + peek("f", c_prev)) if has_f else 1.0
        c = z * i + c_prev * f
        o = np_sigmoid(pre("o") + peek("o", c)) if has_o else 1.0  # the new cell state
        y = h(c) * o
        if fgr:
            return (np.concatenate([i, f, o], axis=-1), c, y), y
        return (c, y), y

    return step


def np_mgu_step(p, h, x):
    """Zhou et al. 2016, eq. 11: one forget gate f, which also resets the state in the candidate."""
    H = h.shape[-1]
    f = np_sigmoid(x @ _block(p["w_x"], 0, H) + h @ _block(p["w_h"], 0, H) + _block(p["b"], 0, H))
    cand = np_tanh(x @ _block(p["w_x"], 1, H) + (f * h) @ _block(p["w_h"], 1, H) + _block(p["b"], 1, H))
    h = (1.0 - f) * h + f * cand
    return h, h


def np_mut_step(variant):
    """Jozefowicz et al. 2015, MUT1-3 as printed (W x products written as row vectors x W).

    The raw x_t of MUT1 (tanh(x_t)) and MUT2 (x_t in r) is the learned embedding x E when the input
    width differs from H, else x itself (then ``w_x`` lacks that block)."""

    def step(p, h, x):
        H = h.shape[-1]
        b = {n: _block(p["b"], k, H) for k, n in enumerate("zrh")}
        whh = lambda k: _block(p["w_h"], k, H)
        has_embedding = p["w_x"].shape[-1] == 3 * H
        if variant == 1:  # input blocks z, r, E
            wxz, wxr = _block(p["w_x"], 0, H), _block(p["w_x"], 1, H)
            emb = x @ _block(p["w_x"], 2, H) if has_embedding else x
            z = np_sigmoid(x @ wxz + b["z"])
            r = np_sigmoid(x @ wxr + h @ whh(0) + b["r"])
            new = np_tanh((r * h) @ whh(1) + np_tanh(emb) + b["h"]) * z + h * (1.0 - z)
        elif variant == 2:  # input blocks z, E, W_xh
            wxz = _block(p["w_x"], 0, H)
            emb = x @ _block(p["w_x"], 1, H) if has_embedding else x
            wxh = _block(p["w_x"], 2 if has_embedding else 1, H)
            z = np_sigmoid(x @ wxz + h @ whh(0) + b["z"])
            r = np_sigmoid(emb + h @ whh(1) + b["r"])
            new = np_tanh((r * h) @ whh(2) + x @ wxh + b["h"]) * z + h * (1.0 - z)
        else:
            wxz, wxr, wxh = (_block(p["w_x"], k, H) for k in range(3))
            z = np_sigmoid(x @ wxz + np_tanh(h) @ whh(0) + b["z"])
            r = np_sigmoid(x @ wxr + h @ whh(1) + b["r"])
            new = np_tanh((r * h) @ whh(2) + x @ wxh + b["h"]) * z + h * (1.0 - z)
        return new, new

    return step


def np_g(v):
    """Feng et al. 2024's g: v + 1/2 for v >= 0, sigmoid(v) below."""
    return np.where(v >= 0, v + 0.5, np_sigmoid(v))


def np_min_step(kind, log_space):
    """minGRU: h = (1 - z) h + z g(k_h); minLSTM: h = f/(f+i) h + i/(f+i) g(k_h); gates from x only."""
    cand = np_g if log_space else (lambda v: v)

    def step(p, h, x):
        H = h.shape[-1]
        k = [x @ _block(p["w_x"], j, H) + _block(p["b"], j, H) for j in range(2 if kind == "gru" else 3)]
        if kind == "gru":
            z = np_sigmoid(k[0])
            h = (1.0 - z) * h + z * cand(k[1])
        else:
            f, i = np_sigmoid(k[0]), np_sigmoid(k[1])
            h = f / (f + i) * h + i / (f + i) * cand(k[2])
        return h, h

    return step


def np_indrnn_step(activation, recurrent_max):
    act = {"tanh": np_tanh, "relu": lambda a: np.maximum(a, 0.0)}[activation]

    def step(p, h, x):
        u = p["u"] if recurrent_max is None else np.clip(p["u"], -recurrent_max, recurrent_max)
        h = act(x @ p["w_x"] + p["b"] + u * h)
        return h, h

    return step


def np_janet_step(beta):
    """van der Westhuizen & Lasenby 2018, eq. 8: c = s(f) c + (1 - s(f - beta)) tanh(c~), h = c."""

    def step(p, c, x):
        H = c.shape[-1]
        pre = [x @ _block(p["w_x"], k, H) + c @ _block(p["w_h"], k, H) + _block(p["b"], k, H) for k in range(2)]
        c = np_sigmoid(pre[0]) * c + (1.0 - np_sigmoid(pre[0] - beta)) * np_tanh(pre[1])
        return c, c

    return step


_np_erf = np.vectorize(math.erf)


def np_lru_step(activation):
    """Orvieto et al. 2023 in complex numpy: x = lambda x + gamma (u B), y = act(Re(x C) + u D)."""
    act = {"gelu": lambda v: 0.5 * v * (1.0 + _np_erf(v / math.sqrt(2.0))), "none": lambda v: v,
           "tanh": np_tanh, "relu": lambda v: np.maximum(v, 0.0)}[activation]

    def step(p, state, u):
        N = p["nu_log"].shape[0]
        lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
        x = state[..., :N] + 1j * state[..., N:]
        x = lam * x + np.exp(p["gamma_log"]) * (u @ (p["b_re"] + 1j * p["b_im"]))
        y = act((x @ (p["c_re"] + 1j * p["c_im"])).real + u @ p["d"])
        return np.concatenate([x.real, x.imag], axis=-1), y

    return step


@dataclasses.dataclass(frozen=True)
class Reference:
    """A numpy step and what the init tests need to know of the cell's parameters and carry."""

    step: Callable  # (params, carry, x) -> (carry, h), in float64 numpy
    n_gates: int  # pre-activation blocks of the fused w_x [D, nH], w_h [H, nH], b [nH]
    extra: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # other params: shape in units of H
    bias_init: dict[int, float] = dataclasses.field(default_factory=dict)  # blocks of b not starting at 0 -> value
    zero_init: tuple[str, ...] = ()  # extra params that start at zero
    carry: tuple[int, ...] = (1,)  # the carry's leaves, [B, k H] each: the k
    recurrent: tuple[str, ...] = ("w_h",)  # params made of [H, H] blocks drawn by recurrent_init
    shapes: Callable[[int, int], dict] | None = None  # (D, H) -> param shapes, when not the fused layout
    check_bias: bool = True  # b starts at zero but for bias_init (False: a random init, e.g. chrono)
    emits: bool = False  # the output is not the carry's last leaf (the LRU)

    def extra_shapes(self, H):
        return {name: tuple(k * H for k in units) for name, units in self.extra.items()}

    def param_shapes(self, D, H):
        """Every parameter's shape at input width D: the fused ``w_x [D, nH], w_h [H, nH], b [nH]``
        plus ``extra``, unless the cell has a layout of its own."""
        if self.shapes is not None:
            return self.shapes(D, H)
        G = self.n_gates * H
        return {"w_x": (D, G), "w_h": (H, G), "b": (G,), **self.extra_shapes(H)}


def _greff_reference(kw):
    peepholes, coupled = kw.get("peepholes", True), kw.get("coupled_input_forget", False)
    fgr, forget_bias = kw.get("full_gate_recurrence", False), kw.get("forget_bias", 1.0)
    order = ["z"] + ["i"] * kw.get("input_gate", True) + ["f"] * (kw.get("forget_gate", True) and not coupled)
    order += ["o"] * kw.get("output_gate", True)
    peeps = tuple(f"p_{n}" for n in order[1:] if peepholes)
    bias_init = {order.index("f"): forget_bias} if "f" in order else {}
    if coupled:  # f = 1 - i starts at sigmoid(forget_bias)
        bias_init[order.index("i")] = -forget_bias
    extra = {p: (1,) for p in peeps} | ({"w_g": (3, 3)} if fgr else {})
    return Reference(np_greff_lstm_step(kw), len(order), extra=extra, bias_init=bias_init, zero_init=peeps,
                     carry=(3, 1, 1) if fgr else (1, 1), recurrent=("w_h", "w_g") if fgr else ("w_h",))


def _gru_reference(kw):
    reset_after = kw.get("reset_after", True)
    return Reference(np_gru_step(reset_after), 3, extra={"b_hn": (1,)} if reset_after else {},
                     zero_init=("b_hn",) if reset_after else ())


def _mut_reference(kw):
    variant = kw.get("variant", 1)

    def shapes(D, H):
        raw = variant in (1, 2) and D == H  # the raw-x block is x itself: no embedding parameters
        return {"w_x": (D, 2 * H if raw else 3 * H), "w_h": (H, (2 if variant == 1 else 3) * H), "b": (3 * H,)}

    return Reference(np_mut_step(variant), 3, shapes=shapes)


def _min_reference(kind):
    def build(kw):
        n = 2 if kind == "gru" else 3
        return Reference(np_min_step(kind, kw.get("log_space", True)), n, recurrent=(),
                         bias_init={0: kw.get("forget_bias", 0.0)} if kind == "lstm" else {},
                         shapes=lambda D, H: {"w_x": (D, n * H), "b": (n * H,)})

    return build


def _janet_reference(kw):
    chrono = kw.get("chrono_t_max") is not None
    return Reference(np_janet_step(kw.get("beta", 1.0)), 2, bias_init={0: kw.get("forget_bias", 1.0)},
                     check_bias=not chrono)


def _lru_reference(kw):
    def shapes(D, H):
        N = kw.get("state_size") or H
        return {"nu_log": (N,), "theta_log": (N,), "gamma_log": (N,), "b_re": (D, N), "b_im": (D, N),
                "c_re": (N, H), "c_im": (N, H), "d": (D, H)}

    return Reference(np_lru_step(kw.get("activation", "gelu")), 1, carry=(2,), recurrent=(), shapes=shapes,
                     check_bias=False, emits=True)


# factory -> (kwargs it accepts, builder kwargs -> Reference)
_INIT_ONLY = {"kernel_init", "recurrent_init"}
_GREFF_SWITCHES = {"peepholes", "input_gate", "forget_gate", "output_gate", "input_activation", "output_activation",
                   "coupled_input_forget", "full_gate_recurrence"}
REFERENCES: dict[Callable, tuple[set[str], Callable[[dict], Reference]]] = {
    rnn: ({"activation", "backward"} | _INIT_ONLY, lambda kw: Reference(np_rnn_step(kw.get("activation", "tanh")), 1)),
    lstm: (  # (chrono_t_max acts only with forget_bias="chrono", an initialisation test_cell_zoo.py checks)
        {"forget_bias", "chrono_t_max", "backward"} | _INIT_ONLY,  # (backward: how gradients are computed)
        lambda kw: Reference(np_lstm_step, 4, bias_init={1: kw.get("forget_bias", 1.0)}, carry=(1, 1)),
    ),
    gru: ({"reset_after", "backward"} | _INIT_ONLY, _gru_reference),
    greff_lstm: (_GREFF_SWITCHES | {"forget_bias", "name"} | _INIT_ONLY, _greff_reference),
    mgu: (_INIT_ONLY, lambda kw: Reference(np_mgu_step, 2)),
    mut: ({"variant"} | _INIT_ONLY, _mut_reference),
    mingru: ({"log_space", "mode", "kernel_init"}, _min_reference("gru")),
    minlstm: ({"log_space", "mode", "forget_bias", "kernel_init"}, _min_reference("lstm")),
    indrnn: (
        {"activation", "recurrent_init_min", "recurrent_init_max", "recurrent_max", "kernel_init"},
        lambda kw: Reference(np_indrnn_step(kw.get("activation", "relu"), kw.get("recurrent_max")), 1, recurrent=(),
                             shapes=lambda D, H: {"w_x": (D, H), "u": (H,), "b": (H,)}),
    ),
    janet: ({"beta", "chrono_t_max", "forget_bias"} | _INIT_ONLY, _janet_reference),
    lru: ({"state_size", "r_min", "r_max", "max_phase", "activation", "mode"}, _lru_reference),
}


@dataclasses.dataclass(frozen=True)
class CellCase:
    name: str
    factory: Callable
    kwargs: dict
    bidirectional: bool = False

    def make(self, hidden_size, **overrides):
        return self.factory(hidden_size, **{**self.kwargs, **overrides})

    def reference(self) -> Reference:
        """The numpy reference of this cell; LookupError if not covered."""
        if self.factory not in REFERENCES:
            raise LookupError(f"{self.name}: no numpy reference for factory {self.factory!r}")
        allowed, build = REFERENCES[self.factory]
        unknown = set(self.kwargs) - allowed
        if unknown:
            raise LookupError(f"{self.name}: numpy reference does not cover kwargs {sorted(unknown)}")
        return build(self.kwargs)

    def __str__(self):
        return self.name


HAND_CASES = [
    CellCase("rnn", rnn, {}),
    CellCase("rnn_relu", rnn, {"activation": "relu"}),
    CellCase("lstm", lstm, {}),
    CellCase("gru", gru, {}),
    CellCase("gru_cho", gru, {"reset_after": False}),
    # the modes and variants the configs do not name: step-by-step forms, the papers' plain versions
    # (the configs' mode=auto is the sequential form on CPU; these run the parallel scan)
    CellCase("mingru_parallel", mingru, {"mode": "parallel"}),
    CellCase("mingru_plain_parallel", mingru, {"log_space": False, "mode": "parallel"}),
    CellCase("minlstm_parallel", minlstm, {"mode": "parallel"}),
    CellCase("minlstm_plain_parallel", minlstm, {"log_space": False, "mode": "parallel"}),
    CellCase("lru_parallel", lru, {"mode": "parallel"}),
    CellCase("lru_linear", lru, {"activation": "none"}),
    CellCase("indrnn_bounded", indrnn, {"recurrent_max": 0.7}),
    CellCase("janet_constant_bias", janet, {"chrono_t_max": None}),
]


def _resolve(target: str):
    module, _, attr = target.rpartition(".")
    return getattr(importlib.import_module(module), attr)


TASK_CONTEXT = {"seq_len": 50}  # what a cell config's ${task.*} interpolations read here


def load_cell_config(path: Path) -> dict:
    """A cell YAML with its Hydra defaults list applied (same-group names and ``_self_``, self last if
    absent) and its interpolations resolved against ``TASK_CONTEXT``."""
    merged = _merge_defaults(path)
    return OmegaConf.to_container(OmegaConf.create({"task": TASK_CONTEXT, "cell": merged}), resolve=True)["cell"]


def _merge_defaults(path: Path) -> dict:
    cfg = yaml.safe_load(path.read_text()) or {}
    defaults = cfg.pop("defaults", [])
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]
    merged: dict = {}
    for entry in defaults:
        if entry == "_self_":
            merged.update(cfg)
        elif isinstance(entry, str):
            merged.update(_merge_defaults(path.with_name(f"{entry}.yaml")))
        else:
            raise AssertionError(f"{path.name}: defaults entry {entry!r} not understood by this test")
    return merged


def config_cases() -> list[CellCase]:
    """One case per configs/cell/*.yaml, bidirectional ones included."""
    cases = []
    for path in sorted(CELL_CONFIG_DIR.glob("*.yaml")):
        cfg = load_cell_config(path)
        assert "_target_" in cfg, f"{path.name} has no _target_"
        kwargs = {k: v for k, v in cfg.items() if k not in ("_target_", "bidirectional")}
        cases.append(CellCase(path.stem, _resolve(cfg["_target_"]), kwargs, bool(cfg.get("bidirectional", False))))
    return cases


def _signature_key(case: CellCase):
    """(factory, every keyword with defaults filled in): two cases with equal keys are the same cell."""
    params = inspect.signature(case.factory).parameters
    full = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    full.update(case.kwargs)
    return case.factory, tuple(sorted(full.items()))


def cell_cases() -> list[CellCase]:
    """Distinct cells: the configs' cells, plus hand-listed variants (relu RNN, Cho GRU) they lack.

    Falls back to the hand-written list alone while configs/cell/ is empty.
    """
    cases, seen = [], set()
    configs = sorted(config_cases(), key=lambda c: c.bidirectional)  # name a cell after its one-way config
    for case in [*configs, *HAND_CASES]:
        key = _signature_key(case)
        if key not in seen:
            seen.add(key)
            cases.append(dataclasses.replace(case, bidirectional=False))
    return cases


CASES = cell_cases()


def perturbed_params(cell, seed, input_dim, scale=0.5):
    """``cell.init`` plus normal noise on every leaf, so biases and every block are non-trivial.

    The noise comes from numpy: it keeps these helpers from compiling a jax program per shape.
    """
    params = cell.init(jax.random.key(seed), input_dim)
    rng = np.random.default_rng(seed + 1000)
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a) + scale * rng.standard_normal(a.shape), a.dtype), params)


def random_params(init, seed, scale=0.5):
    """Params shaped like ``init()`` (traced, never run), filled with numpy normal draws.

    For tests where the values only need to be generic: no jax program is compiled for new shapes.
    """
    rng = np.random.default_rng(seed + 4000)
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), jax.eval_shape(init))


def random_carry(cell, seed, batch, dtype=jnp.float32):
    rng = np.random.default_rng(seed + 2000)
    return jax.tree.map(lambda a: jnp.asarray(0.8 * rng.standard_normal(a.shape), dtype),
                        cell.initial_carry((batch,), dtype))


def random_inputs(seed, shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed + 3000).standard_normal(shape), dtype)


def to_np64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def assert_tree_close(actual, expected, atol=1e-5, rtol=1e-5):
    a_leaves, a_def = jax.tree.flatten(actual)
    e_leaves, e_def = jax.tree.flatten(expected)
    assert a_def == e_def, (a_def, e_def)
    for a, e in zip(a_leaves, e_leaves, strict=True):
        assert np.shape(a) == np.shape(e)
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=atol, rtol=rtol)


B, D, H, T = 3, 4, 5, 4

# --- the cell list itself --------------------------------------------------------------------------


def test_every_config_target_has_a_reference():
    """Every ``_target_`` in configs/cell must be covered by a numpy reference here (else add one)."""
    for case in [*config_cases(), *HAND_CASES]:
        case.reference()  # raises LookupError when not covered
    assert CASES, "no cells to test"
    # ... and the lookup does refuse what it does not cover
    with pytest.raises(LookupError):
        CellCase("other", np_sigmoid, {}).reference()
    with pytest.raises(LookupError):
        CellCase("lstm_peephole", lstm, {"peepholes": True}).reference()


# --- step against the equations -----------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=str)
def test_step_matches_numpy_equations(case):
    cell = case.make(H)
    ref = case.reference()
    params = perturbed_params(cell, 0, D)
    assert {k: v.shape for k, v in params.items()} == ref.param_shapes(D, H)
    carry = random_carry(cell, 0, B)
    x = random_inputs(0, (B, D))

    new_carry, h = cell.step(params, carry, x)
    ref_carry, ref_h = ref.step(to_np64(params), to_np64(carry), np.asarray(x, np.float64))
    assert h.shape == (B, H)
    assert_tree_close(h, ref_h)
    assert_tree_close(new_carry, ref_carry)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_step_is_recurrence_after_projection(case):
    cell = case.make(H)
    params = perturbed_params(cell, 1, D)
    carry = random_carry(cell, 0, B)
    x = random_inputs(0, (B, D))
    new_carry, h = cell.step(params, carry, x)
    gx = cell.project_input(params, x)
    assert_tree_close((new_carry, h), cell.recurrence(params, carry, gx), atol=1e-6, rtol=1e-6)
    if cell.emit is not None:  # the output read back from the new state
        assert_tree_close(cell.emit(params, new_carry, gx), h, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_initial_carry_is_zeros(case):
    cell = case.make(H)
    ref = case.reference()
    carry = cell.initial_carry((B,))
    leaves = jax.tree.leaves(carry)
    assert [leaf.shape for leaf in leaves] == [(B, k * H) for k in ref.carry]
    assert (cell.emit is not None) == ref.emits
    if not ref.emits:
        assert leaves[-1].shape == (B, H), "the carry's last leaf is the output h_t"
    for leaf in leaves:
        assert leaf.dtype == jnp.float32
        assert not np.any(np.asarray(leaf))
    assert cell.hidden_size == H


# --- flax.linen given the same weights --------------------------------------------------------------


def _flax_lstm_params(p, H):
    fp = {}
    for k, g in enumerate("ifgo"):
        fp["i" + g] = {"kernel": _block(p["w_x"], k, H)}
        fp["h" + g] = {"kernel": _block(p["w_h"], k, H), "bias": _block(p["b"], k, H)}
    return fp


def _flax_gru_params(p, H):
    fp = {}
    for k, g in enumerate("rzn"):
        fp["i" + g] = {"kernel": _block(p["w_x"], k, H), "bias": _block(p["b"], k, H)}
        fp["h" + g] = {"kernel": _block(p["w_h"], k, H)}
    fp["hn"]["bias"] = p["b_hn"]
    return fp


FLAX_CASES = [c for c in CASES if c.factory is lstm or (c.factory is gru and c.kwargs.get("reset_after", True))]


@pytest.mark.parametrize("case", FLAX_CASES, ids=str)
def test_matches_flax_linen_cell(case):
    cell = case.make(H)
    flax_cell, to_flax = (nn.LSTMCell(features=H), _flax_lstm_params) if case.factory is lstm else (
        nn.GRUCell(features=H), _flax_gru_params)
    params = perturbed_params(cell, 2, D)
    carry = random_carry(cell, 0, B)
    x = random_inputs(0, (B, D))

    fparams = to_flax(params, H)
    expected_tree = flax_cell.init(jax.random.key(0), flax_cell.initialize_carry(jax.random.key(0), (B, D)), x)
    assert jax.tree.structure(expected_tree["params"]) == jax.tree.structure(fparams)
    assert jax.tree.map(jnp.shape, expected_tree["params"]) == jax.tree.map(jnp.shape, fparams)

    ours = cell.step(params, carry, x)
    theirs = flax_cell.apply({"params": fparams}, carry, x)
    assert_tree_close(ours, theirs, atol=1e-5, rtol=1e-5)


# --- initialisation -------------------------------------------------------------------------------


@pytest.mark.parametrize("forget_bias", [None, 2.5, -0.5])
def test_lstm_forget_bias(forget_bias):
    cell = lstm(H) if forget_bias is None else lstm(H, forget_bias=forget_bias)
    expected_fb = 1.0 if forget_bias is None else forget_bias
    b = np.asarray(cell.init(jax.random.key(3), D)["b"])
    np.testing.assert_array_equal(b[H : 2 * H], np.full(H, expected_fb, np.float32))
    np.testing.assert_array_equal(np.delete(b, np.s_[H : 2 * H]), np.zeros(3 * H, np.float32))


def _accepts(factory, name):
    return name in inspect.signature(factory).parameters


BIAS_CASES = [c for c in CASES if c.reference().check_bias]
RECURRENT_CASES = [c for c in CASES if c.reference().recurrent]
FACTORIES = list(dict.fromkeys(c.factory for c in CASES))


@pytest.mark.parametrize("case", BIAS_CASES, ids=str)
def test_init_biases_zero_except_forget(case):
    """Biases (and peepholes) start at zero, except the blocks the reference names (the LSTMs' forget
    bias; CIFG's input bias, -forget_bias so that f = 1 - i starts where the forget gate would)."""
    kwargs = {k: v for k, v in case.kwargs.items() if k != "forget_bias"}
    cell = case.factory(H, **kwargs)
    ref = dataclasses.replace(case, kwargs=kwargs).reference()
    params = cell.init(jax.random.key(4), D)
    assert {k: v.shape for k, v in params.items()} == ref.param_shapes(D, H)
    for leaf in params.values():
        assert leaf.dtype == jnp.float32
    expected_b = np.zeros((params["b"].shape[0] // H, H), np.float32)
    for k, value in ref.bias_init.items():
        expected_b[k] = value
    np.testing.assert_array_equal(params["b"], expected_b.reshape(-1))
    zero = {name for name in params if name.startswith("b") and name != "b"} | set(ref.zero_init)
    for name in zero:
        np.testing.assert_array_equal(params[name], np.zeros_like(params[name]))


def _square_blocks(w, H):
    """The [H, H] blocks of an [mH, nH] matrix, row-block by row-block."""
    rows, cols = w.shape
    assert rows % H == 0 and cols % H == 0
    return [w[r : r + H, c : c + H] for r in range(0, rows, H) for c in range(0, cols, H)]


@pytest.mark.parametrize("case", RECURRENT_CASES, ids=str)
def test_default_recurrent_blocks_are_orthogonal_and_distinct(case):
    """Every [H, H] block of w_h (and of FGR's gate-to-gate w_g) is its own orthogonal draw."""
    kwargs = {k: v for k, v in case.kwargs.items() if k != "recurrent_init"}
    cell = case.factory(H, **kwargs)
    ref = case.reference()
    params = cell.init(jax.random.key(5), D)
    for name in ref.recurrent:
        assert params[name].shape == ref.param_shapes(D, H)[name]
        blocks = _square_blocks(np.asarray(params[name], np.float64), H)
        for q in blocks:
            np.testing.assert_allclose(q.T @ q, np.eye(H), atol=1e-5)
        for i in range(len(blocks)):
            for j in range(i):
                assert not np.allclose(blocks[i], blocks[j]), f"{name}: blocks should be independent draws"


@pytest.mark.parametrize("case", RECURRENT_CASES, ids=str)
def test_identity_recurrent_init(case):
    cell = case.make(H, recurrent_init="identity")
    ref = case.reference()
    params = cell.init(jax.random.key(6), D)
    for name in ref.recurrent:
        shape = ref.param_shapes(D, H)[name]
        np.testing.assert_array_equal(params[name], np.tile(np.eye(H, dtype=np.float32),
                                                            (shape[0] // H, shape[1] // H)))


def test_recurrent_init_is_accepted_exactly_where_a_reference_names_recurrent_matrices():
    for case in CASES:
        assert _accepts(case.factory, "recurrent_init") == bool(case.reference().recurrent), case.name


@pytest.mark.parametrize(("factory", "which"), [(f, w) for f in FACTORIES for w in ("kernel_init", "recurrent_init")
                                               if _accepts(f, w)], ids=lambda v: getattr(v, "__name__", v))
def test_unknown_initializer_raises(factory, which):
    with pytest.raises(ValueError, match="not_an_init"):
        factory(H, **{which: "not_an_init"})


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", [0, -2])
def test_bad_hidden_size_raises(factory, bad):
    with pytest.raises(ValueError, match=rf"hidden_size={bad}\b"):
        factory(bad)


@pytest.mark.parametrize("factory", [f for f in FACTORIES if _accepts(f, "activation")], ids=lambda f: f.__name__)
def test_unknown_activation_raises(factory):
    with pytest.raises(ValueError, match="sigmoidish"):
        factory(H, activation="sigmoidish")


# --- gradients against finite differences (float64) -----------------------------------------------


def test_check_grads_can_fail():
    """The finite-difference check used below does catch a wrong gradient."""

    @jax.custom_vjp
    def bad_tanh(a):
        return jnp.tanh(a)

    bad_tanh.defvjp(lambda a: (jnp.tanh(a), a), lambda a, g: (g * 1.01 * (1 - jnp.tanh(a) ** 2),))
    with jax.enable_x64(True), pytest.raises(AssertionError):
        check_grads(lambda a: jnp.sum(bad_tanh(a)), (jnp.linspace(-1.0, 1.0, 5, dtype=jnp.float64),), order=1,
                    modes=["rev"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradients_match_finite_differences(case):
    cell = case.make(H)
    params32 = perturbed_params(cell, 7, D)  # init in float32, outside x64 mode (no recompiles)
    xs_np = np.random.default_rng(7).standard_normal((2, T, D))
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params32)
        xs = jnp.asarray(xs_np, jnp.float64)
        assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(params))

        def loss(p, x):  # outputs and final carry in one scalar
            carry, hs = scan_cell(cell, p, x, hoist_input=False)
            assert hs.dtype == jnp.float64
            return jnp.sum(hs) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))

        # the VJP w.r.t. (params, inputs) against central differences along a random direction
        check_grads(jax.jit(loss), (params, xs), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
