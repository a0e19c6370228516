"""Vanishing-gradient diagnostics against independent references.

Every number ``diagnostics.diagnose`` reports is checked against something computed another way: the
closed form of a linear RNN whose recurrent matrix is a scaled orthogonal matrix, ``jax.grad`` of a
hand-written Python loop over ``cell.step`` in which one state is replaced by a variable, the closed
form of an LSTM whose gates are pinned by huge biases, dense Jacobians and their SVD, optax's own
clipping, and least-squares fits by numpy.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnnbench.cells.base import make_cell
from rnnbench.cells.gru import gru
from rnnbench.cells.lstm import lstm
from rnnbench.cells.rnn import rnn
from rnnbench.diagnostics import DiagnosticsOptions, curve_statistics, diagnose, spectral_norm
from rnnbench.model import make_model
from rnnbench.optim import sgd
from rnnbench.tasks.adding import adding
from rnnbench.tasks.base import Batch
from rnnbench.train import TrainState, fit, make_train_step, seed_keys

# Cheap Jacobian settings for tests that only look at the gradient curves.
CHEAP = DiagnosticsOptions(jacobian_times=1, jacobian_spans=(1,), jacobian_batch=2, power_iters=2)

CELLS = {
    "rnn": rnn,
    "lstm": lstm,
    "gru": gru,
    "gru_cho": functools.partial(gru, reset_after=False),
}


# The test programs are tiny and each runs a few times: compile them without XLA:CPU's slow backend
# optimisations and fusion emitters (3x faster to compile; the numbers agree to float32 rounding).
FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
    "xla_cpu_parallel_codegen_split_count": 1,
}


def _fast(fn, **kw):
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kw)


def _jit_diagnose(model, loss_fn, options):
    """``diagnose`` for one model, jitted once (the model, loss and options are closed over)."""
    return _fast(lambda params, batch, key: diagnose(model, loss_fn, params, batch, key, options))


def _mse(pred, batch):
    return jnp.mean(jnp.square(pred - batch.y))


def _f32(x):
    return np.asarray(x, np.float32)


def _normal(seed, shape, scale=1.0):
    """Test data as float32 numpy arrays (made without compiling anything)."""
    return _f32(scale * np.random.default_rng(seed).normal(size=shape))


def _random_params(init, input_dim, seed, scale):
    """Params of ``init``'s structure, every entry drawn from N(0, scale^2) (biases and gates included)."""
    shapes = jax.eval_shape(lambda key: init(key, input_dim), jax.random.key(0))  # traced, not compiled
    leaves, treedef = jax.tree.flatten(shapes)
    rng = np.random.default_rng(seed)
    return treedef.unflatten([np.asarray(scale * rng.normal(size=x.shape), x.dtype) for x in leaves])


@functools.cache
def _jit_init(init, input_dim):
    return _fast(lambda key: init(key, input_dim))


# --- a hand-written reference forward pass --------------------------------------------------------


def _ref_forward(model, params, x, *, direction="fwd", leaf=-1, t=-1, v=None):
    """The model as a Python loop over ``cell.step``: returns ``(pred, states, inputs)``.

    In the last layer's ``direction``, the carry's leaf ``leaf`` after step ``t`` (input order, traced
    is fine) is replaced by ``v``; the step's output is the carry's last leaf (h). ``states[d][s]`` is
    the last layer's carry after step s, ``inputs[i]`` is layer i's input sequence. The summary for
    readout "last" is the forward output at the last step and, when bidirectional, the backward
    output at t = 0 (where the backward pass ends).
    """
    B, T = x.shape[:2]
    n_layers = len(model.layers)
    layer_in, inputs = x, []
    for i, (layer, p) in enumerate(zip(model.layers, params["layers"], strict=True)):
        inputs.append(layer_in)
        dirs = [("fwd", layer.forward, p if layer.backward is None else p["fwd"], range(T))]
        if layer.backward is not None:
            dirs.append(("bwd", layer.backward, p["bwd"], range(T - 1, -1, -1)))
        outs, states = {}, {}
        for name, cell, cp, order in dirs:
            carry = cell.initial_carry((B,), x.dtype)
            out, st = [None] * T, [None] * T
            for s in order:
                carry, h = cell.step(cp, carry, layer_in[:, s])
                if i == n_layers - 1 and name == direction and v is not None:
                    leaves, treedef = jax.tree.flatten(carry)
                    leaves[leaf] = jnp.where(s == t, v, leaves[leaf])
                    carry = treedef.unflatten(leaves)
                    h = leaves[-1]
                out[s], st[s] = h, carry
            outs[name], states[name] = jnp.stack(out, axis=1), st
        if layer.backward is None:
            hs, summary = outs["fwd"], outs["fwd"][:, -1]
        else:
            hs = jnp.concatenate([outs["fwd"], outs["bwd"]], axis=-1)
            summary = jnp.concatenate([outs["fwd"][:, -1], outs["bwd"][:, 0]], axis=-1)
        layer_in = hs
    return model.head(params, hs, summary), states, inputs


