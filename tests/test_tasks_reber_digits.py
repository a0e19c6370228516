"""The continual embedded Reber grammar and the sequential 8x8 digits, against independent references.

Reber: a slow plain-Python parser of the grammar, written from the papers' diagram (not from the
module's tables), walks every sampled stream, and an exact Python propagation over its states gives
the optimal and branch-blind losses. Digits: the loader against ``sklearn.datasets.load_digits``.
"""

from __future__ import annotations

import inspect
import math
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import CONFIG_DIR
from omegaconf import OmegaConf

from rnnbench.cells.lstm import lstm
from rnnbench.config import ConfigError, build_task
from rnnbench.model import make_model
from rnnbench.tasks import Batch
from rnnbench.tasks.digits import digits, load_split
from rnnbench.tasks.reber import hard_positions, reber, reber_losses
from rnnbench.train import TrainState, make_train_step

LN2 = math.log(2)

# --- the reference Reber parser (plain Python, no jax) -----------------------------------------------

SYMBOLS = "BTPSXVE"  # the one-hot order the task documents
# The Reber grammar (Reber 1967; Cleeremans et al. 1989, fig. 1): node -> {symbol: next node}.
REBER = {
    0: {"B": 1},
    1: {"T": 2, "P": 3},
    2: {"S": 2, "X": 4},
    3: {"T": 3, "V": 5},
    4: {"X": 3, "S": 6},
    5: {"P": 4, "V": 6},
    6: {"E": "end"},
}
START = ("start", None, None)  # (phase, Reber node, remembered branch)


def ref_allowed(state) -> set[str]:
    """The symbols the continual embedded Reber grammar allows next (each equally likely)."""
    phase, node, branch = state
    return {"start": {"B"}, "branch": {"T", "P"}, "repeat": {branch}, "end": {"E"}}.get(phase) or set(REBER[node])


def ref_advance(state, symbol):
    phase, node, branch = state
    assert symbol in ref_allowed(state), f"illegal {symbol!r} in state {state}"
    if phase == "start":
        return ("branch", None, None)
    if phase == "branch":
        return ("inner", 0, symbol)
    if phase == "inner":
        nxt = REBER[node][symbol]
        return ("repeat", None, branch) if nxt == "end" else ("inner", nxt, branch)
    if phase == "repeat":
        return ("end", None, None)
    return START  # after the outer E: the next embedded string, no reset


def ref_parse(stream: str):
    """Walk a stream from the start of an embedded string; every transition must be legal.

    Returns per step t < len(stream) - 1 (predicting stream[t + 1]): the state before stream[t + 1],
    and the number of completed embedded strings.
    """
    state, states, done, first = START, [], 0, None
    for t, symbol in enumerate(stream):
        if state[0] == "branch":
            first = symbol
        if state[0] == "repeat":
            assert symbol == first, f"second branch {symbol!r} != first {first!r} at {t}"
        if state[0] == "end":
            done += 1
        state = ref_advance(state, symbol)
        if t < len(stream) - 1:
            states.append(state)
    return states, done


def ref_expected_losses(T: int) -> tuple[float, float]:
    """Exact (optimal, branch-blind) expected loss per step over T steps, propagating the parser's states."""
    dist, optimal, blind = {START: 1.0}, 0.0, 0.0
    for t in range(T + 1):
        if t > 0:  # dist: the state before s_t, the target of step t - 1
            for state, p in dist.items():
                optimal += p * math.log(len(ref_allowed(state)))
                blind += p * (LN2 if state[0] == "repeat" else math.log(len(ref_allowed(state))))
        new = {}
        for state, p in dist.items():
            allowed = ref_allowed(state)
            for symbol in allowed:
                nxt = ref_advance(state, symbol)
                new[nxt] = new.get(nxt, 0.0) + p / len(allowed)
        dist = new
    return optimal / T, blind / T


