"""scan.py against plain Python loops over ``cell.step``: direction, hoisting, unrolling, masks, stacks, dropout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_cells import CASES, assert_tree_close, perturbed_params, random_carry, random_inputs, random_params

import rnnbench.scan as scan_mod
from rnnbench.cells.gru import gru
from rnnbench.cells.lstm import lstm
from rnnbench.cells.rnn import rnn
from rnnbench.scan import Layer, dropout, last_valid, scan_cell, scan_layer, scan_stack

B, T, D, H = 3, 7, 4, 5
LENGTHS = np.array([5, 2, 7])


def loop_scan(cell, params, xs, carry=None, reverse=False):
    """The reference: one ``cell.step`` per time step in a Python loop; reverse = loop over reversed time."""
    if carry is None:
        carry = cell.initial_carry(xs.shape[:1], xs.dtype)
    if reverse:
        carry, hs = loop_scan(cell, params, xs[:, ::-1], carry)
        return carry, hs[:, ::-1]
    outs = []
    for t in range(xs.shape[1]):
        carry, h = cell.step(params, carry, xs[:, t])
        outs.append(h)
    return carry, jnp.stack(outs, axis=1)


def padded_batch(seed, lengths=LENGTHS, t=T, d=D):
    """Right-padded ``xs [B, T, D]`` whose padding is large random garbage (not zeros), and its mask."""
    rng = np.random.default_rng(seed)
    mask = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
    xs = np.where(mask[..., None], rng.standard_normal((len(lengths), t, d)),
                  50.0 * rng.standard_normal((len(lengths), t, d)))
    return jnp.asarray(xs, jnp.float32), jnp.asarray(mask)


# --- scan_cell against the loop -----------------------------------------------------------------


# each hoist_input meets each unroll, and each of the two meets both directions (4 scans per cell, not 8)
SCAN_OPTIONS = [(False, 1, False), (True, 1, True), (False, 3, True), (True, 3, False)]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize(("hoist_input", "unroll", "reverse"), SCAN_OPTIONS,
                         ids=[f"hoist{int(h)}-unroll{u}-{'rev' if r else 'fwd'}" for h, u, r in SCAN_OPTIONS])
def test_scan_cell_equals_python_loop(case, hoist_input, unroll, reverse):
    cell = case.make(H)
    params = perturbed_params(cell, 10, D)
    xs = random_inputs(10, (B, T, D))
    carry0 = random_carry(cell, 10, B)
    carry, hs = scan_cell(cell, params, xs, reverse=reverse, carry=carry0, unroll=unroll, hoist_input=hoist_input)
    ref_carry, ref_hs = loop_scan(cell, params, xs, carry0, reverse=reverse)
    assert hs.shape == (B, T, H)
    assert_tree_close(hs, ref_hs)
    assert_tree_close(carry, ref_carry)


def test_scan_cell_default_carry_is_zeros():
    cell = CASES[0].make(H)
    params = perturbed_params(cell, 11, D)
    xs = random_inputs(11, (B, T, D))
    assert_tree_close(scan_cell(cell, params, xs, hoist_input=False),
                      scan_cell(cell, params, xs, carry=cell.initial_carry((B,)), hoist_input=False), atol=0, rtol=0)


# --- masks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize(("hoist_input", "reverse"), [(False, False), (True, True)], ids=["fwd", "rev-hoisted"])
def test_masked_scan_cell_equals_each_sequence_alone(case, hoist_input, reverse):
    cell = case.make(H)
    params = perturbed_params(cell, 12, D)
    xs, mask = padded_batch(12)
    carry, hs = scan_cell(cell, params, xs, mask, reverse=reverse, hoist_input=hoist_input)
    for b, L in enumerate(LENGTHS):
        ref_carry, ref_hs = loop_scan(cell, params, xs[b : b + 1, :L], reverse=reverse)
        np.testing.assert_allclose(hs[b, :L], ref_hs[0], atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(hs[b, L:], np.zeros((T - L, H), np.float32))
        assert_tree_close(jax.tree.map(lambda c, b=b: c[b : b + 1], carry), ref_carry)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_masked_bidirectional_layer_equals_each_sequence_alone(case):
    layer = Layer(case.make(H), case.make(H))
    assert layer.output_size == 2 * H
    params = {"fwd": perturbed_params(layer.forward, 13, D), "bwd": perturbed_params(layer.backward, 14, D)}
    xs, mask = padded_batch(13)
    hs, summary = scan_layer(layer, params, xs, mask, hoist_input=True)
    assert hs.shape == (B, T, 2 * H) and summary.shape == (B, 2 * H)
    for b, L in enumerate(LENGTHS):
        x_b = xs[b : b + 1, :L]
        _, fwd = loop_scan(layer.forward, params["fwd"], x_b)
        _, bwd = loop_scan(layer.backward, params["bwd"], x_b, reverse=True)  # starts at the sequence's own end
        np.testing.assert_allclose(hs[b, :L, :H], fwd[0], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(hs[b, :L, H:], bwd[0], atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(hs[b, L:], np.zeros((T - L, 2 * H), np.float32))
        np.testing.assert_allclose(summary[b], np.concatenate([fwd[0, L - 1], bwd[0, 0]]), atol=1e-5, rtol=1e-5)


def test_bidirectional_params_are_independent():
    layer = Layer(lstm(H), lstm(H))
    params = layer.init(jax.random.key(15), D)
    assert set(params) == {"fwd", "bwd"}
    assert not np.allclose(params["fwd"]["w_x"], params["bwd"]["w_x"])


def test_unidirectional_layer_summary_is_last_valid_output():
    layer = Layer(gru(H))
    params = perturbed_params(layer.forward, 16, D)
    xs, mask = padded_batch(16)
    hs, summary = scan_layer(layer, params, xs, mask, hoist_input=False)
    _, ref_hs = scan_cell(layer.forward, params, xs, mask, hoist_input=False)
    np.testing.assert_array_equal(hs, ref_hs)
    np.testing.assert_array_equal(summary, ref_hs[np.arange(B), LENGTHS - 1])


def test_last_valid():
    hs = jnp.asarray(np.random.default_rng(17).standard_normal((B, T, 2)), jnp.float32)
    mask = jnp.asarray(np.arange(T)[None, :] < LENGTHS[:, None])
    picked = last_valid(hs, mask)
    np.testing.assert_array_equal(picked, np.stack([hs[b, L - 1] for b, L in enumerate(LENGTHS)]))
    np.testing.assert_array_equal(last_valid(hs, None), hs[:, T - 1])
    np.testing.assert_array_equal(last_valid(hs, jnp.ones((B, T), bool)), hs[:, T - 1])


# --- stacks and dropout -----------------------------------------------------------------------------


def _stack(bidirectional, seed):
    layers = [Layer(gru(H), rnn(H) if bidirectional else None), Layer(lstm(H), gru(H) if bidirectional else None)]
    width, params = D, []
    for i, layer in enumerate(layers):
        params.append(random_params(lambda layer=layer, width=width: layer.init(jax.random.key(0), width), seed + i))
        width = layer.output_size
    return layers, params


def loop_layer(layer, params, xs):
    """A layer by Python loops over one unpadded batch: (hs, summary) as scan_layer defines them."""
    if layer.backward is None:
        _, hs = loop_scan(layer.forward, params, xs)
        return hs, hs[:, -1]
    _, fwd = loop_scan(layer.forward, params["fwd"], xs)
    _, bwd = loop_scan(layer.backward, params["bwd"], xs, reverse=True)
    return jnp.concatenate([fwd, bwd], axis=-1), jnp.concatenate([fwd[:, -1], bwd[:, 0]], axis=-1)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_scan_stack_composes_layers(bidirectional):
    """Two stacked layers over a padded batch equal, per sequence, layer 2 run on layer 1's outputs."""
    layers, params = _stack(bidirectional, 20)
    xs, mask = padded_batch(20)
    hs, summary = scan_stack(layers, params, xs, mask, hoist_input=False)
    F = layers[1].output_size
    assert hs.shape == (B, T, F) and summary.shape == (B, F)
    for b, L in enumerate(LENGTHS):
        h1, _ = loop_layer(layers[0], params[0], xs[b : b + 1, :L])
        h2, s2 = loop_layer(layers[1], params[1], h1)
        np.testing.assert_allclose(hs[b, :L], h2[0], atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(hs[b, L:], np.zeros((T - L, F), np.float32))
        np.testing.assert_allclose(summary[b], s2[0], atol=1e-5, rtol=1e-5)


def test_dropout_is_inverted():
    rate = 0.3
    x = jnp.asarray(np.random.default_rng(21).uniform(0.5, 1.5, (200, 500)), jnp.float32)
    y = np.asarray(dropout(jax.random.key(21), rate, x))
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6)
    # 1e5 Bernoulli draws: the dropped fraction's standard error is 0.0015, the tolerances are ~7 of them
    assert abs((~kept).mean() - rate) < 0.01
    ones = np.asarray(dropout(jax.random.key(22), rate, jnp.ones((200, 500), jnp.float32)))
    assert abs(ones.mean() - 1.0) < 0.015  # inverted: the expected value is preserved
    assert not np.array_equal(y, np.asarray(dropout(jax.random.key(23), rate, x)))