@functools.cache
def _jit_ref_forward(model):
    """The reference forward pass, jitted, its results as numpy arrays."""
    jitted = _fast(lambda params, x: _ref_forward(model, params, x))
    return lambda params, x: jax.tree.map(np.asarray, jitted(params, x))


def _ref_grad_norms(model, loss_fn, targets):
    """A jitted ``(params, batch) -> [len(targets), T]``: |dL/d state_t|_F for each (direction, leaf).

    Each entry is its own ``jax.grad`` w.r.t. the replaced state (vmapped over t, one program).
    """

    def norms(params, batch):
        T = batch.x.shape[1]
        _, states, _ = _ref_forward(model, params, batch.x)
        rows = []
        for direction, leaf in targets:
            values = jnp.stack([jax.tree.leaves(states[direction][t])[leaf] for t in range(T)])

            def norm_at(t, v, direction=direction, leaf=leaf):
                def loss(v):
                    pred, _, _ = _ref_forward(model, params, batch.x, direction=direction, leaf=leaf, t=t, v=v)
                    return loss_fn(pred, batch)

                return jnp.sqrt(jnp.sum(jnp.square(jax.grad(loss)(v))))

            rows.append(jax.vmap(norm_at)(jnp.arange(T), values))
        return jnp.stack(rows)

    jitted = _fast(norms)
    return lambda params, batch: np.asarray(jitted(params, batch), np.float64)


# --- 1. linear RNN with W = a Q: everything in closed form ----------------------------------------


def _linear_factory(hidden_size):
    H = hidden_size
    return make_cell(
        name="linear",
        hidden_size=H,
        init=lambda key, d: {"w_x": jax.random.normal(key, (d, H)), "w_h": jnp.eye(H)},
        initial_carry=lambda batch_shape, dtype=jnp.float32: jnp.zeros((*batch_shape, H), dtype),
        project_input=lambda p, x: x @ p["w_x"],
        recurrence=lambda p, h, gx: (gx + h @ p["w_h"],) * 2,
    )


@pytest.mark.parametrize(
    "a, cut",
    [(0.7, 4), (0.7, None), (1.0, None), (1.2, None)],
    ids=["a0.7-cut", "a0.7", "a1.0", "a1.2"],
)
def test_linear_rnn_curve_statistics_and_jacobian_are_powers_of_a(a, cut):
    B, T, D, H = 3, 10, 2, 5
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(H, H)))
    model = make_model(_linear_factory, hidden_size=H, output_dim=H, readout="last")
    params = {"layers": [{"w_x": _normal(1, (D, H)), "w_h": _f32(a * Q)}],
              "readout": {"w": _f32(np.eye(H)), "b": _f32(np.zeros(H))}}
    # A threshold strictly between a**cut and a**(cut + 1), or the default 1e-3, below every ratio here.
    threshold = a ** (cut + 0.5) if cut is not None else DiagnosticsOptions().horizon_threshold
    assert cut is not None or threshold < min(1.0, a ** (T - 1))
    options = DiagnosticsOptions(horizon_threshold=threshold, jacobian_times=3, jacobian_spans=(1, 3),
                                 jacobian_batch=2, power_iters=5)
    batch = Batch(_f32(rng.normal(size=(B, T, D))), _f32(rng.normal(size=(B, H))))
    # L = sum(h_T * y): dL/dh_T = y, and dL/dh_t = y (a Q^T)^(T-1-t), of norm a^(T-1-t) |y|.
    out = _jit_diagnose(model, lambda pred, b: jnp.sum(pred * b.y), options)(params, batch, jax.random.key(1))

    curve = np.asarray(out["grad_norm_per_step"], np.float64)
    lag = T - 1 - np.arange(T)
    np.testing.assert_allclose(curve / curve[-1], a**lag, rtol=1e-5)
    np.testing.assert_allclose(curve[-1], np.linalg.norm(np.asarray(batch.y)), rtol=1e-5)
    np.testing.assert_allclose(float(out["grad_decay_rate"]), -math.log(a), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(out["grad_ratio_first_last"]), a ** (T - 1), rtol=1e-5)
    expected_horizon = cut if cut is not None else T - 1
    assert int(out["grad_horizon"]) == expected_horizon
    # The linear cell's state Jacobian over s steps is (a Q)^s: every singular value is a^s.
    spans = np.asarray(out["jacobian_spans"])
    np.testing.assert_array_equal(spans, [1, 3])
    assert out["jacobian_norm"].shape == (2, 3)
    np.testing.assert_allclose(np.asarray(out["jacobian_norm"]), (a ** spans)[:, None] * np.ones((1, 3)), rtol=1e-5)