def streams(batch) -> list[str]:
    """Each row's symbols s_0 .. s_T (x gives s_0 .. s_{T-1}, y's last entry s_T)."""
    tokens = np.concatenate([np.asarray(batch.x).argmax(-1), np.asarray(batch.y)[:, -1:]], axis=1)
    return ["".join(SYMBOLS[i] for i in row) for row in tokens]


def ref_log_probs(states_per_row, branch_blind=False) -> np.ndarray:
    """``[B, T, 7]`` log-probabilities of the reference's next-symbol distribution (uniform on the allowed)."""
    out = np.full((len(states_per_row), len(states_per_row[0]), 7), -np.inf, np.float32)
    for b, states in enumerate(states_per_row):
        for t, state in enumerate(states):
            allowed = {"T", "P"} if branch_blind and state[0] == "repeat" else ref_allowed(state)
            for symbol in allowed:
                out[b, t, SYMBOLS.index(symbol)] = -math.log(len(allowed))
    return out


T_REBER, ROWS_REBER = 60, 256


@pytest.fixture(scope="module")
def reber_batch():
    """TASKS' reber task, one batch, and the reference's states for every row."""
    task = reber(seq_len=T_REBER)
    batch = task.sample(jax.random.key(11), ROWS_REBER)
    parsed = [ref_parse(s) for s in streams(batch)]
    return task, batch, [p[0] for p in parsed], [p[1] for p in parsed]


def test_reber_layout(reber_batch):
    task, batch, _, _ = reber_batch
    assert (task.name, task.seq_len, task.input_dim, task.output_dim) == ("reber", T_REBER, 7, 7)
    assert (task.readout, task.metric_name, task.length_range, task.generalises) == ("all", "accuracy", None, True)
    assert task.sample_eval is None
    assert isinstance(batch, Batch) and batch.mask is None
    assert batch.x.shape == (ROWS_REBER, T_REBER, 7) and batch.x.dtype == jnp.float32
    assert batch.y.shape == (ROWS_REBER, T_REBER) and batch.y.dtype == jnp.int32
    x = np.asarray(batch.x)
    assert set(np.unique(x)) == {0.0, 1.0}
    np.testing.assert_array_equal(x.sum(-1), 1.0)
    # y is the next symbol: y_t = s_{t+1} = the input at t + 1
    np.testing.assert_array_equal(np.asarray(batch.y)[:, :-1], x[:, 1:].argmax(-1))


def test_reber_streams_parse_and_positions_match_the_reference(reber_batch):
    _, batch, states, done = reber_batch
    # ref_parse asserted every transition and every repeated branch; the streams are continual:
    assert min(done) >= 1 and np.mean(done) > T_REBER / 12 - 2  # ~T/12 embedded strings each
    assert all(s.startswith("B") for s in streams(batch))
    # the metric's long-dependency positions: exactly the steps whose next symbol is the repeated branch
    ref_hard = np.array([[s[0] == "repeat" for s in row] for row in states])
    np.testing.assert_array_equal(np.asarray(hard_positions(batch)), ref_hard)
    assert ref_hard.sum() > ROWS_REBER  # > one per row
    # every step has its next symbol in the window, and it is one the grammar allows
    assert all(len(row) == T_REBER for row in states)
    y = np.asarray(batch.y)
    assert all(SYMBOLS[y[b, t]] in ref_allowed(states[b][t]) for b in range(ROWS_REBER) for t in range(T_REBER))


def test_reber_shortest_window_can_hold_a_hard_prediction():
    # seq_len 7: only B T B T X S E | T or B P B P V V E | P (probability 1/8 + 1/8) reach the repeat at t = 6
    task, n = reber(seq_len=7), 2000
    batch = task.sample(jax.random.key(3), n)
    states = [ref_parse(s)[0] for s in streams(batch)]
    ref_hard = np.array([[s[0] == "repeat" for s in row] for row in states])
    np.testing.assert_array_equal(np.asarray(hard_positions(batch)), ref_hard)
    assert not ref_hard[:, :6].any()
    # binomial standard deviation sqrt(0.25 * 0.75 / n) ~ 0.0097; allow 5 of them
    assert abs(ref_hard[:, 6].mean() - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)


