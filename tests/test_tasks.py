"""The synthetic tasks: batch layout, determinism, losses and their analytic baselines."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnbench.tasks import Batch
from rnnbench.tasks.adding import adding
from rnnbench.tasks.copy_memory import copy_memory

# One sample shape per task throughout (the statistical adding tests need their 50_000 rows anyway):
# eager jax compiles its random ops once per shape, and reuses them across tests.
T_ADD, ROWS_ADD = 10, 50_000
T_COPY, S, N, ROWS_COPY = 5, 4, 3, 64
TASKS = {
    "adding": lambda: adding(seq_len=T_ADD, solved_ratio=0.06),
    "copy": lambda: copy_memory(seq_len=T_COPY, num_symbols=S, copy_len=N, solved_ratio=0.1),
}
ROWS = {"adding": ROWS_ADD, "copy": ROWS_COPY}


def expected_layout(name):
    """(x shape, y shape, y dtype) from the papers' encodings, for TASKS[name]."""
    if name == "adding":
        return (ROWS_ADD, T_ADD, 2), (ROWS_ADD, 1), jnp.float32
    return (ROWS_COPY, T_COPY + 2 * N, S + 2), (ROWS_COPY, T_COPY + 2 * N), jnp.int32


# --- shared contract --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
def test_batch_shapes_and_dtypes(name):
    task = TASKS[name]()
    batch = task.sample(jax.random.key(0), ROWS[name])
    x_shape, y_shape, y_dtype = expected_layout(name)
    assert isinstance(batch, Batch)
    assert batch.x.shape == x_shape and batch.x.dtype == jnp.float32
    assert batch.y.shape == y_shape and batch.y.dtype == y_dtype
    assert batch.mask is None  # fixed-length tasks: every step is real
    assert task.input_dim == x_shape[-1]
    assert task.readout == ("last" if name == "adding" else "all")


@pytest.mark.parametrize("name", TASKS)
def test_sample_is_deterministic_and_jittable(name):
    task = TASKS[name]()
    a = task.sample(jax.random.key(1), ROWS[name])
    b = task.sample(jax.random.key(1), ROWS[name])
    c = task.sample(jax.random.key(2), ROWS[name])
    jitted = jax.jit(task.sample, static_argnums=1)(jax.random.key(1), ROWS[name])
    for leaf_a, leaf_b, leaf_j in zip(a[:2], b[:2], jitted[:2], strict=True):
        np.testing.assert_array_equal(leaf_a, leaf_b)
        np.testing.assert_array_equal(leaf_a, leaf_j)
    assert jitted.mask is None
    assert not np.array_equal(a.x, c.x)
    assert not np.array_equal(a.y, c.y)


# --- adding problem ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adding_large():
    """TASKS["adding"] and one 50_000-row batch of it, shared by the adding tests."""
    task = TASKS["adding"]()
    return task, task.sample(jax.random.key(5), ROWS_ADD)


@pytest.mark.parametrize("seq_len", [2, T_ADD])
def test_adding_structure(seq_len, adding_large):
    if seq_len == T_ADD:
        task, batch = adding_large
    else:  # the shortest legal sequence: one step per half
        task = adding(seq_len=seq_len)
        batch = task.sample(jax.random.key(3), 64)
    assert (task.seq_len, task.input_dim, task.output_dim) == (seq_len, 2, 1)
    x, y = np.asarray(batch.x), np.asarray(batch.y)
    values, marker = x[..., 0], x[..., 1]
    half = seq_len // 2
    assert np.all((values >= 0.0) & (values < 1.0))
    assert set(np.unique(marker)) <= {0.0, 1.0}
    np.testing.assert_array_equal(marker[:, :half].sum(axis=1), 1.0)
    np.testing.assert_array_equal(marker[:, half:].sum(axis=1), 1.0)
    first, second = marker[:, :half].argmax(axis=1), half + marker[:, half:].argmax(axis=1)
    rows = np.arange(len(x))
    np.testing.assert_allclose(y[:, 0], values[rows, first] + values[rows, second], rtol=1e-6, atol=1e-7)