# --- 2. the per-step curve against jax.grad of a hand-written loop --------------------------------

CURVE_CASES = [  # every cell, one and two layers, many-to-one and one-output-per-step readouts
    ("rnn", 2, "all"),
    ("lstm", 1, "last"),
    ("lstm", 2, "all"),
    ("gru", 2, "last"),
    ("gru_cho", 1, "all"),
]
B_, T_, D_, H_, O_ = 3, 6, 2, 4, 2  # the shapes of every case built by _program


@functools.cache
def _program(cell_name, num_layers, readout, bidirectional=False):
    """A small model with its jitted ``diagnose`` and reference norms (compiled once, shared by tests).

    The reference computes |dL/d state_t| for h in each direction, and for the LSTM also for c.
    """
    model = make_model(CELLS[cell_name], hidden_size=H_, output_dim=O_, readout=readout, num_layers=num_layers,
                       bidirectional=bidirectional)
    targets = [(d, leaf) for d in (("fwd", "bwd") if bidirectional else ("fwd",))
               for leaf in ((-1, 0) if cell_name == "lstm" else (-1,))]
    ref = _ref_grad_norms(model, _mse, targets)
    return model, _jit_diagnose(model, _mse, CHEAP), lambda params, batch: dict(zip(targets, ref(params, batch),
                                                                                     strict=True))


def _random_case(model, readout, scale=0.5, x_scale=1.0):
    params = _random_params(model.init, D_, 0, scale)
    y_shape = (B_, O_) if readout == "last" else (B_, T_, O_)
    return params, Batch(_normal(2, (B_, T_, D_), x_scale), _normal(3, y_shape))


@functools.cache
def _curve_case(cell_name, num_layers, readout, bidirectional=False):
    """The diagnostics of a random case and the reference norms {(direction, leaf): [T]}."""
    model, diag, ref = _program(cell_name, num_layers, readout, bidirectional)
    params, batch = _random_case(model, readout)
    return diag(params, batch, jax.random.key(3)), ref(params, batch)


@pytest.mark.parametrize("cell_name, num_layers, readout", CURVE_CASES)
def test_grad_norm_per_step_is_the_norm_of_dloss_dh_t(cell_name, num_layers, readout):
    out, ref = _curve_case(cell_name, num_layers, readout)
    expected = ref["fwd", -1]
    assert expected.shape == (T_,) and expected.min() > 0
    np.testing.assert_allclose(np.asarray(out["grad_norm_per_step"]), expected, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(out["grad_norm_per_step_state"][-1]), expected, rtol=1e-4)


@pytest.mark.parametrize("num_layers, readout", [(1, "last"), (2, "all")])
def test_lstm_cell_state_curve_is_the_norm_of_dloss_dc_t(num_layers, readout):
    out, ref = _curve_case("lstm", num_layers, readout)
    curves = out["grad_norm_per_step_state"]
    assert len(curves) == 2  # [c, h]
    expected = ref["fwd", 0]
    # Nothing reads c after the last step, so a nudge to c_T changes nothing.
    assert expected[-1] == 0.0
    assert float(curves[0][-1]) == 0.0
    assert expected[:-1].min() > 0
    np.testing.assert_allclose(np.asarray(curves[0]), expected, rtol=1e-4)


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_bidirectional_curve_combines_both_directions(cell_name):
    out, ref = _curve_case(cell_name, 1, "last", bidirectional=True)
    for leaf in [-1, 0] if cell_name == "lstm" else [-1]:
        fwd, bwd = ref["fwd", leaf], ref["bwd", leaf]
        assert fwd.max() > 0 and bwd.max() > 0
        np.testing.assert_allclose(np.asarray(out["grad_norm_per_step_state"][leaf]), np.hypot(fwd, bwd), rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(out["grad_norm_per_step"]),
                                  np.asarray(out["grad_norm_per_step_state"][-1]))


# --- 3. LSTM with pinned gates: the cell path decays as f^(T-1-t) ---------------------------------