def test_reber_parser_rejects_illegal_streams():
    # the reference must be able to fail: a wrong repeat, an illegal Reber arc, a missing outer E
    ref_parse("BTBTXSETEBPBPVVEPE")
    for bad in ("BTBTXSEPE", "BTBTXXETE", "BTBTXSETB", "BPBPVPE"):
        with pytest.raises(AssertionError):
            ref_parse(bad)


def test_reber_choices_are_fair_coins(reber_batch):
    _, batch, states, _ = reber_batch
    y = np.asarray(batch.y)
    counts: dict[tuple, list[int]] = {}
    for b, row in enumerate(states):
        for t, state in enumerate(row):
            allowed = sorted(ref_allowed(state))
            if len(allowed) == 2:
                key = (state[0], state[1])  # the branch choice and Reber nodes 1-5
                counts.setdefault(key, [0, 0])[allowed.index(SYMBOLS[y[b, t]])] += 1
    assert set(counts) == {("branch", None), *(("inner", n) for n in range(1, 6))}
    for key, (a, c) in counts.items():
        n = a + c
        # a fair coin's share of n draws has standard deviation 0.5 / sqrt(n); allow 5 of them
        assert abs(a / n - 0.5) < 5 * 0.5 / math.sqrt(n), (key, a, c)


@pytest.mark.parametrize("T", [7, 37, T_REBER, 500])
def test_reber_baselines_match_the_reference(T):
    optimal, trivial = reber_losses(T)
    ref_optimal, ref_trivial = ref_expected_losses(T)
    assert optimal == pytest.approx(ref_optimal, rel=1e-12)
    assert trivial == pytest.approx(ref_trivial, rel=1e-12)
    task = reber(seq_len=T, solved_gap=0.25)
    assert task.baseline_loss == pytest.approx(trivial, rel=1e-12)
    assert task.solved_threshold == pytest.approx(optimal + 0.25 * (trivial - optimal), rel=1e-12)
    assert optimal < task.solved_threshold < trivial


def test_reber_baselines_approach_the_entropy_rate():
    # 12 symbols and 7 fair choices per embedded string on average: 7 ln 2 / 12 and 8 ln 2 / 12
    optimal, trivial = reber_losses(20_000)
    assert optimal == pytest.approx(7 * LN2 / 12, abs=2e-4)
    assert trivial == pytest.approx(8 * LN2 / 12, abs=2e-4)


def test_reber_optimal_and_branch_blind_predictors(reber_batch):
    task, batch, states, _ = reber_batch
    optimal, trivial = reber_losses(T_REBER)
    for blind, expected in ((False, optimal), (True, trivial)):
        logp = ref_log_probs(states, branch_blind=blind)
        y = np.asarray(batch.y)
        per_step = -np.take_along_axis(logp, y[..., None], axis=-1)[..., 0]  # ln 2 or 0
        loss = float(task.loss(jnp.asarray(logp), batch))
        assert loss == pytest.approx(per_step.mean(), rel=1e-5)  # the loss scores every step
        # rows are independent: their mean's standard error from the rows' spread; allow 5 of them
        row_losses = per_step.mean(axis=1)
        assert abs(loss - expected) < 5 * row_losses.std() / math.sqrt(ROWS_REBER)
    assert float(task.metric(jnp.asarray(ref_log_probs(states)), batch)) == 1.0
    # branch-blind with a tie at T/P: argmax picks T, right for the T branches only (~1/2)
    blind_accuracy = float(task.metric(jnp.asarray(ref_log_probs(states, branch_blind=True)), batch))
    hard = np.asarray(hard_positions(batch))
    assert blind_accuracy == pytest.approx(np.mean(np.asarray(batch.y)[hard] == SYMBOLS.index("T")), abs=1e-6)
    assert 0.35 < blind_accuracy < 0.65


