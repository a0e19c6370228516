"""The train step and the loop: learning happens, numbers are deterministic, seeds train together."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnnbench.cells.gru import gru
from rnnbench.cells.lstm import lstm
from rnnbench.model import make_model
from rnnbench.optim import adam, sgd
from rnnbench.tasks.adding import adding
from rnnbench.tasks.copy_memory import copy_memory
from rnnbench.train import TrainState, fit, make_train_step, seed_keys


def _setup(task, cell=lstm, hidden=8, **model_kw):
    model = make_model(cell, hidden_size=hidden, output_dim=task.output_dim, readout=task.readout, **model_kw)
    return model


def _fit(task, model, opt, **kw):
    records = []
    defaults = dict(seed=0, num_seeds=1, steps=40, batch_size=16, eval_every=20, eval_size=64)
    defaults.update(kw)
    result = fit(model, task, opt, on_eval=lambda step, recs: records.extend(recs), **defaults)
    return result, records


def test_train_step_changes_params_and_lowers_loss_on_a_fixed_batch():
    task = adding(8)
    model = _setup(task)
    opt = adam(100, lr=1e-2)
    params = model.init(jax.random.key(0), task.input_dim)
    state = TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))
    batch = task.sample(jax.random.key(1), 32)
    step = jax.jit(make_train_step(model, task, opt, dropout=False))
    first, metrics0 = step(state, batch, jax.random.key(2))
    assert int(first.step) == 1
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, first.params)
    assert all(jax.tree.leaves(changed))
    state = first
    for _ in range(30):
        state, metrics = step(state, batch, jax.random.key(2))
    assert float(metrics["loss"]) < 0.5 * float(metrics0["loss"])


def test_train_step_metrics_are_the_norms_of_the_gradient_and_update():
    task = adding(6)
    model = _setup(task)
    opt = sgd(10, lr=0.1, momentum=0.0, clip_norm=0.0)
    params = model.init(jax.random.key(0), task.input_dim)
    state = TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))
    batch = task.sample(jax.random.key(1), 8)
    new, metrics = make_train_step(model, task, opt, dropout=False)(state, batch, jax.random.key(2))
    grads = jax.grad(lambda p: task.loss(model.apply(p, batch.x), batch))(params)
    flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
    assert float(metrics["l2_grads"]) == pytest.approx(np.linalg.norm(flat), rel=1e-5)
    # plain SGD: the update is -lr * grad
    assert float(metrics["l2_updates"]) == pytest.approx(0.1 * np.linalg.norm(flat), rel=1e-5)
    moved = jax.tree.map(lambda a, b, g: np.allclose(b, a - 0.1 * g, atol=1e-6), params, new.params, grads)
    assert all(jax.tree.leaves(moved))


def test_training_lowers_the_eval_loss_below_the_start():
    task = adding(10)
    result, records = _fit(task, _setup(task), adam(150, lr=1e-2), steps=150, eval_every=50)
    assert [r["step"] for r in records] == [0, 50, 100, 150]
    assert records[-1]["eval_loss"] < 0.5 * records[0]["eval_loss"]
    assert result.steps == 150 and not result.diverged


def test_same_seed_gives_identical_numbers():
    task = copy_memory(5, copy_len=3)
    model = _setup(task, cell=gru)
    runs = [_fit(task, model, adam(40, lr=1e-2))[1] for _ in range(2)]
    strip = [[{k: v for k, v in r.items() if k != "wall_time"} for r in recs] for recs in runs]
    assert strip[0] == strip[1]
    other = _fit(task, model, adam(40, lr=1e-2), seed=1)[1]
    assert other[-1]["eval_loss"] != runs[0][-1]["eval_loss"]


@pytest.mark.parametrize("how", ["map", "vmap", "loop"])
def test_seeds_in_parallel_equal_each_seed_trained_alone(how):
    task = adding(6)
    model = _setup(task, dropout=0.3, num_layers=2)
    opt = adam(40, lr=1e-2)
    together = _fit(task, model, opt, seed=3, num_seeds=3, seed_parallelism=how, dropout=True)[1]
    for s in (3, 4, 5):
        alone = _fit(task, model, opt, seed=s, num_seeds=1, seed_parallelism="map", dropout=True)[1]
        mine = [r for r in together if r["seed"] == s]
        assert len(mine) == len(alone)
        for a, b in zip(mine, alone, strict=True):
            for key in ("eval_loss", "eval_metric", "train_loss", "grad_norm", "l2_params"):
                if a[key] is None:
                    assert b[key] is None
                else:
                    assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (s, a["step"], key)


def test_seeds_have_independent_streams():
    keys = [seed_keys(s) for s in (0, 1)]
    data = [np.asarray(jax.random.key_data(k.data)) for k in keys]
    assert not np.array_equal(data[0], data[1])
    k = keys[0]
    streams = [np.asarray(jax.random.key_data(x)) for x in (k.init, k.data, k.eval, k.dropout)]
    assert len({s.tobytes() for s in streams}) == 4


def test_a_remainder_chunk_still_evaluates_at_the_end():
    task = adding(4)
    result, records = _fit(task, _setup(task), adam(25), steps=25, eval_every=10)
    assert [r["step"] for r in records] == [0, 10, 20, 25]
    assert result.steps == 25


def test_solved_is_recorded_with_its_step():
    # A generous threshold (0.9 of the baseline) that a trained LSTM crosses quickly on a short sequence.
    task = adding(4, solved_ratio=0.9)
    result, records = _fit(task, _setup(task), adam(60, lr=1e-2), steps=60, eval_every=10)
    seed = result.seeds[0]
    below = [r["step"] for r in records if r["eval_loss"] < task.solved_threshold]
    assert seed.solved_at_step == below[0]
    assert seed.solved == (records[-1]["eval_loss"] < task.solved_threshold)


def test_divergence_is_detected_and_stops_training():
    task = adding(4)
    opt = sgd(100, lr=1e8, momentum=0.0, clip_norm=0.0)
    result, records = _fit(task, _setup(task, cell=lstm), opt, steps=100, eval_every=10)
    assert result.diverged
    first_bad = result.seeds[0].diverged_at_step
    assert first_bad is not None and 1 <= first_bad <= 20
    assert result.steps < 100  # stopped once every seed had diverged
    assert np.isfinite(records[0]["eval_loss"])


def test_weight_decay_shrinks_matrices_but_not_biases():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    zero = jax.tree.map(jnp.zeros_like, params)
    opt = adam(10, lr=0.1, weight_decay=0.5, clip_norm=0.0)
    updates, _ = opt.update(zero, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], 1.0 - 0.1 * 0.5)
    np.testing.assert_allclose(new["b"], 1.0)


@pytest.mark.slow
def test_lstm_solves_adding_where_the_tanh_rnn_does_not():
    """The classic result (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016) at a small scale:
    on the adding problem with T=50 an LSTM gets far below the 1/6 baseline, a tanh RNN stays near it."""
    from rnnbench.cells.rnn import rnn

    task = adding(50)
    kw = dict(steps=1500, batch_size=64, eval_every=500, eval_size=512, num_seeds=2)
    lstm_result, _ = _fit(task, _setup(task, cell=lstm, hidden=64), adam(1500, lr=1e-2), **kw)
    rnn_result, _ = _fit(task, _setup(task, cell=rnn, hidden=64), adam(1500, lr=1e-2), **kw)
    assert all(s.solved for s in lstm_result.seeds)
    assert all(s.eval_loss > 0.5 * task.baseline_loss for s in rnn_result.seeds)


def test_eval_data_fingerprint_is_the_hash_of_each_seeds_evaluation_batch():
    import hashlib

    task = adding(5)
    model = _setup(task)
    result = _fit(task, model, adam(4), steps=4, eval_every=4, num_seeds=2, seed=7)[0]
    again = _fit(task, model, adam(4), steps=4, eval_every=4, num_seeds=1, seed=8)[0]
    for r in result.seeds:
        batch = task.sample(seed_keys(r.seed).eval, 64)  # eval_size 64 in _fit
        h = hashlib.sha256()
        for leaf in (batch.x, batch.y):  # mask is None for adding
            a = np.asarray(leaf)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        assert r.eval_data_sha256 == h.hexdigest()
    assert result.seeds[0].eval_data_sha256 != result.seeds[1].eval_data_sha256
    assert again.seeds[0].eval_data_sha256 == result.seeds[1].eval_data_sha256  # seed 8 alone or with 7


def test_length_generalisation_evaluates_the_trained_model_at_other_lengths():
    """The training length itself, passed as an extra length, reproduces the final evaluation exactly."""
    task = adding(6)
    model = _setup(task)
    result, records = _fit(task, model, adam(10, lr=1e-2), steps=10, eval_every=10, num_seeds=2,
                           eval_tasks={6: adding(6), 12: adding(12)})
    finals = [r for r in records if r["step"] == 10]
    for rec, seed_result in zip(finals, result.seeds, strict=True):
        assert rec["length_eval"] == seed_result.length_eval
        assert rec["length_eval"]["6"]["eval_loss"] == rec["eval_loss"]
        assert rec["length_eval"]["6"]["eval_metric"] == rec["eval_metric"]
        assert rec["length_eval"]["12"]["eval_loss"] != rec["eval_loss"]
        at_12 = rec["length_eval"]["12"]
        assert at_12["solved"] == (at_12["eval_loss"] < adding(12).solved_threshold)
    assert all("length_eval" not in r for r in records if r["step"] < 10)



def _blow_up_where_readout_starts_positive(lr):
    """SGD, except that a seed whose first readout weight starts positive gets an infinite step.

    Seeds differ only in their init, so this is how one program of K seeds can hold one seed that
    diverges at once (its loss is NaN from step 2) beside seeds that train normally."""

    def init(params):
        return {"blow_up": params["readout"]["w"][0, 0] > 0}

    def update(grads, state, params=None):
        factor = jnp.where(state["blow_up"], jnp.inf, 1.0)
        return jax.tree.map(lambda g: -lr * factor * g, grads), state

    return optax.GradientTransformation(init, update)


def test_a_diverging_seed_stops_and_the_others_finish():
    task = adding(4)
    model = _setup(task)
    opt = _blow_up_where_readout_starts_positive(0.05)
    first_w = [float(model.init(seed_keys(s).init, task.input_dim)["readout"]["w"][0, 0]) for s in range(40)]
    start = next(s for s in range(37) if sum(w > 0 for w in first_w[s : s + 4]) == 1)  # one of 4 blows up
    bad = start + next(i for i in range(4) if first_w[start + i] > 0)
    result, records = _fit(task, model, opt, seed=start, num_seeds=4, steps=30, eval_every=10)
    assert result.diverged and result.steps == 30  # the other seeds ran to the end
    for r in result.seeds:
        mine = [rec for rec in records if rec["seed"] == r.seed]
        if r.seed == bad:
            assert r.diverged_at_step == 2  # its first update is infinite: the loss of step 2 is not finite
            # stopped with its last finite parameters: every evaluation is the one at step 0
            assert {rec["eval_loss"] for rec in mine} == {mine[0]["eval_loss"]} and np.isfinite(r.eval_loss)
            assert [rec["diverged"] for rec in mine] == [False, True, True, True]
            assert mine[2]["train_loss"] is None and mine[3]["train_loss"] is None  # no training after the stop
        else:
            assert r.diverged_at_step is None
            alone = _fit(task, model, opt, seed=r.seed, num_seeds=1, steps=30, eval_every=10)[1]
            assert [rec["eval_loss"] for rec in mine] == pytest.approx([rec["eval_loss"] for rec in alone], rel=1e-5)


def test_skip_nonfinite_updates_keeps_a_seed_training():
    """With optax.apply_if_finite (train.skip_nonfinite_updates), a NaN gradient skips that step only."""
    clean = adding(4)

    def sample(key, batch_size):  # one training batch in four carries a NaN: its gradient is NaN
        batch = clean.sample(key, batch_size)
        poisoned = jax.random.uniform(jax.random.fold_in(key, 99)) < 0.25
        return batch._replace(x=jnp.where(poisoned, jnp.nan, batch.x))

    task = clean._replace(sample=sample, sample_eval=clean.sample)
    model = _setup(task)
    opt = optax.apply_if_finite(optax.sgd(0.05), max_consecutive_errors=10**6)
    result, records = _fit(task, model, opt, steps=20, eval_every=10, skip_nonfinite_updates=True)
    assert not result.diverged and result.seeds[0].diverged_at_step is None
    assert 0 < sum(r["nonfinite_grads"] or 0 for r in records)  # there were NaN gradients, and they were skipped
    assert all(np.isfinite(r["eval_loss"]) for r in records)
    assert records[-1]["eval_loss"] < records[0]["eval_loss"]
    stopped, _ = _fit(task, model, optax.sgd(0.05), steps=20, eval_every=10)  # without: the first NaN stops it
    assert stopped.diverged and stopped.seeds[0].diverged_at_step is not None