def _pinned_lstm(f, H, D=2):
    """An LSTM with W_h = 0 and gates pinned by +-30 biases.

    Input 0 is a "write" flag: it opens the input gate (bias -30, weight +60). Input 1 drives the
    candidate g = tanh(x_1 w_g). The forget gate is sigmoid(logit f) = f, the output gate sigmoid(30).
    """
    model = make_model(lstm, hidden_size=H, output_dim=H, readout="last")
    w_g = np.linspace(-1.5, 1.5, H)
    w_x = np.zeros((D, 4 * H))
    w_x[0, 0:H] = 60.0  # input gate
    w_x[1, 2 * H : 3 * H] = w_g  # candidate
    b = np.zeros(4 * H)
    b[0:H] = -30.0
    b[H : 2 * H] = math.log(f / (1.0 - f))
    b[3 * H :] = 30.0
    params = {"layers": [{"w_x": _f32(w_x), "w_h": _f32(np.zeros((H, 4 * H))), "b": _f32(b)}],
              "readout": {"w": _f32(np.eye(H)), "b": _f32(np.zeros(H))}}
    return model, params, w_g


@pytest.mark.parametrize("f", [0.5, 0.9])
def test_pinned_lstm_cell_gradient_decays_as_the_forget_gate(f):
    B, T, H = 3, 8, 4
    model, params, w_g = _pinned_lstm(f, H)
    rng = np.random.default_rng(1)
    r = rng.uniform(0.5, 1.5, size=B)
    x = np.zeros((B, T, 2))
    x[:, 0, 0], x[:, 0, 1] = 1.0, r  # write tanh(r w_g) into c at t = 0, then nothing
    y = rng.normal(size=(B, H))
    batch = Batch(_f32(x), _f32(y))
    options = DiagnosticsOptions(jacobian_times=1, jacobian_spans=(1,), jacobian_batch=2, power_iters=2)
    out = _jit_diagnose(model, lambda pred, b: jnp.sum(pred * b.y), options)(params, batch, jax.random.key(0))

    # With i = 0 after t = 0, o = 1 and W_h = 0: c_t = f^t tanh(r w_g), h_t = tanh(c_t), L = sum(y h_{T-1}).
    # A nudge to c_t (t < T-1) reaches L only through c_{T-1} = f^(T-1-t) c_t + ...:
    #     dL/dc_t = y (1 - tanh(c_{T-1})^2) f^(T-1-t),   and 0 at t = T-1 (h_{T-1} is already computed).
    c_last = f ** (T - 1) * np.tanh(r[:, None] * w_g[None, :])
    base = np.linalg.norm(y * (1.0 - np.tanh(c_last) ** 2))
    lag = T - 1 - np.arange(T)
    expected = np.where(lag > 0, base * f**lag, 0.0)
    c_curve = np.asarray(out["grad_norm_per_step_state"][0], np.float64)
    np.testing.assert_allclose(c_curve, expected, rtol=1e-4)
    np.testing.assert_allclose(c_curve[:-1] / c_curve[-2], f ** (lag[:-1] - 1), rtol=1e-4)
    # h feeds nothing but the readout (W_h = 0): only h_{T-1} matters, with dL/dh_{T-1} = y (o = 1).
    h_curve = np.asarray(out["grad_norm_per_step"], np.float64)
    np.testing.assert_allclose(h_curve, np.where(lag == 0, np.linalg.norm(y), 0.0), rtol=1e-5)
    # Gate statistics of the pinned gates: i and o saturated everywhere, f = its pinned value.
    gates = out["gates"][0]["fwd"]
    np.testing.assert_array_equal(np.asarray(gates["input"]["saturation"]), np.ones(T))
    np.testing.assert_array_equal(np.asarray(gates["output"]["saturation"]), np.ones(T))
    np.testing.assert_array_equal(np.asarray(gates["forget"]["saturation"]), np.zeros(T))
    np.testing.assert_allclose(np.asarray(gates["forget"]["mean"]), np.full(T, f), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gates["input"]["mean"]), np.where(np.arange(T) == 0, 1.0, 0.0),
                               atol=1e-6)


# --- 4. the recurrent Jacobian norm against a dense SVD -------------------------------------------


@functools.cache
def _dense_sigma_max_fn(cell, span):
    """``(params, state, xs [B, span, D]) -> [B]``: per example, the largest singular value of the dense
    Jacobian of ``span`` steps of ``cell``, from one example's flattened state alone (no batch)."""

    def per_example(params, state, xs):
        leaves, treedef = jax.tree.flatten(state)
        shapes = [x.shape[1:] for x in leaves]
        cuts = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]

        def single(z, x):  # z: one example's flat state, x [span, D]
            st = treedef.unflatten([p.reshape((1, *s)) for p, s in zip(jnp.split(z, cuts), shapes, strict=True)])
            for k in range(span):
                st, _ = cell.step(params, st, x[k][None])
            return jnp.concatenate([y.ravel() for y in jax.tree.leaves(st)])

        flat = jnp.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)
        return jax.vmap(jax.jacobian(single))(flat, xs)

    jitted = _fast(per_example)

    def sigma_max(params, state, xs):
        jacs = np.asarray(jitted(params, state, xs), np.float64)
        return np.asarray([np.linalg.svd(j, compute_uv=False)[0] for j in jacs])

    return sigma_max


