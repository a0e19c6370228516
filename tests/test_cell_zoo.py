"""The cell zoo (MGU, MUT1-3, minGRU, minLSTM, IndRNN, LRU, JANET) and the features that came with it.

Each claim is checked against something computed another way:

- the parallel form (``cell.parallel``, an associative scan) of minGRU and minLSTM (log space and plain)
  and of the LRU equals the step-by-step scan and a numpy loop of the equations: masked, forward and
  reverse, from an initial state with negative entries; gradients (float64) by params, inputs and the
  initial state included; the log-space minGRU over 500 steps, where the gate products underflow;
- ``linear_scan.linear_recurrence`` (real, complex) and ``log_linear_recurrence`` against a numpy loop;
- the LRU's initialisation (Orvieto et al. 2023) by its distributions, its argument checks, and its
  stability (a zero-input state decays as lambda^t);
- the LRU's ``emit`` under ``diagnose``: dL/dx_t against a hand-unrolled complex recurrence;
- JANET's chrono forget bias (also through ``configs/cell/janet.yaml``'s ``${task.seq_len}``);
- IndRNN's recurrent init, its ``recurrent_max`` clip (values and gradient) and its diagonal Jacobian;
- MUT1/MUT2 with no embedding when D == H, MUT3's input shape, MGU's one gate;
- every new config composed by Hydra, trained on two seeds under one jit (no retrace), and run
  bidirectional with 2 layers on a masked batch under the diagnostics, each sequence as if alone;
- ``model.param_budget``: ``hidden_size_for_budget`` against counts from ``model.init``'s shapes, the CLI's
  summary.json and config.yaml, and the ``rnnbench-cells`` catalogue.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import config_names
from test_cells import (
    assert_tree_close,
    np_lru_step,
    np_min_step,
    np_mut_step,
    np_sigmoid,
    random_carry,
    random_inputs,
    random_params,
)

from rnnbench.cells.indrnn import indrnn
from rnnbench.cells.janet import janet
from rnnbench.cells.linear_scan import linear_recurrence, log_linear_recurrence
from rnnbench.cells.lru import lru
from rnnbench.cells.lstm import lstm
from rnnbench.cells.mgu import mgu
from rnnbench.cells.minimal import mingru, minlstm
from rnnbench.cells.mut import mut
from rnnbench.config import build_cell, build_optimizer, build_task
from rnnbench.diagnostics import DiagnosticsOptions, diagnose
from rnnbench.model import count_params, hidden_size_for_budget, make_model, model_param_count
from rnnbench.scan import scan_cell
from rnnbench.tasks.base import Batch
from rnnbench.train import TrainState, make_train_step

B, T, D, H = 3, 6, 4, 5
LENGTHS = (6, 4, 2)  # right padding: the second and third sequences end early
NEW_CONFIGS = ["mgu", "mut1", "mut2", "mut3", "mingru", "minlstm", "indrnn", "lru", "janet"]
EPS32 = float(np.finfo(np.float32).eps)

# The test programs are tiny and run once or twice: compile them without XLA:CPU's slow backend
# optimisations (about 5x faster to compile; results agree to float rounding).
FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
    "xla_cpu_parallel_codegen_split_count": 1,
}
# The same for the CLI's subprocesses (the run's own programs).
FAST_XLA_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                  "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1")
# Cheap Jacobian settings: the tests here look at the gradient curves and the gates.
CHEAP = DiagnosticsOptions(jacobian_times=1, jacobian_spans=(1,), jacobian_batch=2, power_iters=2)


def _jit(fn, **kw):
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kw)


def _mask(lengths, steps):
    """``[len(lengths), steps]``: True on each sequence's real steps, False on the padding after them."""
    return np.arange(steps)[None, :] < np.asarray(lengths)[:, None]


def _np_scan(step, params, carry, xs, mask, reverse):
    """A numpy loop of ``step`` over ``xs [B, T, D]``, holding the state and zeroing the output on padding."""
    hs = [None] * xs.shape[1]
    for t in (reversed if reverse else iter)(range(xs.shape[1])):
        new, h = step(params, carry, xs[:, t])
        m = mask[:, t][:, None]
        carry, hs[t] = np.where(m, new, carry), np.where(m, h, 0.0)
    return carry, np.stack(hs, axis=1)


def _f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


_COMPOSED: dict = {}


def _composed(compose, *overrides):
    """``(cfg, cell_factory, bidirectional)`` of a composed config, built once per set of overrides."""
    if overrides not in _COMPOSED:
        cfg = compose(list(overrides))
        _COMPOSED[overrides] = (cfg, *build_cell(cfg.cell))
    return _COMPOSED[overrides]


# --- 1. parallel form == step by step ---------------------------------------------------------------

LINEAR_CELLS = {
    "mingru_log": (functools.partial(mingru, log_space=True), np_min_step("gru", True)),
    "mingru_plain": (functools.partial(mingru, log_space=False), np_min_step("gru", False)),
    "minlstm_log": (functools.partial(minlstm, log_space=True), np_min_step("lstm", True)),
    "minlstm_plain": (functools.partial(minlstm, log_space=False), np_min_step("lstm", False)),
    "lru_gelu": (functools.partial(lru, activation="gelu"), np_lru_step("gelu")),
    "lru_none": (functools.partial(lru, activation="none"), np_lru_step("none")),
}
MODES = ("parallel", "sequential")


@functools.cache
def _linear_case():
    """Each linear cell in both modes with shared generic params, inputs, mask and initial state."""
    cells = {name: tuple(make(H, mode=mode) for mode in MODES) for name, (make, _) in LINEAR_CELLS.items()}
    params, carries = {}, {}
    for i, (name, (par, _)) in enumerate(cells.items()):
        p = random_params(lambda c=par: c.init(jax.random.key(0), D), i)
        if "nu_log" in p:  # |lambda| = exp(-exp(nu_log)) ~ 0.87: the initial state is felt to the end
            p["nu_log"] = np.asarray(p["nu_log"]) - np.float32(2.0)
        params[name] = p
        carries[name] = np.float32(1.5) * np.asarray(random_carry(par, i, B))  # normal draws: negative entries too
    xs = np.asarray(random_inputs(0, (B, T, D)))
    return cells, params, carries, xs, _mask(LENGTHS, T)


