"""make_model: shapes, parameter counts, readouts against Python-loop references, argument checks."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_cells import CASES, config_cases, random_inputs, random_params
from test_scan import LENGTHS, loop_scan, padded_batch

from rnnbench.cells.lstm import lstm
from rnnbench.cells.rnn import rnn
from rnnbench.model import count_params, make_model

B, T, D, H, O = 3, 7, 4, 5, 2


def factory(case):
    return functools.partial(case.factory, **case.kwargs)


def expected_param_count(case, bidirectional, num_layers, input_dim=D, hidden=H, out=O):
    """Sum over layers and directions of the reference's parameter shapes at that layer's input width
    (nG * H * (D_in + H + 1) plus extras for the fused cells), plus the readout F * O + O."""
    ref = case.reference()
    dirs = 2 if bidirectional else 1
    total, width = 0, input_dim
    for _ in range(num_layers):
        total += dirs * sum(math.prod(shape) for shape in ref.param_shapes(width, hidden).values())
        width = dirs * hidden
    return total + width * out + out


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_count_params_formula(case, bidirectional, num_layers):
    model = make_model(factory(case), hidden_size=H, output_dim=O, readout="last", num_layers=num_layers,
                       bidirectional=bidirectional)
    shapes = jax.eval_shape(lambda k: model.init(k, D), jax.random.key(0))  # traced, not compiled
    assert count_params(shapes) == expected_param_count(case, bidirectional, num_layers)


@pytest.mark.parametrize("case", config_cases(), ids=str)
def test_each_cell_config_builds_a_model_of_the_right_size(case):
    """Every configs/cell/*.yaml (direction included) as the CLI would build it, sized by the formula."""
    model = make_model(factory(case), hidden_size=H, output_dim=O, readout="last", bidirectional=case.bidirectional)
    shapes = jax.eval_shape(lambda k: model.init(k, D), jax.random.key(0))
    assert count_params(shapes) == expected_param_count(case, case.bidirectional, 1)
    y = jax.eval_shape(model.apply, shapes, jax.ShapeDtypeStruct((B, T, D), jnp.float32))
    assert y.shape == (B, O)


def test_count_params_on_real_params():
    model = make_model(lstm, hidden_size=H, output_dim=O, readout="all", num_layers=2, bidirectional=True)
    params = model.init(jax.random.key(1), D)
    H4 = 4 * H
    # written out for the bidirectional 2-layer LSTM: 2 * 4H(D + H + 1) + 2 * 4H(2H + H + 1) + 2H * O + O
    assert count_params(params) == 2 * H4 * (D + H + 1) + 2 * H4 * (2 * H + H + 1) + 2 * H * O + O
    assert params["readout"]["w"].shape == (2 * H, O)
    np.testing.assert_array_equal(params["readout"]["b"], np.zeros(O, np.float32))


@pytest.mark.parametrize("readout", ["last", "all"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_output_shapes(readout, bidirectional, num_layers):
    model = make_model(lstm, hidden_size=H, output_dim=O, readout=readout, num_layers=num_layers,
                       bidirectional=bidirectional)
    assert len(model.layers) == num_layers
    assert all((layer.backward is not None) == bidirectional for layer in model.layers)
    params = jax.eval_shape(lambda k: model.init(k, D), jax.random.key(0))
    x = jax.ShapeDtypeStruct((B, T, D), jnp.float32)
    mask = jax.ShapeDtypeStruct((B, T), jnp.bool_)
    expected = (B, O) if readout == "last" else (B, T, O)
    for m in (None, mask):
        y = jax.eval_shape(model.apply, params, x, m)
        assert y.shape == expected and y.dtype == jnp.float32


def _random_model_params(model, seed):
    """Params shaped like ``model.init``'s, every leaf (biases too) a normal draw."""
    params = random_params(lambda: model.init(jax.random.key(0), D), seed)
    assert params["readout"]["w"].shape == (model.layers[-1].output_size, O)
    return params


def test_unidirectional_last_readout_is_all_readouts_last_step():
    last = make_model(lstm, hidden_size=H, output_dim=O, readout="last")
    every = make_model(lstm, hidden_size=H, output_dim=O, readout="all")
    params = _random_model_params(last, 60)
    xs, mask = padded_batch(60)
    y_all = every.apply(params, xs)
    np.testing.assert_allclose(last.apply(params, xs), y_all[:, -1], atol=1e-6, rtol=1e-6)
    y_all_masked = every.apply(params, xs, mask)
    np.testing.assert_allclose(last.apply(params, xs, mask), y_all_masked[np.arange(B), LENGTHS - 1],
                               atol=1e-6, rtol=1e-6)


def test_bidirectional_model_against_python_loops():
    """A 1-layer bidirectional model, per sequence: readout of concat(fwd, bwd) and of the summary."""
    last = make_model(lstm, hidden_size=H, output_dim=O, readout="last", bidirectional=True)
    every = make_model(lstm, hidden_size=H, output_dim=O, readout="all", bidirectional=True)
    params = _random_model_params(last, 70)
    w, b = np.asarray(params["readout"]["w"]), np.asarray(params["readout"]["b"])
    layer, p = last.layers[0], params["layers"][0]
    xs, mask = padded_batch(70)
    y_last, y_all = last.apply(params, xs, mask), every.apply(params, xs, mask)
    for i, L in enumerate(LENGTHS):
        _, fwd = loop_scan(layer.forward, p["fwd"], xs[i : i + 1, :L])
        _, bwd = loop_scan(layer.backward, p["bwd"], xs[i : i + 1, :L], reverse=True)
        np.testing.assert_allclose(y_all[i, :L], np.concatenate([fwd[0], bwd[0]], axis=-1) @ w + b,
                                   atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(y_last[i], np.concatenate([fwd[0, L - 1], bwd[0, 0]]) @ w + b,
                                   atol=1e-5, rtol=1e-5)


def test_model_options_pass_through():
    """unroll / hoist_input do not change the function; dropout acts only with a key."""
    base = make_model(rnn, hidden_size=H, output_dim=O, readout="all", num_layers=2, dropout=0.4)
    other = make_model(rnn, hidden_size=H, output_dim=O, readout="all", num_layers=2, dropout=0.4, unroll=2,
                       hoist_input=True)
    params = _random_model_params(base, 80)
    xs = random_inputs(80, (B, T, D))
    y = base.apply(params, xs)
    np.testing.assert_allclose(other.apply(params, xs), y, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(base.apply(params, xs, dropout_key=None), y)
    assert not np.allclose(base.apply(params, xs, dropout_key=jax.random.key(0)), y)


def test_model_hands_its_options_to_scan_stack(monkeypatch):
    """unroll, hoist_input and dropout reach the scan (they do not change the numbers, so watch the call)."""
    import rnnbench.model as model_mod

    seen, real_scan_stack = [], model_mod.scan_stack

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real_scan_stack(*args, **kwargs)

    monkeypatch.setattr(model_mod, "scan_stack", spy)
    model = make_model(rnn, hidden_size=H, output_dim=O, readout="last", num_layers=2, dropout=0.4, unroll=2,
                       hoist_input=True)
    params = jax.eval_shape(lambda k: model.init(k, D), jax.random.key(0))
    key = jax.random.key(1)
    x = jax.ShapeDtypeStruct((B, T, D), jnp.float32)
    jax.eval_shape(lambda p, x: model.apply(p, x, dropout_key=key), params, x)
    assert len(seen) == 1
    assert seen[0]["unroll"] == 2 and seen[0]["hoist_input"] is True and seen[0]["dropout_rate"] == 0.4
    assert seen[0]["dropout_key"] is not None


@pytest.mark.parametrize(("kwargs", "bad"), [
    ({"hidden_size": 0}, "hidden_size=0"),
    ({"num_layers": 0}, "num_layers=0"),
    ({"unroll": 0}, "unroll=0"),
    ({"dropout": 1.0}, r"dropout=1\.0"),
    ({"dropout": -0.1}, r"dropout=-0\.1"),
    ({"readout": "mean"}, "'mean'"),
])
def test_bad_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        make_model(lstm, **{"hidden_size": H, "output_dim": O, "readout": "last", **kwargs})