@pytest.mark.parametrize("span", [1, 3])
@pytest.mark.parametrize("cell_name", ["lstm", "gru", "rnn"])
def test_spectral_norm_matches_the_dense_svd(cell_name, span):
    B, D, H = 3, 2, 4
    cell = CELLS[cell_name](H)
    params = _random_params(cell.init, D, 0, 0.6)
    xs = _normal(2, (B, 3 + span, D))

    @_fast
    def run(params, xs, key):
        carry = cell.initial_carry((B,))
        for s in range(3):  # a state away from zero
            carry, _ = cell.step(params, carry, xs[:, s])

        def f(state):
            for s in range(3, 3 + span):
                state, _ = cell.step(params, state, xs[:, s])
            return state

        return carry, spectral_norm(f, carry, key, 200)

    carry, sigma = run(params, xs, jax.random.key(3))
    sigma = np.asarray(sigma)
    expected = _dense_sigma_max_fn(cell, span)(params, carry, xs[:, 3:])
    assert sigma.shape == (B,)
    assert expected.max() > 1.05 * expected.min()  # distinct per example: a per-example check
    np.testing.assert_allclose(sigma, expected, rtol=1e-3)


@pytest.mark.parametrize("cell_name, num_layers", [("lstm", 2), ("gru", 1)])
def test_diagnose_jacobian_norm_is_the_mean_dense_svd_at_each_sampled_time(cell_name, num_layers):
    B, T, D, H, Bj = 4, 7, 2, 3, 3
    model = make_model(CELLS[cell_name], hidden_size=H, output_dim=1, readout="last", num_layers=num_layers)
    params = _random_params(model.init, D, 0, 0.6)
    batch = Batch(_normal(2, (B, T, D)), _f32(np.zeros((B, 1))))
    options = DiagnosticsOptions(jacobian_times=3, jacobian_spans=(1, 2), jacobian_batch=Bj, power_iters=100)
    out = _jit_diagnose(model, _mse, options)(params, batch, jax.random.key(3))

    _, states, inputs = _jit_ref_forward(model)(params, batch.x)
    cell, cp, xs = model.layers[-1].forward, params["layers"][-1], inputs[-1][:Bj]
    times = np.asarray(out["jacobian_times"])  # 1-based: span 1 at time t is d state_t / d state_{t-1}
    spans = np.asarray(out["jacobian_spans"])
    np.testing.assert_array_equal(spans, [1, 2])
    assert times.shape == (3,) and times.min() >= 1 and times.max() + spans.max() - 1 <= T
    assert len(set(times.tolist())) == 3
    for si, span in enumerate(spans):
        for ti, t in enumerate(times):
            before = t - 1  # 0-based index of the span's first step; the state before it is after step t-2
            if before == 0:
                state = jax.tree.map(lambda s: np.zeros_like(s[:Bj]), states["fwd"][0])
            else:
                state = jax.tree.map(lambda s: s[:Bj], states["fwd"][before - 1])
            expected = _dense_sigma_max_fn(cell, int(span))(cp, state, xs[:, before : before + span]).mean()
            np.testing.assert_allclose(float(out["jacobian_norm"][si, ti]), expected, rtol=1e-3)


# --- 5. clipping statistics against what optax applied --------------------------------------------


def _global_norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))