def test_parallel_equals_sequential_and_numpy_forward_and_reverse():
    cells, params, carries, xs, mask = _linear_case()
    for name, (par, seq) in cells.items():
        assert par.parallel is not None and seq.parallel is None, name  # two code paths really compared
        assert np.any(np.asarray(carries[name]) < -0.5), name

    def run(params, carries, xs, mask):
        return {(name, reverse, mode): scan_cell(cell, params[name], xs, mask, reverse=reverse, carry=carries[name])
                for name, pair in cells.items() for reverse in (False, True) for mode, cell in zip(MODES, pair,
                                                                                                   strict=True)}

    out = jax.device_get(_jit(run)(params, carries, xs, mask))
    for name in cells:
        ref_step = LINEAR_CELLS[name][1]
        for reverse in (False, True):
            par, seq = out[name, reverse, "parallel"], out[name, reverse, "sequential"]
            assert_tree_close(par, seq, atol=1e-5, rtol=1e-5)
            expected = _np_scan(ref_step, _f64(params[name]), _f64(carries[name]), _f64(xs), mask, reverse)
            assert_tree_close(par, expected, atol=1e-5, rtol=1e-5)
            assert not np.any(np.asarray(par[1])[~mask]), "padding outputs zero"
        # the initial state is felt: from zeros the outputs differ
        zero_start = _np_scan(ref_step, _f64(params[name]), 0.0 * _f64(carries[name]), _f64(xs), mask, False)
        assert not np.allclose(zero_start[1], np.asarray(out[name, False, "parallel"][1]), atol=1e-3), name


def test_parallel_equals_sequential_gradients_float64():
    """d(loss)/d(params, inputs, initial state) of both forms agree to float64 rounding, masked, both ways."""
    cells, params, carries, xs, mask = _linear_case()
    rng = np.random.default_rng(11)
    w_out = rng.standard_normal((2, B, T, H))
    with jax.enable_x64(True):
        args = jax.tree.map(lambda a: np.asarray(a, np.float64), (params, carries, xs, w_out))

        def grads(params, carries, xs, w_out, mask):
            out = {}
            for name, pair in cells.items():
                for reverse in (False, True):
                    for mode, cell in zip(MODES, pair, strict=True):
                        def loss(p, c, x, cell=cell, reverse=reverse):
                            final, hs = scan_cell(cell, p, x, mask, reverse=reverse, carry=c)
                            return jnp.sum(hs * w_out[int(reverse)]) + jnp.sum(jnp.sin(final))

                        out[name, reverse, mode] = jax.grad(loss, argnums=(0, 1, 2))(params[name], carries[name], xs)
            return out

        g = jax.device_get(_jit(grads)(*args, mask))
    for name in cells:
        for reverse in (False, True):
            par, seq = g[name, reverse, "parallel"], g[name, reverse, "sequential"]
            assert all(a.dtype == np.float64 for a in jax.tree.leaves(par))
            assert_tree_close(par, seq, atol=1e-11, rtol=1e-9)
            g_params, g_carry, g_x = par
            assert np.all(np.abs(g_carry) > 0), f"{name}: the initial state reaches the loss"
            assert all(np.any(v != 0) for v in jax.tree.leaves(g_params)), name
            # padding never reaches the loss: the gradient by a padded input is exactly zero
            np.testing.assert_array_equal(g_x[~mask], 0.0)
            assert np.all(np.any(g_x[mask] != 0, axis=-1))


def test_log_space_mingru_stays_finite_and_equal_over_500_steps():
    """Over 500 steps the products of (1 - z_t) underflow float32 (checked below), which a log-space scan
    must survive: finite, equal to the step-by-step scan, forward, reverse and masked."""
    T_long = 500
    par, seq = mingru(H, mode="parallel"), mingru(H, mode="sequential")
    params = random_params(lambda: par.init(jax.random.key(0), D), 5, scale=1.0)
    xs = np.float32(2.0) * np.asarray(random_inputs(5, (2, T_long, D)))
    carry = np.float32(3.0) * np.asarray(random_carry(par, 5, 2))
    mask = _mask((T_long, 321), T_long)
    # sum_t log(1 - z_t) over the sequence, in float64: far below log of float32's smallest subnormal
    k_z = np.asarray(xs, np.float64) @ np.asarray(params["w_x"], np.float64)[:, :H] + np.asarray(params["b"])[:H]
    assert np.min(np.sum(np.log1p(-np_sigmoid(k_z)), axis=1)) < math.log(np.finfo(np.float32).smallest_subnormal)

    def run(p, c, x, m):
        return {(mode, reverse): scan_cell(cell, p, x, m, reverse=reverse, carry=c)
                for mode, cell in (("parallel", par), ("sequential", seq)) for reverse in (False, True)}

    out = jax.device_get(_jit(run)(params, carry, xs, mask))
    for reverse in (False, True):
        p_final, p_hs = out["parallel", reverse]
        assert np.all(np.isfinite(p_hs)) and np.all(np.isfinite(p_final))
        # The state is a convex combination of the last state and a candidate, so each step's float32
        # rounding (~eps relative) is carried on with a factor < 1: after T steps at most ~T eps = 6e-5.
        assert_tree_close(out["parallel", reverse], out["sequential", reverse], atol=1e-4, rtol=1e-4)


# --- 2. the linear_scan helpers against a numpy loop ---------------------------------------------------------


def _np_recurrence(a, b, h0, mask, reverse):
    """h_t = a_t h_{t-1} + b_t over time-major ``b [T, B, N]``; held (and output 0) where mask is False."""
    a = np.broadcast_to(a, b.shape)
    mask = np.ones(b.shape[:2], bool) if mask is None else mask
    h, hs = h0, np.zeros_like(b)
    for t in (reversed if reverse else iter)(range(b.shape[0])):
        m = mask[t][:, None]
        new = a[t] * h + b[t]
        h, hs[t] = np.where(m, new, h), np.where(m, new, 0)
    return h, hs