def test_reber_metric_counts_only_the_hard_positions(reber_batch):
    task, batch, states, _ = reber_batch
    y = np.asarray(batch.y)
    ref_hard = np.array([[s[0] == "repeat" for s in row] for row in states])
    wrong = (y + 1) % 7
    # wrong everywhere except the hard positions: accuracy 1; wrong at every other hard position: ~1/2
    pred = np.where(ref_hard, y, wrong)
    assert float(task.metric(30.0 * jax.nn.one_hot(pred, 7), batch)) == 1.0
    every_other = ref_hard & (np.cumsum(ref_hard).reshape(ref_hard.shape) % 2 == 0)
    pred = np.where(every_other, wrong, y)
    expected = 1.0 - every_other.sum() / ref_hard.sum()
    assert float(task.metric(30.0 * jax.nn.one_hot(pred, 7), batch)) == pytest.approx(expected, abs=1e-6)


def test_reber_loss_weights_every_step_equally(reber_batch):
    task, batch, _, _ = reber_batch
    y = np.asarray(batch.y)
    perfect = 30.0 * jax.nn.one_hot(y, 7)
    assert 0.0 <= float(task.loss(perfect, batch)) < 1e-6
    y_wrong = y.copy()
    misses = [(0, 0), (3, T_REBER - 1), (ROWS_REBER - 1, T_REBER // 2)]
    for b, t in misses:
        y_wrong[b, t] = (y[b, t] + 1) % 7
    per_miss = 30.0 + math.log(1 + 6 * math.exp(-30.0))
    loss = float(task.loss(30.0 * jax.nn.one_hot(y_wrong, 7), batch))
    assert loss == pytest.approx(len(misses) * per_miss / (ROWS_REBER * T_REBER), rel=1e-4)


# --- digits: the loader against scikit-learn ------------------------------------------------------------


@pytest.fixture(scope="module")
def sk_digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.target


def _expected_x(images, perm, layout):
    v = images.reshape(len(images), 64)[:, perm] / 16.0
    return v[:, :, None] if layout == "pixel" else v.reshape(len(images), 8, 8)


@pytest.mark.parametrize(("layout", "permute", "seed"), [("pixel", False, 0), ("row", False, 0), ("pixel", True, 0),
                                                          ("row", True, 3)])
def test_digits_loader_matches_sklearn(sk_digits, layout, permute, seed):
    images, target = sk_digits
    data = load_split(layout, permute, seed, 0.2, 0)
    perm = data.permutation
    np.testing.assert_array_equal(np.sort(perm), np.arange(64))
    if permute:
        assert not np.array_equal(perm, np.arange(64))
        np.testing.assert_array_equal(perm, np.random.default_rng(seed).permutation(64))  # as documented
    else:
        np.testing.assert_array_equal(perm, np.arange(64))
    expected = _expected_x(images, perm, layout)
    steps, width = (64, 1) if layout == "pixel" else (8, 8)
    assert data.x_train.shape == (1438, steps, width) and data.x_test.shape == (359, steps, width)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    np.testing.assert_allclose(data.x_train, expected[data.train_index], rtol=0, atol=1e-7)
    np.testing.assert_allclose(data.x_test, expected[data.test_index], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(data.y_train, target[data.train_index])
    np.testing.assert_array_equal(data.y_test, target[data.test_index])
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0


def test_digits_permutation_is_fixed_per_seed():
    a, b = load_split("pixel", True, 0), load_split("pixel", True, 0)
    np.testing.assert_array_equal(a.permutation, b.permutation)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    c = load_split("pixel", True, 1)
    assert not np.array_equal(a.permutation, c.permutation)
    # the same permutation for train and test: the same image pixels, reordered
    plain = load_split("pixel", False, 0)
    np.testing.assert_array_equal(a.x_test[:, :, 0], plain.x_test[:, a.permutation, 0])


def test_digits_split_is_stratified_disjoint_and_deterministic(sk_digits):
    _, target = sk_digits
    data = load_split()
    train, test = data.train_index, data.test_index
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(target)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    sizes = np.bincount(target, minlength=10)
    test_counts = np.bincount(target[test], minlength=10)
    np.testing.assert_array_equal(test_counts, np.floor(0.2 * sizes + 0.5))
    assert np.all(np.abs(test_counts / sizes - 0.2) <= 0.5 / sizes)  # each class within rounding of 0.2
    again = load_split()
    np.testing.assert_array_equal(again.test_index, test)
    other = load_split(split_seed=1)
    assert not np.array_equal(other.test_index, test)
    np.testing.assert_array_equal(np.bincount(target[other.test_index], minlength=10), test_counts)
    half = load_split(test_fraction=0.5)
    np.testing.assert_array_equal(np.bincount(target[half.test_index], minlength=10), np.floor(0.5 * sizes + 0.5))


@pytest.mark.parametrize("permute", [False, True])
def test_digits_row_and_pixel_layouts_hold_the_same_pixels(sk_digits, permute):
    pixel, row = load_split("pixel", permute), load_split("row", permute)
    np.testing.assert_array_equal(row.train_index, pixel.train_index)
    np.testing.assert_array_equal(row.x_train.reshape(-1, 64), pixel.x_train[:, :, 0])
    np.testing.assert_array_equal(row.x_test.reshape(-1, 64), pixel.x_test[:, :, 0])
    if not permute:  # step t of the row layout is image row t
        images = sk_digits[0]
        np.testing.assert_allclose(row.x_train, images[row.train_index] / 16.0, atol=1e-7)


def test_digits_task_layout():
    for layout, T, D in (("pixel", 64, 1), ("row", 8, 8)):
        task = digits(seq_len=T, layout=layout)
        assert (task.name, task.seq_len, task.input_dim, task.output_dim) == ("digits", T, D, 10)
        assert (task.readout, task.metric_name, task.length_range, task.generalises) == ("last", "accuracy", None,
                                                                                         False)
        assert task.sample_eval is not None
        for draw in (task.sample, task.sample_eval):
            batch = draw(jax.random.key(0), 32)
            assert batch.x.shape == (32, T, D) and batch.x.dtype == jnp.float32
            assert batch.y.shape == (32,) and batch.y.dtype == jnp.int32 and batch.mask is None
            assert float(task.metric(30.0 * jax.nn.one_hot(batch.y, 10), batch)) == 1.0
            assert float(task.metric(30.0 * jax.nn.one_hot((batch.y + 1) % 10, 10), batch)) == 0.0


def test_digits_sample_and_sample_eval_draw_only_from_their_split(sk_digits):
    images, target = sk_digits
    task = digits(seq_len=8, layout="row", permute=True, permutation_seed=2)
    data = load_split("row", True, 2)
    # every image is distinct, so a row identifies its image
    lookup = {(row.tobytes()): i for i, row in enumerate(np.concatenate([data.x_train, data.x_test]))}
    assert len(lookup) == len(images)
    owner = np.concatenate([data.train_index, data.test_index])
    for draw, split, n in ((task.sample, data.train_index, 4000), (task.sample_eval, data.test_index, 1000)):
        batch = draw(jax.random.key(4), n)
        x, y = np.asarray(batch.x), np.asarray(batch.y)
        drawn = np.array([owner[lookup[r.tobytes()]] for r in x])
        assert np.all(np.isin(drawn, split))
        np.testing.assert_array_equal(y, target[drawn])
        # uniform with replacement: n draws from N images reach 1 - exp(-n/N) of them (0.94 and 0.94)
        coverage = len(np.unique(drawn)) / len(split)
        assert abs(coverage - (1 - math.exp(-n / len(split)))) < 0.03


def test_digits_baseline_is_the_train_prior_scored_on_the_test_split(sk_digits):
    _, target = sk_digits
    task = digits(solved_ratio=0.2)
    data = load_split()
    p = np.bincount(target[data.train_index], minlength=10) / len(data.train_index)
    q = np.bincount(target[data.test_index], minlength=10) / len(data.test_index)
    expected = float(-(q * np.log(p)).sum())
    assert task.baseline_loss == pytest.approx(expected, rel=1e-12)
    assert task.baseline_loss == pytest.approx(math.log(10), abs=1e-3)
    assert task.solved_threshold == pytest.approx(0.2 * expected, rel=1e-12)
    # the constant predictor on the whole test split, through task.loss
    test = Batch(jnp.asarray(data.x_test), jnp.asarray(data.y_test), None)
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(p, jnp.float32)), (len(data.y_test), 10))
    assert float(task.loss(logits, test)) == pytest.approx(expected, rel=1e-5)


# --- both: determinism, jit, bad arguments, configs ---------------------------------------------------

TASKS = {
    "reber": lambda: reber(seq_len=T_REBER),
    "digits": lambda: digits(seq_len=8, layout="row"),
}


@pytest.mark.parametrize("name", TASKS)
def test_sample_is_deterministic_and_jittable(name):
    task = TASKS[name]()
    draws = [("sample", task.sample)] + ([("sample_eval", task.sample_eval)] if task.sample_eval else [])
    for _, draw in draws:
        a, b, c = draw(jax.random.key(1), 64), draw(jax.random.key(1), 64), draw(jax.random.key(2), 64)
        jitted = jax.jit(draw, static_argnums=1)(jax.random.key(1), 64)
        for leaf_a, leaf_b, leaf_j in zip(a[:2], b[:2], jitted[:2], strict=True):
            np.testing.assert_array_equal(leaf_a, leaf_b)
            np.testing.assert_array_equal(leaf_a, leaf_j)
        assert jitted.mask is None
        assert not np.array_equal(a.x, c.x) and not np.array_equal(a.y, c.y)


@pytest.mark.parametrize(("factory", "kwargs", "key", "value"), [
    (reber, {"seq_len": 0}, "seq_len", 0),
    (reber, {"seq_len": 6}, "seq_len", 6),
    (reber, {"seq_len": 2.5}, "seq_len", 2.5),
    (reber, {"solved_gap": 0.0}, "solved_gap", 0.0),
    (reber, {"solved_gap": 1.0}, "solved_gap", 1.0),
    (reber, {"solved_gap": True}, "solved_gap", True),
    (reber, {"length_range": [10, 20]}, "length_range", [10, 20]),
    (digits, {"seq_len": 8}, "seq_len", 8),
    (digits, {"seq_len": 64, "layout": "row"}, "seq_len", 64),
    (digits, {"layout": "column"}, "layout", "column"),
    (digits, {"permute": 1}, "permute", 1),
    (digits, {"permutation_seed": -1}, "permutation_seed", -1),
    (digits, {"split_seed": 1.5}, "split_seed", 1.5),
    (digits, {"test_fraction": 0.0}, "test_fraction", 0.0),
    (digits, {"test_fraction": 1.0}, "test_fraction", 1.0),
    (digits, {"test_fraction": 0.001}, "test_fraction", 0.001),
    (digits, {"test_fraction": 0.999}, "test_fraction", 0.999),
    (digits, {"solved_ratio": 1.5}, "solved_ratio", 1.5),
    (digits, {"length_range": [64, 64]}, "length_range", [64, 64]),
])
def test_bad_arguments(factory, kwargs, key, value):
    with pytest.raises(ValueError, match=re.escape(f"task.{key}={value!r}")) as info:
        factory(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("factory", [reber, digits])
def test_config_lists_every_argument_with_its_default(factory):
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "task" / f"{factory.__name__}.yaml"))
    assert cfg.pop("_target_") == f"{factory.__module__}.{factory.__name__}"
    defaults = {k: p.default for k, p in inspect.signature(factory).parameters.items()}
    assert cfg == defaults