def test_clipped_flag_and_update_norm_match_optax():
    task = adding(6)
    model = make_model(rnn, hidden_size=4, output_dim=task.output_dim, readout=task.readout)
    batch = _fast(task.sample, static_argnums=1)(jax.random.key(1), 4)
    loss_grad = _fast(jax.grad(lambda p: task.loss(model.apply(p, batch.x), batch)))
    small = _random_params(model.init, task.input_dim, 0, 0.3)
    large = jax.tree.map(lambda x: 4.0 * np.asarray(x), small)  # a larger readout and state: a larger gradient
    grads = {"small": loss_grad(small), "large": loss_grad(large)}
    norms = {k: _global_norm(g) for k, g in grads.items()}
    assert norms["large"] > 1.5 * norms["small"] > 0
    c = math.sqrt(norms["small"] * norms["large"])  # one threshold between the two: one program
    opt = sgd(10, lr=1.0, momentum=0.0, clip_norm=c)
    step = _fast(make_train_step(model, task, opt, dropout=False, clip_norm=c))
    for name, params in (("small", small), ("large", large)):
        g, g_norm = grads[name], norms[name]
        new, metrics = step(TrainState(params, opt.init(params), jnp.zeros((), jnp.int32)), batch, jax.random.key(2))
        update = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), new.params, params)
        plain = all(np.allclose(u, -np.asarray(gl), rtol=1e-4, atol=1e-6)
                    for u, gl in zip(jax.tree.leaves(update), jax.tree.leaves(g), strict=True))
        assert bool(metrics["clipped"]) == (not plain) == (g_norm > c) == (name == "large")
        np.testing.assert_allclose(_global_norm(update), min(g_norm, c), rtol=1e-4)
        np.testing.assert_allclose(float(metrics["l2_grads"]), g_norm, rtol=1e-5)
        # What optax's transformation on its own does with this gradient.
        clipped = _fast(lambda g: optax.clip_by_global_norm(c).update(g, optax.EmptyState())[0])(g)
        np.testing.assert_allclose(_global_norm(update), _global_norm(clipped), rtol=1e-4)


# --- the shared fit run (5 and 7) -----------------------------------------------------------------

FIT_TASK = adding(6)
FIT = dict(seed=3, num_seeds=2, steps=25, batch_size=4, eval_every=5, eval_size=8, diagnostics_batch=4,
           diagnostics_options=CHEAP)
FIT_CLIP, FIT_LR = 0.3, 0.5


def _fit_model():
    return make_model(rnn, hidden_size=4, output_dim=FIT_TASK.output_dim, readout=FIT_TASK.readout)


def _fit_optimizer():
    return sgd(FIT["steps"], lr=FIT_LR, momentum=0.0, clip_norm=FIT_CLIP)


@pytest.fixture(scope="module")
def fit_run():
    """One fit of two seeds with clipping and diagnostics every 10 steps: (model, result, evals, diags)."""
    model, evals, diags = _fit_model(), [], []
    result = fit(model, FIT_TASK, _fit_optimizer(), clip_norm=FIT_CLIP, diagnostics_every=10,
                 on_eval=lambda step, recs: evals.append((step, recs)),
                 on_diagnostics=lambda step, recs: diags.append((step, recs)), **FIT)
    return model, result, evals, diags


def test_fit_clip_fraction_is_the_fraction_of_steps_above_the_threshold(fit_run):
    model, _, evals, _ = fit_run
    task, opt = FIT_TASK, _fit_optimizer()

    @_fast
    def replay_step(params, opt_state, data_key, i):
        batch = task.sample(jax.random.fold_in(data_key, i), FIT["batch_size"])
        grads = jax.grad(lambda p: task.loss(model.apply(p, batch.x), batch))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, grads

    steps, every = FIT["steps"], FIT["eval_every"]
    assert [step for step, _ in evals] == list(range(0, steps + 1, every))
    n_above = 0
    for k in range(FIT["num_seeds"]):
        # Replay seed k by hand (its init and data stream), each step's gradient norm from jax.grad.
        keys = seed_keys(FIT["seed"] + k)
        params = _jit_init(model.init, task.input_dim)(keys.init)
        opt_state, norms = opt.init(params), []
        for i in range(steps):
            params, opt_state, grads = replay_step(params, opt_state, keys.data, jnp.asarray(i, jnp.int32))
            norms.append(_global_norm(grads))
        norms = np.asarray(norms)
        assert np.min(np.abs(norms - FIT_CLIP)) > 1e-4 * FIT_CLIP  # no step sits on the threshold
        above = norms > FIT_CLIP
        n_above += above.sum()
        assert evals[0][1][k]["clip_fraction"] is None
        for step, recs in evals[1:]:
            window = slice(step - every, step)
            np.testing.assert_allclose(recs[k]["grad_norm"], norms[window].mean(), rtol=1e-4)  # the same run
            assert recs[k]["clip_fraction"] == pytest.approx(above[window].mean(), abs=1e-12)
    assert 0 < n_above < FIT["num_seeds"] * steps  # the threshold cuts inside the run


# --- 6. curve statistics on hand-made curves ------------------------------------------------------

_curve_statistics = _fast(curve_statistics)  # threshold traced: one program


def _stats(curve, threshold):
    out = _curve_statistics(_f32(curve), threshold)
    return {k: v.item() for k, v in out.items()}