def test_linear_scan_helpers_equal_a_numpy_loop():
    Tn, Bn, N = 7, 3, 4
    rng = np.random.default_rng(21)
    mask = _mask((7, 5, 1), Tn).T  # time-major [T, B]
    real_a = rng.uniform(-1.2, 1.2, (Tn, Bn, N))
    real_b = rng.standard_normal((Tn, Bn, N))
    cplx_a = rng.uniform(0.5, 1.0, (Tn, Bn, N)) * np.exp(1j * rng.uniform(0, 2 * np.pi, (Tn, Bn, N)))
    cplx_b = rng.standard_normal((Tn, Bn, N)) + 1j * rng.standard_normal((Tn, Bn, N))
    lam = rng.uniform(0.5, 1.0, N) * np.exp(1j * rng.uniform(0, 2 * np.pi, N))  # time-invariant, as the LRU's
    log_a = np.log(rng.uniform(0.05, 1.0, (Tn, Bn, N)))  # a in (0, 1), b > 0
    log_b = rng.normal(0.0, 1.5, (Tn, Bn, N))
    h0 = 2.0 * rng.standard_normal((Bn, N))  # negative entries too, also for the log form
    h0c = h0 + 1j * rng.standard_normal((Bn, N))
    cases = {
        "real": (linear_recurrence, (real_a, real_b, h0), (real_a, real_b, h0)),
        "complex": (linear_recurrence, (cplx_a, cplx_b, h0c), (cplx_a, cplx_b, h0c)),
        "complex_invariant_a": (linear_recurrence, (lam, cplx_b, h0c), (lam, cplx_b, h0c)),
        "log": (log_linear_recurrence, (log_a, log_b, h0), (np.exp(log_a), np.exp(log_b), h0)),
    }
    to32 = {np.dtype(np.float64): np.float32, np.dtype(np.complex128): np.complex64}
    inputs = {name: tuple(jnp.asarray(x, to32[x.dtype]) for x in args) for name, (_, args, _) in cases.items()}

    def run(inputs, mask):
        return {(name, masked, reverse): cases[name][0](*inputs[name], mask if masked else None, reverse)
                for name in cases for masked in (False, True) for reverse in (False, True)}

    out = _jit(run)(inputs, jnp.asarray(mask))
    for (name, masked, reverse), (final, hs) in out.items():
        expected = _np_recurrence(*cases[name][2], mask if masked else None, reverse)
        assert final.dtype == hs.dtype == inputs[name][1].dtype
        for got, want in zip((final, hs), expected, strict=True):
            np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5, err_msg=str((name, masked,
                                                                                                   reverse)))
        if masked:  # the first sequence has no padding; the third is one step long
            assert not np.any(np.asarray(hs)[~mask])


# --- 3. the LRU's initialisation, checks and stability ----------------------------------------------


def _ks_uniform(samples, lo, hi):
    """Kolmogorov-Smirnov distance between the samples' empirical CDF and U[lo, hi]."""
    s = np.sort(np.asarray(samples, np.float64))
    cdf = (s - lo) / (hi - lo)
    n = s.size
    return max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))


def _ks_bound(n):
    """The KS distance a true sample of size n exceeds with probability 1e-6 (Dvoretzky-Kiefer-Wolfowitz).

    The draws are fixed (seeded), so this is not about flakiness: a wrong distribution of the kind a bug
    gives (|lambda| rather than |lambda|^2 uniform on a wide ring: KS ~ 0.2) lies far above it."""
    return math.sqrt(math.log(2 / 1e-6) / (2 * n))


