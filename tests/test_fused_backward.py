"""The hand-written backward passes (``backward="fused"``: LSTM, GRU, tanh and relu RNN) against autodiff.

A fused cell runs its ``fused_*_sequence`` (``cell.sequence``); the autodiff cell scans ``cell.step``
and lets ``jax.grad`` differentiate it. Their outputs, final states and gradients by the parameters,
the inputs and the initial state must agree: with and without a mask, forward and reverse (for the
LSTM also with the gates recomputed instead of kept), through a bidirectional two-layer model, and
against finite differences in float64. The diagnostics, which perturb every step and linearise the
recurrence, must not notice.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rnnbench.cells.gru import gru
from rnnbench.cells.lstm import fused_lstm_sequence, lstm
from rnnbench.cells.rnn import rnn
from rnnbench.diagnostics import DiagnosticsOptions, diagnose
from rnnbench.model import make_model
from rnnbench.scan import scan_cell
from rnnbench.tasks.base import Batch

B, T, H, D = 3, 7, 5, 2
LENGTHS = (7, 4, 1)  # right padding: the second and third sequences end early
FAST_COMPILE = {  # tiny programs run once: skip XLA:CPU's slow backend optimisations
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
    "xla_cpu_parallel_codegen_split_count": 1,
}


def _jit(fn):
    return jax.jit(fn, compiler_options=FAST_COMPILE)


def _mask(lengths=LENGTHS, steps=T):
    return np.arange(steps)[None, :] < np.asarray(lengths)[:, None]


def _lstm_recompute(hidden_size, backward="fused"):
    """The fused LSTM keeping only the states for the backward (the gates recomputed there)."""
    def sequence(params, carry, xs, mask=None, reverse=False):
        return fused_lstm_sequence(params["w_x"], params["b"], params["w_h"], *carry, xs, mask, reverse, False)

    return lstm(hidden_size, backward="fused")._replace(sequence=sequence)


FACTORIES = {"lstm": lstm, "gru": gru, "rnn": rnn, "relu rnn": functools.partial(rnn, activation="relu")}
FUSED = {  # cell -> {variant: cell}; "autodiff" is the reference
    name: {"autodiff": make(H, backward="autodiff"), "fused": make(H, backward="fused"),
           **({"recompute": _lstm_recompute(H)} if name == "lstm" else {})}
    for name, make in FACTORIES.items()
}


def _case(name, seed=0, dtype=np.float32):
    """Params with every entry N(0, 0.7^2) (gates away from their init), inputs, a non-zero initial state
    and output weights, so every cotangent the backward pass handles is non-trivial."""
    rng = np.random.default_rng(seed)
    cell = FUSED[name]["autodiff"]
    params = jax.tree.map(lambda a: rng.normal(0, 0.7, a.shape), cell.init(jax.random.key(0), D))
    carry = jax.tree.map(lambda a: rng.normal(size=a.shape), cell.initial_carry((B,)))
    xs, w_out = rng.normal(size=(B, T, D)), rng.normal(size=(B, T, H))
    w_c = jax.tree.map(lambda a: rng.normal(size=a.shape), carry)
    return jax.tree.map(lambda a: np.asarray(a, dtype), (params, carry, xs, w_out, w_c))


def _loss(cell, mask, reverse):
    """Outputs and final carry into the loss (the state h through a sine, so its cotangent varies)."""
    def loss(params, carry, xs, w_out, w_c):
        final, hs = scan_cell(cell, params, xs, mask, reverse=reverse, carry=carry)
        leaves, weights = jax.tree.leaves(final), jax.tree.leaves(w_c)
        total = jnp.sum(hs * w_out) + jnp.sum(jnp.sin(leaves[-1]) * weights[-1])
        total += sum(jnp.sum(c * w) for c, w in zip(leaves[:-1], weights[:-1], strict=True))
        return total, (final, hs)

    return loss


def assert_tree_close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("make", [lstm, gru, rnn], ids=["lstm", "gru", "rnn"])
def test_backward_option(make):
    assert (make(H).sequence is not None) == (jax.default_backend() == "cpu")  # auto: fused on CPU
    assert make(H, backward="autodiff").sequence is None and make(H, backward="fused").sequence is not None
    with pytest.raises(ValueError, match="backward='cudnn' is not allowed"):
        make(H, backward="cudnn")


def test_gru_fused_needs_reset_after():
    assert gru(H, reset_after=False).sequence is None  # auto falls back to autodiff
    with pytest.raises(ValueError, match="backward='fused' needs reset_after=True"):
        gru(H, reset_after=False, backward="fused")


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_fused_equals_autodiff_values_and_gradients(name, masked):
    """Outputs, final carry and d(loss)/d(params, xs, initial carry), forward and reverse (the LSTM's gates
    kept or recomputed); padding holds the state, outputs zero and passes no gradient to its inputs."""
    mask = _mask() if masked else None
    cells = FUSED[name]

    def run(*args):
        return {(v, reverse): jax.value_and_grad(_loss(cell, mask, reverse), argnums=(0, 1, 2), has_aux=True)(*args)
                for v, cell in cells.items() for reverse in (False, True)}

    out = jax.device_get(_jit(run)(*_case(name)))
    for reverse in (False, True):
        (ref_loss, ref_aux), ref_grads = out["autodiff", reverse]
        for v in cells.keys() - {"autodiff"}:
            (loss, aux), grads = out[v, reverse]
            np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
            assert_tree_close(aux, ref_aux, rtol=1e-5, atol=1e-6)
            assert_tree_close(grads, ref_grads, rtol=1e-5, atol=1e-5)
        (_, (_, hs)), (g_params, g_carry, g_x) = out["fused", reverse]
        assert all(np.all(np.abs(g) > 0) for g in jax.tree.leaves(g_carry)), "the initial state reaches the loss"
        assert all(np.any(g != 0) for g in jax.tree.leaves(g_params)), "every parameter gets a gradient"
        real = mask if masked else np.ones((B, T), bool)
        np.testing.assert_array_equal(hs[~real], 0.0)
        np.testing.assert_array_equal(g_x[~real], 0.0)
        assert np.all(np.any(g_x[real] != 0, axis=-1))


@pytest.mark.parametrize("name", FUSED)
def test_fused_matches_finite_differences_float64(name):
    """The hand-written VJP against central differences of the fused forward, in float64, masked, both ways."""
    mask = _mask()
    with jax.enable_x64(True):
        params, carry, xs, w_out, w_c = _case(name, seed=1, dtype=np.float64)
        for reverse in (False, True):
            def loss(params, carry, xs, reverse=reverse):
                return _loss(FUSED[name]["fused"], mask, reverse)(params, carry, xs, w_out, w_c)[0]

            check_grads(loss, (params, carry, xs), order=1, modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("readout", ["last", "all"])
def test_bidirectional_two_layer_model_gradients(name, readout):
    """make_model's bidirectional stack (forward and reverse scans, masked, layer 2 reading layer 1):
    predictions and d(loss)/d(every parameter) of the fused model equal the autodiff model's."""
    models = {b: make_model(functools.partial(FACTORIES[name], backward=b), hidden_size=H, output_dim=2,
                            readout=readout, num_layers=2, bidirectional=True) for b in ("autodiff", "fused")}
    params = models["fused"].init(jax.random.key(0), D)
    xs = np.random.default_rng(2).normal(size=(B, T, D)).astype(np.float32)
    mask = _mask()

    def run(params, xs):
        def loss(p, model):
            return jnp.sum(jnp.sin(model.apply(p, xs, mask)))

        return {b: jax.value_and_grad(loss)(params, model) for b, model in models.items()}

    out = jax.device_get(_jit(run)(params, xs))
    np.testing.assert_allclose(out["fused"][0], out["autodiff"][0], rtol=1e-5)
    assert_tree_close(out["fused"][1], out["autodiff"][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_diagnostics_of_the_fused_model_equal_the_autodiff_models(name):
    """The diagnostics run the cell step by step (perturbations, probes, the linearised Jacobian), so
    a fused model's diagnostics are the autodiff model's."""
    models = {b: make_model(functools.partial(FACTORIES[name], backward=b), hidden_size=H, output_dim=1,
                            readout="last") for b in ("autodiff", "fused")}
    params = models["fused"].init(jax.random.key(0), D)
    rng = np.random.default_rng(3)
    batch = Batch(rng.normal(size=(B, T, D)).astype(np.float32), rng.normal(size=(B, 1)).astype(np.float32),
                  _mask())
    options = DiagnosticsOptions(jacobian_times=1, jacobian_spans=(1,), jacobian_batch=2, power_iters=2)

    def run(params, batch):
        def mse(pred, batch):
            return jnp.mean(jnp.square(pred - batch.y))

        return {b: diagnose(model, mse, params, batch, jax.random.key(1), options) for b, model in models.items()}

    out = jax.device_get(_jit(run)(params, batch))
    assert_tree_close(out["fused"], out["autodiff"], rtol=1e-5, atol=1e-7)