def _polyfit_decay(curve):
    """-slope of ln n_{T-k} against k by numpy's least squares, over the finite positive entries."""
    by_lag = np.asarray(curve, np.float64)[::-1]
    k = np.arange(len(by_lag))
    ok = np.isfinite(by_lag) & (by_lag > 0)
    return -np.polyfit(k[ok], np.log(by_lag[ok]), 1)[0]


T_CURVE = 8


def test_curve_statistics_of_a_pure_exponential_decay():
    T, r = T_CURVE, 0.6
    curve = 2.5 * r ** (T - 1 - np.arange(T))  # n_t = 2.5 r^(T-t), 1-based
    s = _stats(curve, r**4.5)  # ratios r^0..r^4 pass, r^5 fails
    assert s["grad_ratio_first_last"] == pytest.approx(r ** (T - 1), rel=1e-5)
    assert s["grad_decay_rate"] == pytest.approx(-math.log(r), rel=1e-5)
    assert s["grad_horizon"] == 4


def test_curve_statistics_of_an_exploding_curve():
    curve = np.array([9.0, 6.0, 5.0, 4.0, 2.0, 1.5, 1.1, 1.0])  # grows going back in time
    assert len(curve) == T_CURVE
    s = _stats(curve, 1e-3)
    assert s["grad_decay_rate"] < 0
    assert s["grad_decay_rate"] == pytest.approx(_polyfit_decay(curve), rel=1e-5)
    assert s["grad_ratio_first_last"] == pytest.approx(9.0, rel=1e-6)
    assert s["grad_horizon"] == T_CURVE - 1  # every ratio is >= 1 > threshold


def test_curve_statistics_ignore_zero_and_nan_in_the_fit():
    T, r = T_CURVE, 0.8
    clean = r ** (T - 1 - np.arange(T))
    curve = clean.copy()
    curve[2], curve[4] = 0.0, np.nan
    s = _stats(curve, 1e-6)
    assert s["grad_decay_rate"] == pytest.approx(-math.log(r), rel=1e-5)
    # A noisy curve: the weighted fit is the least-squares fit over the valid entries only.
    noisy = clean * np.exp(np.random.default_rng(0).normal(scale=0.2, size=T))
    noisy[1], noisy[5] = np.nan, 0.0
    assert _stats(noisy, 1e-6)["grad_decay_rate"] == pytest.approx(_polyfit_decay(noisy), rel=1e-4)
    # (and one that kept them, as n = 1, would differ: the check can tell)
    kept = np.where(np.isfinite(noisy) & (noisy > 0), noisy, 1.0)
    assert _polyfit_decay(noisy) != pytest.approx(_polyfit_decay(kept), rel=1e-2)


def test_curve_statistics_horizon():
    # By lag: the horizon stops at the first ratio below the threshold, whatever comes after it.
    by_lag = np.array([1.0, 0.5, 0.2, 0.05, 0.5, 0.4, 0.3, 0.3])
    curve = 3.0 * by_lag[::-1]
    assert _stats(curve, 0.1)["grad_horizon"] == 2
    assert _stats(curve, 0.6)["grad_horizon"] == 0
    assert _stats(curve, 0.01)["grad_horizon"] == T_CURVE - 1  # every ratio above: T-1


# --- 7. end to end through fit --------------------------------------------------------------------


def test_fit_reports_diagnostics_on_schedule_for_every_seed(fit_run):
    model, result, _, diags = fit_run
    T, seeds = FIT_TASK.seq_len, [FIT["seed"] + k for k in range(FIT["num_seeds"])]
    # diagnostics_every=10, eval_every=5, 25 steps: step 0, the evaluations at 10 and 20, and the end.
    assert [step for step, _ in diags] == [0, 10, 20, 25]
    for step, recs in diags:
        assert [r["seed"] for r in recs] == seeds
        assert all(r["step"] == step for r in recs)
        for r in recs:
            assert len(r["grad_norm_per_step"]) == T
            assert [len(c) for c in r["grad_norm_per_step_state"]] == [T]
            assert r["jacobian_times"] == [1] and list(r["jacobian_norm"]) == ["1"]
    last = diags[-1][1]
    for k in range(len(seeds)):
        assert result.seeds[k].grad_horizon == last[k]["grad_horizon"]
        assert result.seeds[k].grad_decay_rate == last[k]["grad_decay_rate"]
    # Step 0 is each seed's initial model on its fixed diagnostic batch (the evaluation stream).
    ref = _ref_grad_norms(model, FIT_TASK.loss, [("fwd", -1)])
    sample = _fast(FIT_TASK.sample, static_argnums=1)
    for k, s in enumerate(seeds):
        keys = seed_keys(s)
        params = _jit_init(model.init, FIT_TASK.input_dim)(keys.init)
        batch = sample(jax.random.fold_in(keys.eval, 1), FIT["diagnostics_batch"])
        np.testing.assert_allclose(diags[0][1][k]["grad_norm_per_step"], ref(params, batch)[0], rtol=1e-4)