@pytest.mark.parametrize(("r_min", "r_max", "max_phase"), [(0.1, 0.9, 3.0), (0.9, 0.999, 2 * math.pi)])
def test_lru_init_follows_orvieto_et_al(r_min, r_max, max_phase):
    N, Din, Hout = 4096, 64, 64
    cell = lru(Hout, state_size=N, r_min=r_min, r_max=r_max, max_phase=max_phase)
    p = _jit(cell.init, static_argnums=1)(jax.random.key(1), Din)
    p = _f64(p)
    assert {k: v.shape for k, v in p.items()} == {
        "nu_log": (N,), "theta_log": (N,), "gamma_log": (N,), "b_re": (Din, N), "b_im": (Din, N),
        "c_re": (N, Hout), "c_im": (N, Hout), "d": (Din, Hout)}
    modulus = np.exp(-np.exp(p["nu_log"]))
    # float32 rounding of nu_log moves |lambda| by ~ eps |log r| r: a hair outside the ring at most
    slack = 4 * EPS32
    assert r_min - slack <= modulus.min() and modulus.max() <= r_max + slack
    # |lambda|^2 uniform on [r_min^2, r_max^2]: KS distance and mean within 5 standard errors
    sq = modulus**2
    assert _ks_uniform(sq, r_min**2, r_max**2) < _ks_bound(N)
    width = r_max**2 - r_min**2
    assert abs(sq.mean() - (r_min**2 + r_max**2) / 2) < 5 * width / math.sqrt(12 * N)
    assert abs(sq.var() - width**2 / 12) < 5 * width**2 / math.sqrt(180 * N)  # SE of the variance: w^2 / sqrt(180 n)
    # phase uniform on [0, max_phase]
    phase = np.exp(p["theta_log"])
    assert 0.0 <= phase.min() and phase.max() <= max_phase * (1 + slack)
    assert _ks_uniform(phase, 0.0, max_phase) < _ks_bound(N)
    assert abs(phase.mean() - max_phase / 2) < 5 * max_phase / math.sqrt(12 * N)
    # gamma = sqrt(1 - |lambda|^2) up to float32 rounding of 1 - |lambda|^2 (a few eps over 1 - r^2)
    gamma = np.exp(p["gamma_log"])
    np.testing.assert_allclose(gamma, np.sqrt(1.0 - sq), rtol=2 * EPS32 / (1.0 - r_max**2) + 1e-6)
    # B, C, D: normal with std 1/sqrt(2 D), 1/sqrt(N), 1/sqrt(D). The sample std of n normal draws has
    # relative standard error 1/sqrt(2 n); 5 of them is 0.7% for n = 2^18 and 5.5% for d's n = 4096.
    for name, std in (("b_re", 1 / math.sqrt(2 * Din)), ("b_im", 1 / math.sqrt(2 * Din)),
                      ("c_re", 1 / math.sqrt(N)), ("c_im", 1 / math.sqrt(N)), ("d", 1 / math.sqrt(Din))):
        n = p[name].size
        assert abs(p[name].std() / std - 1) < 5 / math.sqrt(2 * n), (name, p[name].std(), std)
        assert abs(p[name].mean()) < 5 * std / math.sqrt(n), name
    assert not np.allclose(p["b_re"], p["b_im"]) and not np.allclose(p["c_re"], p["c_im"])


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"r_min": 0.95, "r_max": 0.9}, "r_min=0.95"),
    ({"r_min": 0.9, "r_max": 0.9}, "r_max=0.9"),
    ({"r_max": 1.5}, "r_max=1.5"),
    ({"r_min": -0.1}, "r_min=-0.1"),
    ({"activation": "swish"}, "swish"),
    ({"mode": "fast"}, "fast"),
    ({"state_size": 0}, "state_size=0"),
    ({"state_size": -3}, "state_size=-3"),
    ({"state_size": 2.5}, "state_size=2.5"),
    ({"max_phase": 0.0}, "max_phase=0.0"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_lru_rejects_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        lru(4, **kwargs)


def test_lru_state_decays_as_lambda_power_t_for_any_params():
    """Zero input: x_t = lambda^t x_0 with |lambda| = exp(-exp(nu_log)) < 1 whatever nu_log is."""
    Tz, N = 256, 6
    cell = lru(3, state_size=N, mode="parallel")
    params = random_params(lambda: cell.init(jax.random.key(0), 2), 9, scale=2.0)
    params["nu_log"] = jnp.asarray([-9.0, -5.0, -2.0, 0.0, 1.5, 6.0], jnp.float32)  # |lambda| from 1 - 1e-4 to 0
    nu = np.asarray(params["nu_log"], np.float64)
    state0 = np.asarray(random_carry(cell, 9, 2))
    final, ys = jax.device_get(_jit(lambda p, c, x: scan_cell(cell, p, x, carry=c))(params, state0,
                                                                                 np.zeros((2, Tz, 2), np.float32)))
    lam = np.exp(-np.exp(nu) + 1j * np.exp(np.asarray(params["theta_log"], np.float64)))
    x0 = np.asarray(state0[:, :N], np.float64) + 1j * np.asarray(state0[:, N:], np.float64)
    expected = lam**Tz * x0
    got = np.asarray(final[:, :N], np.float64) + 1j * np.asarray(final[:, N:], np.float64)
    # float32 rounding of lambda (a relative eps) compounds over Tz steps: Tz eps |x0| at most
    np.testing.assert_allclose(got, expected, rtol=0, atol=2 * Tz * EPS32 * np.abs(x0).max())
    assert np.all(np.abs(lam) < 1) and np.all(np.abs(got) < np.abs(x0))
    assert np.all(np.isfinite(np.asarray(ys)))


# --- 4. the LRU's emit under the diagnostics ------------------------------------------------------------


def _erf_gelu(v):
    return 0.5 * v * (1.0 + jax.scipy.special.erf(v / math.sqrt(2.0)))


def _lru_model_loss(params, x, mask, y, eps):
    """Orvieto et al.'s recurrence unrolled by hand in complex jnp, with a perturbation eps_t [B, 2N] added
    to the (real, imaginary) state after each real step; readout at each sequence's last real step; MSE."""
    cp = params["layers"][0]
    N = cp["nu_log"].shape[0]
    lam = jnp.exp(-jnp.exp(cp["nu_log"]) + 1j * jnp.exp(cp["theta_log"]))[None, :]
    gamma = jnp.exp(cp["gamma_log"])[None, :]
    b_c, c_c = cp["b_re"] + 1j * cp["b_im"], cp["c_re"] + 1j * cp["c_im"]
    state = jnp.zeros((x.shape[0], N), jnp.complex64)
    last = jnp.zeros((x.shape[0], c_c.shape[1]), x.dtype)
    for t in range(x.shape[1]):
        u, m = x[:, t], mask[:, t][:, None]
        new = lam * state + gamma * (u @ b_c) + (eps[t][:, :N] + 1j * eps[t][:, N:])
        state = jnp.where(m, new, state)
        last = jnp.where(m, _erf_gelu(jnp.real(state @ c_c) + u @ cp["d"]), last)
    pred = last @ params["readout"]["w"] + params["readout"]["b"][None, :]
    return jnp.mean(jnp.square(pred - y))


def test_lru_gradient_curve_reads_emit_of_the_nudged_state():
    N, O = 4, 2
    model = make_model(functools.partial(lru, state_size=N, mode="parallel"), hidden_size=H, output_dim=O,
                       readout="last")
    params = random_params(lambda: model.init(jax.random.key(0), D), 31, scale=0.7)
    params["layers"][0]["nu_log"] = np.asarray(params["layers"][0]["nu_log"]) - np.float32(2.0)  # |lambda| ~ 0.87
    rng = np.random.default_rng(31)
    mask = _mask(LENGTHS, T)
    batch = Batch(random_inputs(31, (B, T, D)), jnp.asarray(rng.standard_normal((B, O)), jnp.float32),
                  jnp.asarray(mask))

    def mse(pred, b):
        return jnp.mean(jnp.square(pred - b.y))

    def both(params, batch):
        out = diagnose(model, mse, params, batch, jax.random.key(0), CHEAP)
        eps = jnp.zeros((T, B, 2 * N), jnp.float32)
        g = jax.grad(lambda e: _lru_model_loss(params, batch.x, batch.mask, batch.y, e))(eps)
        return out, jnp.sqrt(jnp.sum(jnp.square(g), axis=(1, 2)))

    out, ref = jax.device_get(_jit(both)(params, batch))
    curve = np.asarray(out["grad_norm_per_step"], np.float64)
    assert curve.shape == (T,)
    np.testing.assert_allclose(curve, ref, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(out["grad_norm_per_step_state"][-1]), curve, rtol=1e-6)
    assert np.all(curve[:-1] > 1e-4 * curve.max()), "dL/dx_t reaches every step before the last"
    assert curve[-1] > 0, "the last output is emit(x_T): the last state is read"


# --- 5. JANET's chrono initialisation -----------------------------------------------------------------------


def test_janet_chrono_forget_bias():
    Hn, t_max = 2000, 50
    # identity recurrent blocks: an orthogonal draw of [2000, 2000] blocks would take a minute here
    init = _jit(janet(Hn, chrono_t_max=t_max, recurrent_init="identity").init, static_argnums=1)
    b = np.asarray(init(jax.random.key(0), 3)["b"], np.float64)
    b_f, b_c = b[:Hn], b[Hn:]
    # b_f = log(u), u ~ U[1, T_max - 1] (Tallec & Ollivier 2018)
    assert np.log(1.0) <= b_f.min() and b_f.max() <= np.log(t_max - 1) + 1e-6
    u = np.exp(b_f)
    assert _ks_uniform(u, 1.0, t_max - 1.0) < _ks_bound(Hn)
    # the extremes: P(all of Hn draws avoid the top 1% of the range) = 0.99^2000 ~ 2e-9
    assert u.max() > t_max - 1 - 0.01 * (t_max - 2) and u.min() < 1 + 0.01 * (t_max - 2)
    np.testing.assert_array_equal(b_c, 0.0)
    other = np.asarray(init(jax.random.key(1), 3)["b"])[:Hn]
    assert not np.allclose(other, b_f), "a different key gives different forget biases"
    # no chrono: the constant forget_bias
    for kwargs, value in (({}, 1.0), ({"forget_bias": 2.5}, 2.5)):
        b = np.asarray(janet(4, chrono_t_max=None, recurrent_init="identity", **kwargs).init(jax.random.key(0), 3)["b"])
        np.testing.assert_array_equal(b, np.r_[np.full(4, value), np.zeros(4)].astype(np.float32))
    for bad in (2, 1, 0, -5):
        with pytest.raises(ValueError, match=rf"chrono_t_max={bad}\b"):
            janet(4, chrono_t_max=bad)


def test_lstm_chrono_forget_and_input_bias(compose):
    """Tallec & Ollivier 2018, eq. 16: b_f ~ log U(1, T_max - 1), b_i = -b_f, the g and o biases 0."""
    Hn, t_max = 2000, 80
    init = _jit(lstm(Hn, forget_bias="chrono", chrono_t_max=t_max, recurrent_init="identity").init, static_argnums=1)
    b = np.asarray(init(jax.random.key(0), 3)["b"], np.float64)
    b_i, b_f, b_g, b_o = np.split(b, 4)  # gate order i, f, g, o (flax's LSTMCell)
    assert np.log(1.0) <= b_f.min() and b_f.max() <= np.log(t_max - 1) + 1e-6
    assert _ks_uniform(np.exp(b_f), 1.0, t_max - 1.0) < _ks_bound(Hn)
    np.testing.assert_array_equal(b_i, -b_f)
    np.testing.assert_array_equal(b_g, 0.0)
    np.testing.assert_array_equal(b_o, 0.0)
    # the characteristic forgetting time 1 / (1 - sigmoid(b_f)) = 1 + u spans 2..T_max
    t_char = 1.0 / (1.0 - 1.0 / (1.0 + np.exp(-b_f)))
    np.testing.assert_allclose(t_char, 1.0 + np.exp(b_f), rtol=1e-6)
    # without chrono: the constant forget_bias on f only
    b = np.asarray(lstm(3, forget_bias=0.0, recurrent_init="identity").init(jax.random.key(0), 2)["b"])
    np.testing.assert_array_equal(b, np.zeros(12, np.float32))
    plain = lstm(3, forget_bias=0.5, chrono_t_max=50, recurrent_init="identity")  # chrono_t_max unused here
    np.testing.assert_array_equal(
        np.asarray(plain.init(jax.random.key(0), 2)["b"]),
        np.r_[np.zeros(3), np.full(3, 0.5), np.zeros(6)].astype(np.float32))
    for bad in (2, 0, True, None):
        with pytest.raises(ValueError, match=rf"chrono_t_max={bad}\b"):
            lstm(4, forget_bias="chrono", chrono_t_max=bad)
    with pytest.raises(ValueError, match=r"forget_bias='crono' must be a number or 'chrono'"):
        lstm(4, forget_bias="crono")
    # through the config, as the forget_bias study sets it: T_max is the task's length
    cfg, factory, _ = _composed(compose, "cell=lstm", "cell.forget_bias=chrono", "task.seq_len=40")
    assert cfg.cell.chrono_t_max == 40
    b_f = np.split(np.asarray(factory(Hn, recurrent_init="identity").init(jax.random.key(1), 2)["b"]), 4)[1]
    assert b_f.max() <= np.log(39) + 1e-6 and b_f.max() > np.log(38)


def test_janet_config_chrono_follows_the_task_length(compose):
    cfg, factory, _ = _composed(compose, "cell=janet", "task.seq_len=40")
    assert cfg.cell.chrono_t_max == 40
    Hn = 2000
    params = _jit(factory(Hn, recurrent_init="identity").init, static_argnums=1)(jax.random.key(2), 2)
    b_f = np.exp(np.asarray(params["b"], np.float64)[:Hn])
    assert b_f.min() >= 1.0 - 1e-6 and b_f.max() <= 39.0 * (1 + 1e-6)
    assert b_f.max() > 39.0 - 0.01 * 38  # as above: the top 1% of U[1, 39] is reached (else P ~ 2e-9)


# --- 6. IndRNN ------------------------------------------------------------------------------------------


def test_indrnn_recurrent_init_is_uniform_on_its_range():
    for lo, hi in ((0.0, 1.0), (-0.3, 0.8)):
        kwargs = {} if (lo, hi) == (0.0, 1.0) else {"recurrent_init_min": lo, "recurrent_init_max": hi}
        p = _jit(indrnn(4096, **kwargs).init, static_argnums=1)(jax.random.key(3), 2)
        u = np.asarray(p["u"], np.float64)
        assert lo <= u.min() and u.max() <= hi
        assert _ks_uniform(u, lo, hi) < _ks_bound(u.size)
        np.testing.assert_array_equal(p["b"], 0.0)


def test_indrnn_recurrent_max_clips_values_and_gradient():
    bound = 0.7
    cell = indrnn(H, recurrent_max=bound)
    params = random_params(lambda: cell.init(jax.random.key(0), D), 4)
    params["u"] = jnp.asarray([1.5, -2.0, 0.3, 0.69, -0.5], jnp.float32)
    clipped = dict(params, u=np.clip(np.asarray(params["u"]), -bound, bound))
    free = indrnn(H)  # no bound: runs u as given
    xs = random_inputs(4, (B, T, D))
    carry = np.abs(np.asarray(random_carry(cell, 4, B)))

    def loss(cell, p):
        _, hs = scan_cell(cell, p, xs, carry=carry)
        return jnp.sum(hs * jnp.arange(1, H + 1, dtype=jnp.float32)[None, None, :])

    run = _jit(lambda p, q: (jax.value_and_grad(functools.partial(loss, cell))(p),
                             jax.value_and_grad(functools.partial(loss, free))(q), loss(free, p)))
    (value, grads), (value_ref, grads_ref), value_unbounded = run(params, clipped)
    np.testing.assert_allclose(value, value_ref, rtol=1e-6)
    g_u = np.asarray(grads["u"])
    beyond = np.abs(np.asarray(params["u"])) > bound
    np.testing.assert_array_equal(g_u[beyond], 0.0)
    np.testing.assert_allclose(g_u[~beyond], np.asarray(grads_ref["u"])[~beyond], rtol=1e-5)
    assert np.all(g_u[~beyond] != 0)
    assert not np.allclose(value, value_unbounded), "the bound changes the output"


@pytest.mark.parametrize(("activation", "recurrent_max"), [("relu", None), ("relu", 0.6), ("tanh", None)])
def test_indrnn_one_step_jacobian_is_diagonal(activation, recurrent_max):
    cell = indrnn(H, activation=activation, recurrent_max=recurrent_max)
    params = random_params(lambda: cell.init(jax.random.key(0), D), 6, scale=1.0)
    h = random_carry(cell, 6, B)
    gx = cell.project_input(params, random_inputs(6, (B, D)))
    jac = np.asarray(jax.jacobian(lambda s: cell.recurrence(params, s, gx)[0])(h))  # [B, H, B, H]
    u = np.asarray(params["u"], np.float64)
    if recurrent_max is not None:
        u = np.clip(u, -recurrent_max, recurrent_max)
    pre = np.asarray(gx, np.float64) + u * np.asarray(h, np.float64)
    slope = (pre > 0).astype(float) if activation == "relu" else 1.0 - np.tanh(pre) ** 2
    expected = np.zeros((B, H, B, H))
    for b in range(B):
        expected[b, :, b, :] = np.diag(slope[b] * u)
    np.testing.assert_allclose(jac, expected, rtol=1e-5, atol=1e-6)
    if activation == "relu":
        assert np.any(pre < 0) and np.any(pre > 0)  # both branches of relu' are exercised


# --- 7. MUT1-3 shapes and MGU's gate ----------------------------------------------------------------------


@pytest.mark.parametrize("variant", [1, 2, 3])
def test_mut_with_input_width_equal_to_hidden_size(variant):
    cell = mut(H, variant=variant)
    params = random_params(lambda: cell.init(jax.random.key(0), H), 8)  # D == H
    n_x = 2 if variant in (1, 2) else 3  # MUT1/2 read x itself where they would read its embedding
    assert params["w_x"].shape == (H, n_x * H)
    assert params["w_h"].shape == (H, (2 if variant == 1 else 3) * H)
    # D != H: three input blocks for every variant (MUT1/2's raw-x block is the embedding E [D, H])
    assert jax.eval_shape(lambda: cell.init(jax.random.key(0), D))["w_x"].shape == (D, 3 * H)
    carry, x = random_carry(cell, 8, B), random_inputs(8, (B, H))
    new, h = cell.step(params, carry, x)
    ref_new, ref_h = np_mut_step(variant)(_f64(params), _f64(carry), np.asarray(x, np.float64))
    assert_tree_close((new, h), (ref_new, ref_h), atol=1e-5, rtol=1e-5)


def test_mgu_gate_is_its_forget_gate():
    cell = mgu(H)
    params = random_params(lambda: cell.init(jax.random.key(0), D), 9)
    carry, x = random_carry(cell, 9, B), random_inputs(9, (B, D))
    gates = cell.gates(params, carry, cell.project_input(params, x))
    assert list(gates) == ["forget"]
    p = _f64(params)
    pre = np.asarray(x, np.float64) @ p["w_x"][:, :H] + np.asarray(carry, np.float64) @ p["w_h"][:, :H] + p["b"][:H]
    np.testing.assert_allclose(np.asarray(gates["forget"]), np_sigmoid(pre), rtol=1e-5, atol=1e-6)
    # ... and it is the gate the step uses: h = (1 - f) h + f h~ with h~ from the numpy equations
    f = np_sigmoid(pre)
    cand = np.tanh(np.asarray(x, np.float64) @ p["w_x"][:, H:] + (f * np.asarray(carry)) @ p["w_h"][:, H:] + p["b"][H:])
    np.testing.assert_allclose(np.asarray(cell.step(params, carry, x)[1]), (1 - f) * np.asarray(carry) + f * cand,
                               rtol=1e-5, atol=1e-5)


# --- 8. every new config through Hydra: training, bidirectional stacks, masks, diagnostics -------------------


TINY_T = 5


def _tiny(name):
    """The overrides of section 8: the adding task, tiny T and H."""
    return f"cell={name}", "task=adding", f"task.seq_len={TINY_T}", "model.hidden_size=3"


def test_new_configs_compose_and_train_two_seeds_under_one_jit(compose):
    """The nine new configs as the CLI builds them, 3 steps on two seeds (vmapped) in ONE jitted program;
    each config's step is traced exactly once."""
    assert set(NEW_CONFIGS) <= set(config_names("cell"))
    runs, counts = {}, {}
    for name in NEW_CONFIGS:
        cfg, factory, bidirectional = _composed(compose, *_tiny(name))
        assert not bidirectional
        assert factory(3).name == name
        task = build_task(cfg.task)
        optimizer = build_optimizer(cfg.optim, total_steps=3)
        model = make_model(factory, hidden_size=cfg.model.hidden_size, output_dim=task.output_dim,
                           readout=task.readout)
        runs[name] = (model, task, optimizer, make_train_step(model, task, optimizer, dropout=False))
        counts[name] = model_param_count(factory, 3, input_dim=task.input_dim, output_dim=task.output_dim,
                                         readout=task.readout)
    traces = dict.fromkeys(NEW_CONFIGS, 0)

    def one_seed(name, state, key):
        traces[name] += 1
        _, task, _, train_step = runs[name]
        return train_step(state, task.sample(key, 4), key)

    step = _jit(lambda states, keys: {n: jax.vmap(functools.partial(one_seed, n))(st, keys)
                                      for n, st in states.items()})

    def init_one(name, key):
        model, task, optimizer, _ = runs[name]
        params = model.init(key, task.input_dim)
        return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    keys = _jit(lambda: [jax.random.split(jax.random.key(t), 2) for t in range(4)])()  # init, then 3 steps
    states = _jit(lambda keys: {n: jax.vmap(functools.partial(init_one, n))(keys) for n in runs})(keys[0])
    init = jax.device_get(states)
    for name in runs:  # a real init has the size that model_param_count reads from the shapes alone
        assert count_params(jax.tree.map(lambda a: a[0], init[name].params)) == counts[name], name
    losses = []
    for t in range(3):
        out = step(states, keys[t + 1])
        states = {n: st for n, (st, _) in out.items()}
        losses.append({n: np.asarray(metrics["loss"]) for n, (_, metrics) in out.items()})
    states = jax.device_get(states)
    assert step._cache_size() == 1, "the train step was retraced"
    assert traces == dict.fromkeys(NEW_CONFIGS, 1), traces
    for name in NEW_CONFIGS:
        loss = np.stack([row[name] for row in losses])
        assert loss.shape == (3, 2) and np.all(np.isfinite(loss)), (name, loss)
        assert not np.allclose(loss[:, 0], loss[:, 1]), f"{name}: two seeds, one run"
        np.testing.assert_array_equal(states[name].step, [3, 3])
        assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(states[name].params)), name
        moved = jax.tree.map(lambda a, b: bool(np.all(np.any((a != b).reshape(2, -1), axis=1))),
                             init[name].params, states[name].params)
        assert all(jax.tree.leaves(moved)), f"{name}: some parameter did not train in some seed: {moved}"