def test_adding_marker_positions_cover_each_half_uniformly(adding_large):
    T, n = T_ADD, ROWS_ADD
    marker = np.asarray(adding_large[1].x[..., 1])
    counts = marker.sum(axis=0)  # each half's marker is uniform over its T/2 steps: n / (T/2) per step
    expected = n / (T // 2)
    # binomial standard deviation ~ sqrt(n * 0.2 * 0.8) ~ 89; 5% of 10_000 is ~5.6 of them
    np.testing.assert_allclose(counts, expected, rtol=0.05)


def test_adding_constant_predictor_meets_baseline(adding_large):
    task, batch = adding_large
    assert task.baseline_loss == pytest.approx(1 / 6, rel=1e-12)
    assert task.solved_threshold == pytest.approx(0.06 / 6, rel=1e-12)
    mse = float(task.loss(jnp.ones_like(batch.y), batch))
    # Var(u1 + u2) = 1/6; the estimate's standard error on 50_000 rows is ~0.0009
    assert abs(mse - 1 / 6) < 0.005
    assert float(task.loss(batch.y, batch)) == 0.0


@pytest.mark.parametrize("ratio", [0.06, 0.5])
def test_adding_solved_threshold(ratio):
    assert adding(seq_len=4, solved_ratio=ratio).solved_threshold == pytest.approx(ratio / 6, rel=1e-12)


def test_adding_metric_counts_predictions_within_tolerance(adding_large):
    task, batch = adding_large
    # half the rows within 0.04 of the target, half outside it
    offsets = jnp.tile(jnp.array([0.0, 0.02, -0.035, 0.039, 0.041, -0.045, 0.3, -1.0]), ROWS_ADD // 8)[:, None]
    assert float(task.metric(batch.y + offsets, batch)) == pytest.approx(4 / 8)
    assert float(task.metric(batch.y, batch)) == 1.0
    # MSE written out
    np.testing.assert_allclose(float(task.loss(batch.y + offsets, batch)), float(np.mean(np.square(offsets))),
                               rtol=1e-5)


@pytest.mark.parametrize(("kwargs", "bad"), [
    ({"seq_len": 0}, "seq_len=0"),
    ({"seq_len": -5}, "seq_len=-5"),
    ({"seq_len": 1}, "seq_len=1"),
    ({"solved_ratio": 1.5}, "1.5"),
    ({"solved_ratio": 0.0}, "0.0"),
])
def test_adding_bad_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
        adding(**kwargs)


# --- copy memory ------------------------------------------------------------------------------------


def _copy_task(**kw):
    return copy_memory(**{"seq_len": T_COPY, "num_symbols": S, "copy_len": N, "solved_ratio": 0.1, **kw})


def test_copy_structure():
    task = _copy_task()
    L = T_COPY + 2 * N
    assert (task.seq_len, task.input_dim, task.output_dim) == (T_COPY, S + 2, S + 1)
    batch = task.sample(jax.random.key(7), ROWS_COPY)
    x, y = np.asarray(batch.x), np.asarray(batch.y)
    assert x.shape == (ROWS_COPY, L, S + 2)
    assert set(np.unique(x)) == {0.0, 1.0}
    np.testing.assert_array_equal(x.sum(axis=-1), 1.0)  # one-hot
    tokens = x.argmax(axis=-1)
    symbols = tokens[:, :N]
    assert np.all((symbols >= 1) & (symbols <= S))
    np.testing.assert_array_equal(tokens[:, N : N + T_COPY - 1], 0)
    np.testing.assert_array_equal(tokens[:, N + T_COPY - 1], S + 1)
    np.testing.assert_array_equal(tokens[:, N + T_COPY :], 0)
    np.testing.assert_array_equal(y[:, : T_COPY + N], 0)
    np.testing.assert_array_equal(y[:, T_COPY + N :], symbols)
    assert len(np.unique(symbols)) == S  # every symbol gets drawn


def _memoryless_log_probs(batch_size, L):
    """Blank certain for the first T+N steps, uniform over the S symbols for the last N."""
    blank = np.full((L, S + 1), -np.inf)
    blank[:, 0] = 0.0
    guess = np.full((L, S + 1), -math.log(S))
    guess[:, 0] = -np.inf
    per_step = np.where((np.arange(L) < T_COPY + N)[:, None], blank, guess)
    return jnp.asarray(np.broadcast_to(per_step, (batch_size, L, S + 1)), jnp.float32)


def test_copy_memoryless_baseline():
    task = _copy_task()
    expected = N * math.log(S) / (T_COPY + 2 * N)
    assert task.baseline_loss == pytest.approx(expected, rel=1e-12)
    assert task.solved_threshold == pytest.approx(0.1 * expected, rel=1e-12)
    batch = task.sample(jax.random.key(8), ROWS_COPY)
    loss = float(task.loss(_memoryless_log_probs(ROWS_COPY, T_COPY + 2 * N), batch))
    assert loss == pytest.approx(expected, abs=1e-5)
    assert loss == pytest.approx(task.baseline_loss, abs=1e-5)


def test_copy_perfect_and_partly_wrong_predictors():
    task = _copy_task()
    batch = task.sample(jax.random.key(9), ROWS_COPY)
    perfect = 30.0 * jax.nn.one_hot(batch.y, S + 1)
    assert float(task.metric(perfect, batch)) == 1.0
    assert 0.0 <= float(task.loss(perfect, batch)) < 1e-6
    # shift the first recalled symbol of every row to another symbol: (N-1)/N recalled
    y_wrong = np.asarray(batch.y).copy()
    y_wrong[:, -N] = y_wrong[:, -N] % S + 1
    wrong = 30.0 * jax.nn.one_hot(jnp.asarray(y_wrong), S + 1)
    assert float(task.metric(wrong, batch)) == pytest.approx((N - 1) / N)
    # cross-entropy written out: one position in T+2N per row pays log-sum-exp minus the wrong margin
    per_miss = 30.0 + math.log(1 + S * math.exp(-30.0))
    assert float(task.loss(wrong, batch)) == pytest.approx(per_miss / (T_COPY + 2 * N), rel=1e-5)


@pytest.mark.parametrize(("kwargs", "bad"), [
    ({"seq_len": 0}, "seq_len=0"),
    ({"seq_len": -5}, "seq_len=-5"),
    ({"num_symbols": 1}, "num_symbols=1"),
    ({"copy_len": 0}, "copy_len=0"),
    ({"solved_ratio": 1.5}, r"1\.5"),
])
def test_copy_bad_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        _copy_task(**kwargs)


# --- variable lengths (task.length_range) and the original adding encoding -------------------------


def _lengths(batch):
    return np.asarray(batch.mask).sum(axis=1)


def test_check_length_range_rejects_bad_ranges():
    from rnnbench.tasks.base import check_length_range

    assert check_length_range(None, 2) is None
    assert check_length_range([3, 7], 2) == (3, 7)
    for bad in ([1, 5], [6, 5], [3], [3, 4, 5], [3.0, 5], "3-5", [True, 4]):
        with pytest.raises(ValueError, match=r"task\.length_range="):
            check_length_range(bad, 2)


def test_adding_with_length_range_places_markers_in_each_sequences_own_halves():
    lo, hi, rows = 4, 12, 4000
    task = adding(seq_len=99, length_range=[lo, hi])
    assert task.seq_len == hi and task.length_range == (lo, hi)
    batch = task.sample(jax.random.key(5), rows)
    x, y, mask = (np.asarray(a) for a in batch)
    lengths = _lengths(batch)
    assert x.shape == (rows, hi, 2) and mask.shape == (rows, hi)
    assert set(lengths.tolist()) == set(range(lo, hi + 1))  # every length occurs (4000 draws over 9 values)
    for b in range(200):  # the slow reference: a Python loop per sequence
        L = int(lengths[b])
        assert mask[b, :L].all() and not mask[b, L:].any()
        marked = [t for t in range(hi) if x[b, t, 1] == 1.0]
        assert len(marked) == 2 and 0 <= marked[0] < L // 2 <= marked[1] < L, (b, L, marked)
        assert not x[b, L:].any()  # padding is zeros
        assert y[b, 0] == pytest.approx(x[b, marked[0], 0] + x[b, marked[1], 0], abs=1e-6)
    assert task.loss(jnp.ones((rows, 1)), batch) == pytest.approx(1 / 6, abs=0.01)  # 4000 rows: sd ~0.003


def test_adding_hochreiter1997_encoding():
    T, rows = 30, 20_000
    task = adding(seq_len=T, encoding="hochreiter1997")
    assert task.length_range == (T, T + T // 10) and task.seq_len == T + T // 10
    batch = task.sample(jax.random.key(6), rows)
    x, y, _ = (np.asarray(a) for a in batch)
    lengths = _lengths(batch)
    assert lengths.min() == T and lengths.max() == T + T // 10
    for b in range(300):
        L = int(lengths[b])
        values, markers = x[b, :, 0], x[b, :, 1]
        assert np.all(np.abs(values[:L]) <= 1.0) and not x[b, L:].any()
        ones = [t for t in range(L) if markers[t] == 1.0]
        # X1 among the first 10 pairs, X2 among the first L/2 - 1 others (so either may come first)
        assert len(ones) == 2 and ones[0] < 10 and ones[1] < L // 2, ones
        assert markers[L - 1] == -1.0
        assert markers[0] == (1.0 if ones[0] == 0 else -1.0)
        assert set(np.unique(markers[:L])) <= {-1.0, 0.0, 1.0}
        assert np.sum(markers[:L] == -1.0) == (1 if ones[0] == 0 else 2)
        # X1 := 0 when it is the first pair: the input shows the 0 it carries, so the target is the
        # scaled sum of the marked inputs in every case
        assert y[b, 0] == pytest.approx(0.5 + (values[ones[0]] + values[ones[1]]) / 4.0, abs=1e-6)
    # predicting 0.5 scores the baseline (0.9/3 + 1/3)/16: the estimate's sd is ~0.04 * sqrt(2/20000) ~ 4e-4
    assert float(task.loss(jnp.full((rows, 1), 0.5), batch)) == pytest.approx(task.baseline_loss, abs=2e-3)
    assert task.baseline_loss == pytest.approx((0.9 / 3 + 1 / 3) / 16)


def test_adding_hochreiter1997_rejects_too_short_sequences():
    with pytest.raises(ValueError, match=r"task\.seq_len=21"):
        adding(seq_len=21, encoding="hochreiter1997")
    with pytest.raises(ValueError, match=r"task\.encoding='arjovsky'"):
        adding(encoding="arjovsky")


def _np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_copy_with_length_range_equals_each_sequence_alone():
    """Per sequence, the padded batch's layout equals the fixed-length task at that delay, and the
    batch loss and accuracy are the token-weighted means of the sequences' own (padding ignored)."""
    lo, hi, rows = 2, 6, 24
    task = copy_memory(seq_len=50, num_symbols=S, copy_len=N, length_range=[lo, hi])
    assert task.seq_len == hi and task.readout == "all"
    batch = task.sample(jax.random.key(7), rows)
    x, y, mask = (np.asarray(a) for a in batch)
    delays = _lengths(batch) - 2 * N
    assert delays.min() >= lo and delays.max() <= hi
    rng = np.random.default_rng(0)
    pred = rng.standard_normal((rows, hi + 2 * N, S + 1)).astype(np.float32)
    pred[~mask] = 1e3 * rng.standard_normal(((~mask).sum(), S + 1))  # garbage on padding
    nll_sum = n_tok = correct = n_recall = 0.0
    for b in range(rows):
        d = int(delays[b])
        n = d + 2 * N
        tokens = x[b, :n].argmax(-1)
        # the fixed-length encoding (Arjovsky et al.) at this delay, written out
        assert (tokens[:N] >= 1).all() and (tokens[:N] <= S).all()
        assert (tokens[N : N + d - 1] == 0).all() and tokens[N + d - 1] == S + 1 and (tokens[N + d :] == 0).all()
        assert (y[b, : d + N] == 0).all() and (y[b, d + N : n] == tokens[:N]).all()
        assert not x[b, n:].any()
        logp = _np_log_softmax(pred[b, :n].astype(np.float64))
        nll_sum -= logp[np.arange(n), y[b, :n]].sum()
        n_tok += n
        correct += (pred[b, d + N : n].argmax(-1) == y[b, d + N : n]).sum()
        n_recall += N
    assert float(task.loss(jnp.asarray(pred), batch)) == pytest.approx(nll_sum / n_tok, rel=1e-5)
    assert float(task.metric(jnp.asarray(pred), batch)) == pytest.approx(correct / n_recall, abs=1e-6)
    assert task.baseline_loss == pytest.approx(N * math.log(S) / ((lo + hi) / 2 + 2 * N))