def test_fit_without_diagnostics_reports_none():
    calls = []
    result = fit(_fit_model(), FIT_TASK, _fit_optimizer(), clip_norm=FIT_CLIP, diagnostics_every=0,
                 on_diagnostics=lambda step, recs: calls.append(step), **FIT)
    assert calls == []
    assert all(s.grad_horizon is None and s.grad_decay_rate is None for s in result.seeds)


# --- 8. gate statistics ---------------------------------------------------------------------------


def _ref_gate_stats(model, params, x, direction, gate_fn):
    """Mean and saturated fraction per step of a gate of the last layer: numpy on the reference states."""
    T = x.shape[1]
    layer = model.layers[-1]
    p = params["layers"][-1] if layer.backward is None else params["layers"][-1][direction]
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    _, states, inputs = _jit_ref_forward(model)(params, x)
    prev = jax.tree.map(lambda s: np.zeros_like(s, np.float64), states[direction][0])
    means, sats = np.zeros(T), np.zeros(T)
    for s in range(T) if direction == "fwd" else range(T - 1, -1, -1):
        a = gate_fn(p, prev, np.asarray(inputs[-1][:, s], np.float64))
        means[s], sats[s] = a.mean(), np.mean((a < 0.05) | (a > 0.95))
        prev = jax.tree.map(lambda s: np.asarray(s, np.float64), states[direction][s])
    return means, sats


def _np_sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _lstm_forget(p, carry, x):  # f = sigmoid(x W_xf + b_f + h W_hf), block 1 of i, f, g, o
    H = carry[1].shape[-1]
    return _np_sigmoid(x @ p["w_x"][:, H : 2 * H] + p["b"][H : 2 * H] + carry[1] @ p["w_h"][:, H : 2 * H])


def _gru_update(p, h, x):  # z = sigmoid(x W_xz + b_z + h W_hz), block 1 of r, z, n
    H = h.shape[-1]
    return _np_sigmoid(x @ p["w_x"][:, H : 2 * H] + p["b"][H : 2 * H] + h @ p["w_h"][:, H : 2 * H])


def test_lstm_forget_gate_statistics_match_a_reference_loop():
    model, diag, _ = _program("lstm", 1, "last", bidirectional=True)
    params, batch = _random_case(model, "last", scale=1.5, x_scale=2.0)  # large: some gates saturate
    out = diag(params, batch, jax.random.key(3))
    assert len(out["gates"]) == 1 and set(out["gates"][0]) == {"fwd", "bwd"}
    all_sats = []
    for direction in ("fwd", "bwd"):
        stats = out["gates"][0][direction]
        assert set(stats) == {"input", "forget", "output"}
        means, sats = _ref_gate_stats(model, params, batch.x, direction, _lstm_forget)
        np.testing.assert_allclose(np.asarray(stats["forget"]["mean"]), means, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(stats["forget"]["saturation"]), sats, atol=1e-6)
        all_sats.append(sats)
    all_sats = np.concatenate(all_sats)
    assert np.any((all_sats > 0) & (all_sats < 1))  # partly saturated steps: the check can tell


def test_gate_statistics_per_layer_and_a_pinned_gate_is_saturated():
    model, diag, _ = _program("gru", 2, "last")
    params, batch = _random_case(model, "last", scale=1.0)
    params["layers"][0]["b"][:H_] = 30.0  # layer 0: reset gate pinned at 1
    out = diag(params, batch, jax.random.key(3))
    assert len(out["gates"]) == 2
    layer0 = out["gates"][0]["fwd"]
    assert set(layer0) == {"reset", "update"}
    np.testing.assert_array_equal(np.asarray(layer0["reset"]["saturation"]), np.ones(T_))
    np.testing.assert_allclose(np.asarray(layer0["reset"]["mean"]), np.ones(T_), rtol=1e-6)
    assert np.all(np.asarray(layer0["update"]["saturation"]) < 1)
    # The last layer's update gate against the reference loop (its input is layer 0's output).
    means, sats = _ref_gate_stats(model, params, batch.x, "fwd", _gru_update)
    np.testing.assert_allclose(np.asarray(out["gates"][1]["fwd"]["update"]["mean"]), means, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out["gates"][1]["fwd"]["update"]["saturation"]), sats, atol=1e-6)


def test_ungated_cell_reports_no_gates():
    out, _ = _curve_case("rnn", 2, "all")
    assert out["gates"] == [{"fwd": {}}, {"fwd": {}}]