def test_configs_compose_and_build(compose):
    task = build_task(compose(["task=reber"]).task)
    assert (task.name, task.seq_len, task.input_dim) == ("reber", 500, 7)
    task = build_task(compose(["task=reber", "task.seq_len=50", "task.solved_gap=0.2"]).task)
    assert task.seq_len == 50 and task.solved_threshold == pytest.approx(
        reber_losses(50)[0] + 0.2 * (reber_losses(50)[1] - reber_losses(50)[0]))
    task = build_task(compose(["task=digits"]).task)
    assert (task.name, task.seq_len, task.input_dim, task.generalises) == ("digits", 64, 1, False)
    task = build_task(compose(["task=digits", "task.layout=row", "task.seq_len=8", "task.permute=true"]).task)
    assert (task.seq_len, task.input_dim) == (8, 8)
    with pytest.raises(ConfigError, match=r"task\.seq_len=64 must be 8"):
        build_task(compose(["task=digits", "task.layout=row"]).task)
    with pytest.raises(ConfigError, match=r"task\.length_range=\[10, 20\] is not supported"):
        build_task(compose(["task=reber", "task.length_range=[10,20]"]).task)


# --- training -------------------------------------------------------------------------------------------


def _train(task, *, steps, batch_size, hidden=16, lr=1e-2, eval_size=256, seed=0):
    """ONE jitted program: init, evaluate, ``steps`` Adam steps as a lax.scan, evaluate again.

    Returns ((loss, metric) before, (loss, metric) after) on a fixed held-out batch (``sample_eval``).
    """
    model = make_model(lstm, hidden_size=hidden, output_dim=task.output_dim, readout=task.readout)
    opt = optax.adam(lr)
    train_step = make_train_step(model, task, opt, dropout=False)
    sample_eval = task.sample_eval or task.sample

    def run(key):
        k_init, k_data, k_eval = jax.random.split(key, 3)
        params = model.init(k_init, task.input_dim)
        held_out = sample_eval(k_eval, eval_size)

        def evaluate(p):
            pred = model.apply(p, held_out.x, held_out.mask)
            return task.loss(pred, held_out), task.metric(pred, held_out)

        def body(state, _):
            batch = task.sample(jax.random.fold_in(k_data, state.step), batch_size)
            state, _ = train_step(state, batch, k_data)
            return state, None

        state = TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))
        state, _ = jax.lax.scan(body, state, None, length=steps)
        return evaluate(params), evaluate(state.params)

    before, after = jax.jit(run)(jax.random.key(seed))
    return tuple(map(float, before)), tuple(map(float, after))