def test_new_configs_bidirectional_two_layers_masked_under_diagnostics(compose):
    """Each new config, bidirectional with 2 layers: ``diagnose`` on a masked batch, and each sequence's
    output equals the model run on that sequence alone (no padding, no mask). One jitted program."""
    Tm, lengths = TINY_T, (TINY_T, 3, 2)
    mask = _mask(lengths, Tm)
    models = {}
    for name in NEW_CONFIGS:
        cfg, factory, _ = _composed(compose, *_tiny(name))  # the configs of the test above
        task = build_task(cfg.task)
        model = make_model(factory, hidden_size=cfg.model.hidden_size, output_dim=task.output_dim,
                           readout=task.readout, num_layers=2, bidirectional=True)
        params = random_params(lambda m=model, d=task.input_dim: m.init(jax.random.key(0), d), 41, scale=0.7)
        models[name] = (model, task, params)
    x = random_inputs(41, (len(lengths), Tm, 2))
    batch = Batch(x, jnp.asarray(np.random.default_rng(41).uniform(0, 2, (len(lengths), 1)), jnp.float32),
                  jnp.asarray(mask))

    def run(all_params, batch):
        out = {}
        for name, (model, task, _) in models.items():
            p = all_params[name]
            alone = [model.apply(p, batch.x[i : i + 1, :n]) for i, n in enumerate(lengths)]
            out[name] = (diagnose(model, task.loss, p, batch, jax.random.key(1), CHEAP),
                         model.apply(p, batch.x, batch.mask), jnp.concatenate(alone, axis=0))
        return out

    out = jax.device_get(_jit(run)({n: m[2] for n, m in models.items()}, batch))
    for name, (model, _, params) in models.items():
        diag, masked, alone = out[name]
        assert masked.shape == (len(lengths), 1)
        np.testing.assert_allclose(masked, alone, rtol=1e-5, atol=1e-6, err_msg=name)
        curve = np.asarray(diag["grad_norm_per_step"])
        assert curve.shape == (Tm,) and np.all(np.isfinite(curve)), (name, curve)
        assert np.all(curve > 0), (name, curve)  # both directions read every step of the longest sequence
        cell = model.layers[0].forward
        if cell.gates is None:
            expected = set()
        else:
            p0 = params["layers"][0]["fwd"]
            gx = jax.eval_shape(cell.project_input, p0, jax.ShapeDtypeStruct((1, 2), jnp.float32))
            expected = set(jax.eval_shape(cell.gates, p0, cell.initial_carry((1,)), gx))
            assert expected, name
        assert len(diag["gates"]) == 2, name
        for layer in diag["gates"]:
            assert set(layer) == {"fwd", "bwd"}, name  # bidirectional
            for gates in layer.values():
                assert set(gates) == expected, (name, set(gates))
                for stats in gates.values():
                    for v in stats.values():
                        v = np.asarray(v)
                        assert v.shape == (Tm,) and np.all((v >= 0) & (v <= 1)), (name, v)


