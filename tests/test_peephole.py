"""The peephole LSTM and Greff et al.'s eight ablations (rnnbench/cells/peephole.py), switch by switch.

test_cells.py checks every config against a numpy reference of the equations; here each ablation's own
claim: NP is the plain LSTM, zero peepholes are NP, the output gate peeks at the new cell, CIFG's f is
1 - i, a removed gate acts as 1, NIAF/NOAF are identities, FGR feeds the previous gates back, every
config trains under jit without retracing, and invalid switch combinations are refused.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_cells import assert_tree_close, np_sigmoid, np_tanh, perturbed_params, random_carry, random_inputs

from rnnbench.cells.lstm import lstm
from rnnbench.cells.peephole import greff_lstm
from rnnbench.config import ConfigError, build_cell, build_optimizer, build_task
from rnnbench.model import make_model
from rnnbench.scan import scan_cell
from rnnbench.train import TrainState, make_train_step

B, D, H, T = 3, 4, 5, 6
GREFF_CONFIGS = ["peephole_lstm", "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr"]


def blocks(w, n):
    """The n gate blocks of a fused matrix or bias, split along the last axis."""
    return list(np.split(np.asarray(w), n, axis=-1))


def fuse(bs):
    return jnp.asarray(np.concatenate(bs, axis=-1))


def pre_activations(params, carry, x, n):
    """x W + y R + b per block (numpy float64), in the cell's order; the carry's last leaf is y."""
    x, y = np.asarray(x, np.float64), np.asarray(carry[-1], np.float64)
    return [a + b_ + c for a, b_, c in zip(blocks(x @ np.asarray(params["w_x"], np.float64), n),
                                           blocks(y @ np.asarray(params["w_h"], np.float64), n),
                                           blocks(np.asarray(params["b"], np.float64), n), strict=True)]


# --- NP is the plain LSTM; zero peepholes are NP --------------------------------------------------------

GREFF_TO_LSTM = [1, 2, 0, 3]  # lstm's i, f, g, o are greff's blocks i, f, z, o


def to_lstm_params(p, order=GREFF_TO_LSTM):
    return {k: fuse([blocks(p[k], 4)[j] for j in order]) for k in ("w_x", "w_h", "b")}


def test_np_equals_the_plain_lstm_given_the_same_weights():
    np_cell, ref = greff_lstm(H, peepholes=False), lstm(H)
    params = perturbed_params(np_cell, 0, D)
    assert set(params) == {"w_x", "w_h", "b"}
    lstm_params = to_lstm_params(params)
    carry, x = random_carry(np_cell, 0, B), random_inputs(0, (B, D))
    assert_tree_close(np_cell.step(params, carry, x), ref.step(lstm_params, carry, x), atol=1e-6, rtol=1e-6)
    gx = np_cell.project_input(params, x)
    ours, theirs = np_cell.gates(params, carry, gx), ref.gates(lstm_params, carry, ref.project_input(lstm_params, x))
    assert_tree_close(ours, theirs, atol=1e-6, rtol=1e-6)
    xs = random_inputs(1, (B, T, D))
    assert_tree_close(scan_cell(np_cell, params, xs, carry=carry, hoist_input=True),
                      scan_cell(ref, lstm_params, xs, carry=carry, hoist_input=False), atol=1e-6, rtol=1e-6)
    # the mapping matters: the weights in greff's order read as lstm's i, f, g, o give another cell
    assert not np.allclose(np_cell.step(params, carry, x)[1], ref.step(to_lstm_params(params, [0, 1, 2, 3]),
                                                                       carry, x)[1], atol=1e-3)


def test_zero_peepholes_equal_np_and_nonzero_ones_do_not():
    peep, no_peep = greff_lstm(H), greff_lstm(H, peepholes=False)
    params = perturbed_params(no_peep, 1, D)
    zero = {**params, **{f"p_{g}": jnp.zeros((H,), jnp.float32) for g in "ifo"}}
    assert set(zero) == set(peep.init(jax.random.key(0), D))
    carry, xs = random_carry(peep, 1, B), random_inputs(1, (B, T, D))
    assert_tree_close(peep.step(zero, carry, xs[:, 0]), no_peep.step(params, carry, xs[:, 0]), atol=0, rtol=0)
    np_scan = scan_cell(no_peep, params, xs, carry=carry, hoist_input=False)
    assert_tree_close(scan_cell(peep, zero, xs, carry=carry, hoist_input=False), np_scan, atol=1e-6, rtol=1e-6)
    for g in "ifo":  # each peephole on its own changes the outputs
        one = {**zero, f"p_{g}": jnp.full((H,), 0.8, jnp.float32)}
        _, h_peep = scan_cell(peep, one, xs, carry=carry, hoist_input=False)
        assert not np.allclose(h_peep, np_scan[1], atol=1e-3), f"p_{g} has no effect"


def test_untrained_peephole_lstm_equals_np():
    """Peepholes start at zero, so at init the peephole LSTM is NP on the same other weights."""
    peep, no_peep = greff_lstm(H), greff_lstm(H, peepholes=False)
    params = peep.init(jax.random.key(2), D)
    for g in "ifo":
        np.testing.assert_array_equal(params[f"p_{g}"], np.zeros(H, np.float32))
    rest = {k: v for k, v in params.items() if not k.startswith("p_")}
    carry, x = random_carry(peep, 2, B), random_inputs(2, (B, D))
    assert_tree_close(peep.step(params, carry, x), no_peep.step(rest, carry, x), atol=0, rtol=0)


def test_input_and_forget_gates_peek_at_the_old_cell_the_output_gate_at_the_new():
    """One step whose cell changes a lot (c_{t-1} = -1.5, c_t = 0.38), read back through ``gates``."""
    cell = greff_lstm(H)
    b_z, b_i, b_f, b_o, p_i, p_f, p_o = 3.0, 2.5, -3.5, 0.1, 1.5, -1.0, 3.0
    p = {"w_x": jnp.zeros((D, 4 * H)), "w_h": jnp.zeros((H, 4 * H)),
         "b": fuse([np.full(H, v, np.float32) for v in (b_z, b_i, b_f, b_o)]),
         "p_i": jnp.full((H,), p_i), "p_f": jnp.full((H,), p_f), "p_o": jnp.full((H,), p_o)}
    c_prev = np.full((1, H), -1.5)
    carry = (jnp.asarray(c_prev, jnp.float32), jnp.zeros((1, H)))
    x = jnp.zeros((1, D))
    i = np_sigmoid(b_i + p_i * c_prev)
    f = np_sigmoid(b_f + p_f * c_prev)
    c = np_tanh(b_z) * i + c_prev * f
    o = np_sigmoid(b_o + p_o * c)
    gates = cell.gates(p, carry, cell.project_input(p, x))
    (c_new, y_new), h = cell.step(p, carry, x)
    tol = {"atol": 1e-6, "rtol": 1e-6}
    np.testing.assert_allclose(gates["input"], i, **tol)
    np.testing.assert_allclose(gates["forget"], f, **tol)
    np.testing.assert_allclose(c_new, c, **tol)
    np.testing.assert_allclose(gates["output"], o, **tol)
    np.testing.assert_allclose(h, np_tanh(c) * o, **tol)
    np.testing.assert_array_equal(h, y_new)
    # the case distinguishes: the other cell state would give gates far from these
    assert np.all(np.abs(c - c_prev) > 1.5)
    assert np.all(np.abs(np_sigmoid(b_o + p_o * c_prev) - gates["output"]) > 0.5)
    assert np.all(np.abs(np_sigmoid(b_i + p_i * c) - gates["input"]) > 0.3)
    assert np.all(np.abs(np_sigmoid(b_f + p_f * c) - gates["forget"]) > 0.05)


# --- CIFG -------------------------------------------------------------------------------------------


def test_cifg_forget_is_one_minus_input():
    cell = greff_lstm(H, coupled_input_forget=True)
    params = perturbed_params(cell, 3, D)
    assert set(params) == {"w_x", "w_h", "b", "p_i", "p_o"}  # no forget-gate parameters
    assert params["w_x"].shape == (D, 3 * H)
    carry, x = random_carry(cell, 3, B), random_inputs(3, (B, D))
    gates = cell.gates(params, carry, cell.project_input(params, x))
    assert set(gates) == {"input", "forget", "output"}
    np.testing.assert_array_equal(gates["forget"], 1.0 - gates["input"])
    assert np.ptp(np.asarray(gates["input"])) > 0.1  # not a constant gate
    # and f = 1 - i is what updates the cell
    z = np.tanh(pre_activations(params, carry, x, 3)[0])
    expected_c = z * np.asarray(gates["input"]) + np.asarray(carry[0]) * (1.0 - np.asarray(gates["input"]))
    np.testing.assert_allclose(cell.step(params, carry, x)[0][0], expected_c, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("forget_bias", [1.0, 2.5])
def test_cifg_init_starts_the_forget_gate_at_sigmoid_forget_bias(forget_bias):
    x = jnp.zeros((B, D))
    for kwargs in ({"coupled_input_forget": True}, {}):  # CIFG, and the uncoupled peephole LSTM alike
        cell = greff_lstm(H, forget_bias=forget_bias, **kwargs)
        params = cell.init(jax.random.key(4), D)
        gates = cell.gates(params, cell.initial_carry((B,)), cell.project_input(params, x))
        np.testing.assert_allclose(gates["forget"], np.full((B, H), np_sigmoid(forget_bias)), atol=1e-6, rtol=0)
        assert abs(np_sigmoid(forget_bias) - 0.5) > 0.2  # not what a zero bias would give


# --- NIG / NFG / NOG: the removed gate is 1 ----------------------------------------------------------


@pytest.mark.parametrize(("switch", "gate", "k"), [("input_gate", "input", 1), ("forget_gate", "forget", 2),
                                                   ("output_gate", "output", 3)])
def test_removed_gate_is_absent_and_acts_as_one(switch, gate, k):
    """The ablated cell equals the full peephole LSTM with that gate's block pinned at sigmoid(50) == 1."""
    ablated, full = greff_lstm(H, **{switch: False}), greff_lstm(H)
    params = perturbed_params(ablated, 5, D)
    assert f"p_{gate[0]}" not in params and params["w_x"].shape == (D, 3 * H)
    carry, xs = random_carry(ablated, 5, B), random_inputs(5, (B, T, D))
    gates = ablated.gates(params, carry, ablated.project_input(params, xs[:, 0]))
    assert set(gates) == {"input", "forget", "output"} - {gate}

    def insert(w, block):
        bs = blocks(w, 3)
        return fuse([*bs[:k], block, *bs[k:]])

    pinned = {"w_x": insert(params["w_x"], np.zeros((D, H), np.float32)),
              "w_h": insert(params["w_h"], np.zeros((H, H), np.float32)),
              "b": insert(params["b"], np.full(H, 50.0, np.float32)),
              **{name: v for name, v in params.items() if name.startswith("p_")},
              f"p_{gate[0]}": jnp.zeros((H,), jnp.float32)}
    assert float(jax.nn.sigmoid(jnp.float32(50.0))) == 1.0
    np.testing.assert_array_equal(full.gates(pinned, carry, full.project_input(pinned, xs[:, 0]))[gate], 1.0)
    ablated_scan = scan_cell(ablated, params, xs, carry=carry, hoist_input=False)
    assert_tree_close(ablated_scan, scan_cell(full, pinned, xs, carry=carry, hoist_input=False), atol=1e-6, rtol=1e-6)
    # and pinned at 0.5 instead it would be another cell
    half = {**pinned, "b": insert(params["b"], np.zeros(H, np.float32))}
    assert not np.allclose(scan_cell(full, half, xs, carry=carry, hoist_input=False)[1], ablated_scan[1], atol=1e-3)