@pytest.mark.parametrize(("name", "batch_size"), [("reber", 16), ("digits", 32)])
def test_an_lstm_learns_the_task(name, batch_size):
    task = {"reber": lambda: reber(seq_len=20), "digits": lambda: digits(seq_len=8, layout="row")}[name]()
    (loss0, _), (loss1, _) = _train(task, steps=40, batch_size=batch_size, eval_size=64)
    assert loss1 < 0.8 * loss0, (loss0, loss1)


@pytest.mark.slow
def test_lstm_solves_continual_embedded_reber():
    task = reber(seq_len=200)
    t0 = time.perf_counter()
    (_, _), (loss, accuracy_hard) = _train(task, steps=1500, batch_size=32, hidden=32, lr=3e-3)
    print(f"reber T=200: loss {loss:.4f} (threshold {task.solved_threshold:.4f}, optimal {reber_losses(200)[0]:.4f}),"
          f" hard accuracy {accuracy_hard:.3f}, {time.perf_counter() - t0:.1f} s")
    assert accuracy_hard > 0.98
    assert loss < task.solved_threshold


@pytest.mark.slow
def test_lstm_reads_digits_row_by_row():
    task = digits(seq_len=8, layout="row")
    t0 = time.perf_counter()
    (_, _), (loss, acc) = _train(task, steps=2000, batch_size=64, hidden=64, lr=3e-3, eval_size=2048)
    print(f"digits row: test loss {loss:.4f} (threshold {task.solved_threshold:.4f}), test accuracy {acc:.3f}, "
          f"{time.perf_counter() - t0:.1f} s")
    assert acc > 0.9
    assert loss < task.solved_threshold