# --- 9. model.param_budget ---------------------------------------------------------------------------------


def _count(factory, hidden, num_layers, bidirectional, input_dim=2):
    """Parameters of the model from its init's shapes, summed here (not by model_param_count)."""
    model = make_model(factory, hidden_size=hidden, output_dim=1, readout="last", num_layers=num_layers,
                       bidirectional=bidirectional)
    shapes = jax.eval_shape(lambda k: model.init(k, input_dim), jax.random.key(0))
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


@pytest.mark.parametrize("name", config_names("cell"))
def test_hidden_size_for_budget_is_the_nearest(compose, name):
    _, factory, bidirectional = _composed(compose, f"cell={name}")
    for num_layers, budget in ((1, 5_000), (1, 40_000), (2, 5_000)):
        hidden, count = hidden_size_for_budget(factory, budget, input_dim=2, output_dim=1, readout="last",
                                               num_layers=num_layers, bidirectional=bidirectional)
        counts = {h: _count(factory, h, num_layers, bidirectional) for h in (hidden - 1, hidden, hidden + 1)}
        case = (name, num_layers, budget, hidden, counts)
        assert count == counts[hidden], case
        off = abs(count - budget)
        assert off <= abs(counts[hidden - 1] - budget) and off <= abs(counts[hidden + 1] - budget), case
        # Within 5%, unless one hidden unit is worth more than 10% of the budget (2 layers of FGR at 5000:
        # 4597 at H=12, 5370 at H=13); then the nearest is at most half a step away.
        half_step = max(counts[hidden] - counts[hidden - 1], counts[hidden + 1] - counts[hidden]) / 2
        assert off <= max(0.05 * budget, half_step), case
        if num_layers == 1:
            assert off <= 0.05 * budget, case
    # A budget below the smallest model: H = 1
    smallest = _count(factory, 1, 1, bidirectional)
    assert smallest > 1
    assert hidden_size_for_budget(factory, smallest - 1, input_dim=2, output_dim=1, readout="last",
                                  bidirectional=bidirectional) == (1, smallest)