def test_scan_stack_dropout_switches():
    layers = (Layer(rnn(H)), Layer(rnn(H)))
    params = [perturbed_params(layers[0].forward, 30, D), perturbed_params(layers[1].forward, 31, H)]
    xs, mask = padded_batch(30)
    kw = {"hoist_input": True}
    plain, _ = scan_stack(layers, params, xs, mask, **kw)
    no_key, _ = scan_stack(layers, params, xs, mask, dropout_rate=0.5, **kw)
    zero_rate, _ = scan_stack(layers, params, xs, mask, dropout_rate=0.0, dropout_key=jax.random.key(0), **kw)
    dropped, _ = scan_stack(layers, params, xs, mask, dropout_rate=0.5, dropout_key=jax.random.key(0), **kw)
    dropped_other, _ = scan_stack(layers, params, xs, mask, dropout_rate=0.5, dropout_key=jax.random.key(1), **kw)
    np.testing.assert_array_equal(no_key, plain)
    np.testing.assert_array_equal(zero_rate, plain)
    assert not np.allclose(dropped, plain)
    assert not np.allclose(dropped, dropped_other)
    np.testing.assert_array_equal(np.asarray(dropped)[~np.asarray(mask)], 0.0)  # padding stays zero


def test_scan_stack_dropout_sits_between_layers(monkeypatch):
    """Dropout acts on each layer's outputs before the next layer reads them (not on the stack's input,
    not on its output), and each boundary draws its own mask."""
    layers = (Layer(gru(H)), Layer(rnn(H)), Layer(rnn(H)))
    params = [random_params(lambda la=la, w=w: la.init(jax.random.key(0), w), 40 + i)
              for i, (la, w) in enumerate(zip(layers, (D, H, H), strict=True))]
    xs = random_inputs(40, (B, T, D))
    calls = []

    def spy(key, rate, x):
        out = dropout(key, rate, x)
        calls.append((rate, x, out))
        return out

    monkeypatch.setattr(scan_mod, "dropout", spy)
    hs, summary = scan_stack(layers, params, xs, dropout_rate=0.25, dropout_key=jax.random.key(3),
                             hoist_input=False)
    assert len(calls) == 2
    x = xs
    for layer, p, (rate, x_in, x_out) in zip(layers, params, calls, strict=False):
        assert rate == 0.25
        np.testing.assert_allclose(x_in, loop_layer(layer, p, x)[0], atol=1e-5, rtol=1e-5)
        assert np.any(np.asarray(x_out) == 0) and not np.allclose(x_out, x_in)
        x = x_out
    ref_hs, ref_summary = loop_layer(layers[2], params[2], x)
    np.testing.assert_allclose(hs, ref_hs, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(summary, ref_summary, atol=1e-5, rtol=1e-5)
    dropped_1, dropped_2 = (np.asarray(out) == 0 for _, _, out in calls)
    assert not np.array_equal(dropped_1, dropped_2), "both boundaries drew the same dropout mask"


@pytest.mark.parametrize("factory", [lstm, gru], ids=["lstm", "gru"])
def test_remat_gives_the_same_outputs_and_gradients_and_really_rematerialises(factory):
    """``remat=True`` (jax.checkpoint on the scan body) changes memory, never numbers."""
    cell = factory(H)
    params = cell.init(jax.random.key(0), D)
    xs, mask = padded_batch(3)

    def loss(p, x, remat):
        _, hs = scan_cell(cell, p, x, mask, remat=remat)
        return jnp.sum(jnp.sin(hs))

    plain = jax.value_and_grad(loss, argnums=(0, 1))(params, xs, False)
    remat = jax.value_and_grad(loss, argnums=(0, 1))(params, xs, True)
    assert_tree_close(remat, plain, rtol=1e-6, atol=1e-6)
    # what the forward pass keeps for the backward one (the vjp's residuals): the gates of every step
    # without remat, about the carries only with it
    def saved(remat):
        _, vjp = jax.vjp(lambda p: loss(p, xs, remat), params)
        return sum(leaf.size for leaf in jax.tree.leaves(vjp))

    assert saved(True) < 0.7 * saved(False), (saved(True), saved(False))