# --- NIAF / NOAF: identity activations ----------------------------------------------------------------


def test_niaf_block_input_is_linear():
    """With i pinned at 1 and c_{t-1} = 0, c_t is the raw block input pre-activation (beyond tanh's range)."""
    cell = greff_lstm(H, input_activation=False)
    params = perturbed_params(cell, 6, D, scale=1.5)
    params["w_x"] = params["w_x"].at[:, H : 2 * H].set(0.0)
    params["w_h"] = params["w_h"].at[:, H : 2 * H].set(0.0)
    params["b"] = params["b"].at[H : 2 * H].set(50.0)
    carry = (jnp.zeros((B, H)), random_carry(cell, 6, B)[1])
    x = random_inputs(6, (B, D))
    z_pre = pre_activations(params, carry, x, 4)[0]
    (c, y), _ = cell.step(params, carry, x)
    np.testing.assert_allclose(c, z_pre, atol=1e-5, rtol=1e-5)
    assert np.abs(z_pre).max() > 1.5  # tanh could not have produced this
    o = np.asarray(cell.gates(params, carry, cell.project_input(params, x))["output"])
    np.testing.assert_allclose(y, np.tanh(z_pre) * o, atol=1e-5, rtol=1e-5)  # the output activation is still tanh


def test_noaf_output_is_cell_times_output_gate():
    cell = greff_lstm(H, output_activation=False)
    params = perturbed_params(cell, 7, D)
    carry = random_carry(cell, 7, B)
    carry = (3.0 * carry[0], carry[1])
    x = random_inputs(7, (B, D))
    o = np.asarray(cell.gates(params, carry, cell.project_input(params, x))["output"])
    (c, y), h = cell.step(params, carry, x)
    np.testing.assert_allclose(h, np.asarray(c) * o, atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(h, y)
    assert np.abs(np.asarray(h)).max() > 1.0  # beyond tanh's range
    # the block input keeps its tanh: c_t = tanh(z) i + c_{t-1} f
    gates = cell.gates(params, carry, cell.project_input(params, x))
    z = np.tanh(pre_activations(params, carry, x, 4)[0])
    np.testing.assert_allclose(c, z * gates["input"] + np.asarray(carry[0]) * gates["forget"], atol=1e-5, rtol=1e-5)


# --- FGR: the previous gates feed every gate --------------------------------------------------------------


def test_fgr_carries_the_gates_and_feeds_them_back():
    cell = greff_lstm(H, full_gate_recurrence=True)
    params = perturbed_params(cell, 8, D)
    assert params["w_g"].shape == (3 * H, 3 * H)
    carry0 = cell.initial_carry((B,))
    assert [leaf.shape for leaf in carry0] == [(B, 3 * H), (B, H), (B, H)]
    xs = random_inputs(8, (B, 2, D))
    gates1 = cell.gates(params, carry0, cell.project_input(params, xs[:, 0]))
    carry1, _ = cell.step(params, carry0, xs[:, 0])
    np.testing.assert_array_equal(carry1[0], jnp.concatenate([gates1["input"], gates1["forget"],
                                                              gates1["output"]], axis=-1))

    # step 2 against numpy: [i, f, o]_1 @ w_g enters the pre-activations of i, f, o (not z)
    z_pre, i_pre, f_pre, o_pre = pre_activations(params, carry1, xs[:, 1], 4)
    fb = np.asarray(carry1[0], np.float64) @ np.asarray(params["w_g"], np.float64)
    gi, gf, go = blocks(fb, 3)
    c_prev = np.asarray(carry1[1], np.float64)
    p = {k: np.asarray(params[k], np.float64) for k in ("p_i", "p_f", "p_o")}
    i = np_sigmoid(i_pre + gi + p["p_i"] * c_prev)
    f = np_sigmoid(f_pre + gf + p["p_f"] * c_prev)
    c = np_tanh(z_pre) * i + c_prev * f
    o = np_sigmoid(o_pre + go + p["p_o"] * c)
    gates2 = cell.gates(params, carry1, cell.project_input(params, xs[:, 1]))
    for name, expected in (("input", i), ("forget", f), ("output", o)):
        np.testing.assert_allclose(gates2[name], expected, atol=1e-6, rtol=1e-5)
    (g2, c2, _), h2 = cell.step(params, carry1, xs[:, 1])
    np.testing.assert_allclose(c2, c, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(h2, np_tanh(c) * o, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(g2, np.concatenate([i, f, o], axis=-1), atol=1e-6, rtol=1e-5)
    # the feedback is material here: without it the gates would be elsewhere
    assert np.abs(np_sigmoid(i_pre + p["p_i"] * c_prev) - i).max() > 1e-2
    assert np.abs(np_sigmoid(o_pre + p["p_o"] * c) - o).max() > 1e-2


# --- every config composes and trains under jit -------------------------------------------------------------


def test_every_config_composes_and_trains_two_seeds_under_jit(compose):
    """All nine configs as the CLI builds them, each trained 3 steps on two seeds (vmapped), under jit.

    The nine train steps share one jitted program: compiling it is the expensive part, and one
    compile for all nine costs about half of nine. Each config's step must be traced exactly once.
    """
    runs = {}
    for name in GREFF_CONFIGS:
        cfg = compose([f"cell={name}", "task=adding", "task.seq_len=3", "model.hidden_size=3"])
        factory, bidirectional = build_cell(cfg.cell)
        assert not bidirectional
        assert factory(3).name == name
        task = build_task(cfg.task)
        optimizer = build_optimizer(cfg.optim, total_steps=3)
        model = make_model(factory, hidden_size=3, output_dim=task.output_dim, readout=task.readout)
        runs[name] = (model, task, optimizer, make_train_step(model, task, optimizer, dropout=False))
    traces = dict.fromkeys(GREFF_CONFIGS, 0)

    def one_seed(name, state, key):
        traces[name] += 1
        _, task, _, train_step = runs[name]
        return train_step(state, task.sample(key, 4), key)

    step = jax.jit(lambda states, keys: {n: jax.vmap(functools.partial(one_seed, n))(st, keys)
                                         for n, st in states.items()})
    init = {}
    for name, (model, task, optimizer, _) in runs.items():
        params = jax.tree.map(lambda *a: jnp.stack(a), *[model.init(jax.random.key(s), task.input_dim) for s in (0, 1)])
        init[name] = TrainState(params, jax.vmap(optimizer.init)(params), jnp.zeros((2,), jnp.int32))
    states, losses = init, []
    for t in range(3):
        keys = jnp.stack([jax.random.fold_in(jax.random.key(s), t) for s in (0, 1)])
        out = step(states, keys)
        states = {n: st for n, (st, _) in out.items()}
        losses.append({n: np.asarray(metrics["loss"]) for n, (_, metrics) in out.items()})
    assert step._cache_size() == 1, "the train step was retraced"
    assert traces == dict.fromkeys(GREFF_CONFIGS, 1), traces
    for name in GREFF_CONFIGS:
        loss = np.stack([row[name] for row in losses])
        assert loss.shape == (3, 2) and np.all(np.isfinite(loss)), (name, loss)
        assert not np.allclose(loss[:, 0], loss[:, 1]), f"{name}: two seeds, one run"
        np.testing.assert_array_equal(states[name].step, [3, 3])
        moved = jax.tree.map(lambda a, b: bool(np.all(np.any(np.asarray(a != b).reshape(2, -1), axis=1))),
                             init[name].params, states[name].params)
        assert all(jax.tree.leaves(moved)), f"{name}: some parameter did not train in some seed: {moved}"


# --- invalid switch combinations -----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"coupled_input_forget": True, "input_gate": False},
    {"coupled_input_forget": True, "forget_gate": False},
    {"full_gate_recurrence": True, "input_gate": False},
    {"full_gate_recurrence": True, "forget_gate": False},
    {"full_gate_recurrence": True, "output_gate": False},
    {"full_gate_recurrence": True, "coupled_input_forget": True},
], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_invalid_switch_combinations_raise(kwargs):
    switch = "coupled_input_forget" if "full_gate_recurrence" not in kwargs else "full_gate_recurrence"
    with pytest.raises(ValueError, match=switch):
        greff_lstm(H, **kwargs)


@pytest.mark.parametrize("kwargs", [
    {"coupled_input_forget": True, "output_gate": False, "peepholes": False},
    {"full_gate_recurrence": True, "peepholes": False, "input_activation": False, "output_activation": False},
    {"input_gate": False, "forget_gate": False, "output_gate": False},
])
def test_valid_switch_combinations_build(kwargs):
    cell = greff_lstm(H, **kwargs)
    params = perturbed_params(cell, 9, D)
    _, h = cell.step(params, random_carry(cell, 9, B), random_inputs(9, (B, D)))
    assert h.shape == (B, H) and np.all(np.isfinite(np.asarray(h)))


def test_invalid_combination_in_a_config_is_a_config_error(compose):
    cfg = compose(["cell=cifg", "cell.input_gate=false"])
    with pytest.raises(ConfigError, match="coupled_input_forget"):
        build_cell(cfg.cell)