@pytest.mark.parametrize("variant", [1, 2])
def test_hidden_size_for_budget_across_the_mut_embedding_drop(variant):
    """MUT1/MUT2 lose their embedding block at H == D, so their count dips there (the docstring's "small
    steps where a cell drops a block"); the hidden size nearest the budget must still be found (ties to the
    smaller H), here with D = 32, a common embedding width. The first budget is met exactly by H = D-3."""
    Din = 32
    factory = functools.partial(mut, variant=variant)
    counts = {h: _count(factory, h, 1, False, input_dim=Din) for h in range(Din - 8, Din + 6)}
    assert counts[Din] < counts[Din - 1]  # the dip
    # Below D-8 and above D+5 the counts only move further from these budgets: the nearest is in `counts`.
    assert all(counts[h] < counts[h + 1] for h in counts if h + 1 in counts and h + 1 != Din)
    for budget in np.linspace(counts[Din - 3], counts[Din + 1], 4).round().astype(int).tolist():
        nearest = min(counts, key=lambda h: (abs(counts[h] - budget), h))
        got = hidden_size_for_budget(factory, budget, input_dim=Din, output_dim=1, readout="last")
        assert got == (nearest, counts[nearest]), (budget, got, counts)


# --- 10. the CLI: model.param_budget, rnnbench-cells ------------------------------------------------------------


def _env():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled", "XLA_FLAGS": FAST_XLA_FLAGS}
    env.pop("RNNBENCH_DEBUG", None)
    return env


def _cells_cli():
    return os.path.join(os.path.dirname(sys.executable), "rnnbench-cells")


@pytest.fixture(scope="module", autouse=True)
def _cli_processes(request, tmp_path_factory):
    """Every subprocess of section 10, started when this module starts (when a CLI test is selected): they
    compile in their own processes, on the second core, while the tests before them run."""
    if not any("cli_runs" in item.fixturenames for item in request.session.items
               if getattr(item, "module", None) is request.module):
        yield None
        return
    tmp = tmp_path_factory.mktemp("cli")
    run_dir, bad_dir = tmp / "run", tmp / "bad"
    common = ["cell=gru", "task=adding", "task.seq_len=10", "train.steps=2", "train.eval_every=2",
              "train.eval_size=8", "train.batch_size=4", "diagnostics.every=0", "logger=none"]
    commands = {
        "run": [sys.executable, "-m", "rnnbench", *common, "model.param_budget=3000", f"hydra.run.dir={run_dir}"],
        "budget0": [sys.executable, "-m", "rnnbench", *common, "model.param_budget=0", f"hydra.run.dir={bad_dir}"],
        "cells": [_cells_cli(), "--input-size", "2", "--hidden-size", "8", "--budget", "2000"],
        "cells_h0": [_cells_cli(), "--hidden-size", "0"],
        "cells_unknown": [_cells_cli(), "nosuchcell"],
    }
    procs = {}
    for key, cmd in commands.items():
        with open(tmp / f"{key}.out", "w") as out, open(tmp / f"{key}.err", "w") as err:
            procs[key] = subprocess.Popen(cmd, cwd=tmp, env=_env(), stdout=out, stderr=err)
    yield tmp, commands, procs, run_dir, bad_dir
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def cli_runs(_cli_processes):
    """The subprocesses' results: ``{name: CompletedProcess}``, the run directory and the bad run's."""
    tmp, commands, procs, run_dir, bad_dir = _cli_processes
    results = {}
    for key, p in procs.items():
        p.wait(timeout=300)
        results[key] = subprocess.CompletedProcess(commands[key], p.returncode, (tmp / f"{key}.out").read_text(),
                                                   (tmp / f"{key}.err").read_text())
    return results, run_dir, bad_dir


def test_cli_param_budget_sizes_the_run(cli_runs, compose):
    results, run_dir, bad_dir = cli_runs
    out = results["run"]
    assert out.returncode == 0, out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    _, factory, bidirectional = _composed(compose, "cell=gru")
    hidden = summary["hidden_size"]
    assert summary["param_budget"] == 3000 and summary["status"] == "completed"
    assert summary["num_params"] == _count(factory, hidden, 1, bidirectional) == model_param_count(
        factory, hidden, input_dim=2, output_dim=1, readout="last")
    assert abs(summary["num_params"] - 3000) <= 0.05 * 3000
    neighbours = [_count(factory, h, 1, bidirectional) for h in (hidden - 1, hidden + 1)]
    assert all(abs(n - 3000) >= abs(summary["num_params"] - 3000) for n in neighbours)
    config = (run_dir / "config.yaml").read_text()
    model_block = config.split("\nmodel:\n", 1)[1].split("\n\n", 1)[0]
    assert re.search(rf"^  hidden_size: {hidden}$", model_block, re.M), config
    assert re.search(r"^  param_budget: 3000$", model_block, re.M), config

    bad = results["budget0"]
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.param_budget=0" in lines[0], bad.stderr
    assert not bad_dir.exists()


def _parse_table(text):
    """The catalogue's rows as {cell: {column: text}}, columns cut where the header's dashes are."""
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("---"))
    spans = [m.span() for m in re.finditer(r"-+", lines[i])]
    cut = lambda line: [line[a:b].strip() for a, b in spans]
    head = cut(lines[i - 1])
    rows = [dict(zip(head, cut(line), strict=True)) for line in lines[i + 1 :] if line.strip()]
    return {r["cell"]: r for r in rows}


def test_rnnbench_cells_lists_every_config_with_its_count(cli_runs, compose):
    results, _, _ = cli_runs
    out = results["cells"]
    assert out.returncode == 0, out.stderr
    table = _parse_table(out.stdout)
    assert sorted(table) == config_names("cell")
    for name in ("bilstm", "fgr", "indrnn", "janet", "lru", "mingru", "minlstm", "mut1", "mut2"):
        _, factory, bidirectional = _composed(compose, f"cell={name}")
        row = table[name]
        assert int(row["params"].replace(",", "")) == _count(factory, 8, 1, bidirectional) == model_param_count(
            factory, 8, input_dim=2, output_dim=1, readout="last", bidirectional=bidirectional), row
        hidden, count = int(row["H @ 2000"]), int(row["params @ budget"].replace(",", ""))
        assert count == _count(factory, hidden, 1, bidirectional), row
        assert all(abs(_count(factory, h, 1, bidirectional) - 2000) >= abs(count - 2000)
                   for h in (hidden - 1, hidden + 1)), row
        gate_names = factory(2).gates
        assert (row["gates"] == "-") == (gate_names is None), row
    for key, needle in (("cells_h0", "--hidden-size=0"), ("cells_unknown", "nosuchcell")):
        bad = results[key]
        assert bad.returncode == 2, (key, bad.stdout, bad.stderr)
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], bad.stderr
        assert not bad.stdout.strip()
