"""Pure jitted training and evaluation, the loop, and K seeds trained together in one program.

The train step is pure, ``(state, batch, key) -> (state, metrics)`` (big_vision's shape); the loop
compiles a *chunk* of ``train.eval_every`` steps as one ``lax.scan`` in which each step draws a fresh
batch on device from ``fold_in(data_key, step)``, so Python is visited once per evaluation, not once
per step, and nothing is retraced. The chunk is jitted once, ahead of time (its compile time is
measured, not mixed into steps/s), with the state donated.

Seeds. Seed s has its own init, data stream, held-out evaluation set and dropout stream, all derived
from ``jax.random.key(s)``; ``train.num_seeds=K`` trains seeds seed .. seed+K-1 in ONE program by
mapping the per-seed chunk over a leading seed axis. ``lax.map`` (a loop inside the program) is the
default on CPU, where ``jax.vmap``'s batched dots measured slower than running seeds one after another;
``vmap`` is the default on accelerators. Either way a seed's numbers equal that seed trained alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnbench.model import Model, count_params
from rnnbench.tasks.base import Task
from rnnbench.types import Params, PRNGKey

SEED_PARALLEL = ("auto", "map", "vmap")


class TrainState(NamedTuple):
    params: Params
    opt_state: optax.OptState
    step: jax.Array  # int32 scalar: steps taken


class SeedKeys(NamedTuple):
    """Independent streams of one seed, each derived from ``jax.random.key(seed)``."""

    init: PRNGKey
    data: PRNGKey
    eval: PRNGKey
    dropout: PRNGKey


def seed_keys(seed: int) -> SeedKeys:
    root = jax.random.key(seed)
    return SeedKeys(*(jax.random.fold_in(root, i) for i in range(4)))


def make_train_step(model: Model, task: Task, optimizer: optax.GradientTransformation, dropout: bool) -> Callable:
    """``train_step(state, batch, key) -> (state, metrics)``; pure, for one seed."""

    def train_step(state: TrainState, batch, key: PRNGKey):
        def loss_fn(params):
            pred = model.apply(params, batch.x, batch.mask, dropout_key=key if dropout else None)
            return task.loss(pred, batch)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "l2_grads": optax.tree.norm(grads),
            "l2_updates": optax.tree.norm(updates),
            "l2_params": optax.tree.norm(params),
        }
        return TrainState(params, opt_state, state.step + 1), metrics

    return train_step


def _over_seeds(fn: Callable, how: str) -> Callable:
    """Apply a one-seed function to arguments with a leading seed axis."""
    if how == "vmap":
        return jax.vmap(fn)
    return lambda *args: jax.lax.map(lambda a: fn(*a), args)


class Trainer(NamedTuple):
    """Jittable pieces for K seeds; every array argument has a leading seed axis [K, ...]."""

    init: Callable  # (keys: SeedKeys[K]) -> TrainState[K]
    chunk: Callable  # (state[K], keys[K], n: static) -> (state[K], metrics {name: [K, n]})
    evaluate: Callable  # (params[K], keys[K]) -> (loss [K], metric [K])


def make_trainer(
    model: Model,
    task: Task,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    eval_size: int,
    dropout: bool = False,
    seed_parallel: str = "auto",
) -> Trainer:
    if seed_parallel not in SEED_PARALLEL:
        allowed = ", ".join(SEED_PARALLEL)
        raise ValueError(f"train.seed_parallel={seed_parallel!r} is not allowed; choose one of: {allowed}")
    how = seed_parallel if seed_parallel != "auto" else ("map" if jax.default_backend() == "cpu" else "vmap")
    train_step = make_train_step(model, task, optimizer, dropout)

    def init_one(keys: SeedKeys) -> TrainState:
        params = model.init(keys.init, task.input_dim)
        return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def chunk_one(state: TrainState, keys: SeedKeys, n: int):
        def body(st, _):
            batch = task.sample(jax.random.fold_in(keys.data, st.step), batch_size)
            return train_step(st, batch, jax.random.fold_in(keys.dropout, st.step))

        return jax.lax.scan(body, state, None, length=n)

    def evaluate_one(params: Params, keys: SeedKeys):
        # The same key every time: a fixed held-out set per seed, regenerated rather than stored.
        batch = task.sample(keys.eval, eval_size)
        pred = model.apply(params, batch.x, batch.mask)
        return task.loss(pred, batch), task.metric(pred, batch)

    def chunk(state, keys, n):
        return _over_seeds(lambda s, k: chunk_one(s, k, n), how)(state, keys)

    return Trainer(
        init=_over_seeds(init_one, how),
        chunk=chunk,
        evaluate=_over_seeds(evaluate_one, how),
    )


class SeedResult(NamedTuple):
    seed: int
    eval_loss: float
    eval_metric: float
    solved: bool
    solved_at_step: int | None
    diverged_at_step: int | None


class FitResult(NamedTuple):
    seeds: list[SeedResult]
    steps: int
    num_params: int
    compile_seconds: float
    train_seconds: float
    wall_seconds: float
    diverged: bool


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def fit(
    model: Model,
    task: Task,
    optimizer: optax.GradientTransformation,
    *,
    seed: int,
    num_seeds: int,
    steps: int,
    batch_size: int,
    eval_every: int,
    eval_size: int,
    dropout: bool = False,
    seed_parallel: str = "auto",
    on_eval: Callable[[int, list[dict[str, Any]]], None] | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``num_seeds`` seeds together for ``steps`` steps, evaluating every ``eval_every`` steps.

    ``on_eval(step, records)`` receives one record per seed at step 0, every ``eval_every`` steps and
    at the end: step, seed, train_loss and grad_norm (means over the steps since the last record),
    l2_updates and l2_params (last step), eval_loss, eval_metric, wall_time (seconds since start).
    ``progress(steps_done, postfix)`` is called after each chunk. Training stops early once every
    seed has a non-finite loss.
    """
    t_start = time.perf_counter()
    trainer = make_trainer(model, task, optimizer, batch_size=batch_size, eval_size=eval_size,
                           dropout=dropout, seed_parallel=seed_parallel)
    seeds = [seed + k for k in range(num_seeds)]
    keys = jax.tree.map(lambda *ks: jnp.stack(ks), *[seed_keys(s) for s in seeds])

    state = jax.jit(trainer.init)(keys)
    num_params = count_params(jax.tree.map(lambda p: p[0], state.params))

    # Compile ahead of time: one program per distinct chunk length (at most two), plus evaluation.
    t0 = time.perf_counter()
    lengths = sorted({min(eval_every, steps), steps % eval_every} - {0})
    chunks = {
        n: jax.jit(trainer.chunk, static_argnums=2, donate_argnums=0).lower(state, keys, n).compile()
        for n in lengths
    }
    evaluate = jax.jit(trainer.evaluate).lower(state.params, keys).compile()
    compile_seconds = time.perf_counter() - t0

    threshold = task.solved_threshold
    solved_at: list[int | None] = [None] * num_seeds
    diverged_at: list[int | None] = [None] * num_seeds
    last_eval = (np.full(num_seeds, np.nan), np.full(num_seeds, np.nan))
    train_seconds = 0.0

    def record(step: int, metrics: dict[str, np.ndarray] | None) -> None:
        nonlocal last_eval
        loss, metric = (np.asarray(a) for a in jax.device_get(evaluate(state.params, keys)))
        last_eval = (loss, metric)
        records = []
        for k, s in enumerate(seeds):
            if solved_at[k] is None and loss[k] < threshold:
                solved_at[k] = step
            rec = {"step": step, "seed": s, "train_loss": None, "grad_norm": None, "l2_updates": None,
                   "l2_params": None, "eval_loss": _finite_or_none(loss[k]),
                   "eval_metric": _finite_or_none(metric[k]),
                   "wall_time": time.perf_counter() - t_start}
            if metrics is not None:
                rec["train_loss"] = _finite_or_none(np.mean(metrics["loss"][k]))
                rec["grad_norm"] = _finite_or_none(np.mean(metrics["l2_grads"][k]))
                rec["l2_updates"] = _finite_or_none(metrics["l2_updates"][k][-1])
                rec["l2_params"] = _finite_or_none(metrics["l2_params"][k][-1])
            records.append(rec)
        if on_eval is not None:
            on_eval(step, records)

    record(0, None)
    done = 0
    while done < steps:
        n = min(eval_every, steps - done)
        t0 = time.perf_counter()
        state, metrics = chunks[n](state, keys)
        metrics = jax.device_get(metrics)
        train_seconds += time.perf_counter() - t0
        done += n
        for k in range(num_seeds):
            bad = ~np.isfinite(metrics["loss"][k]) | ~np.isfinite(metrics["l2_grads"][k])
            if diverged_at[k] is None and bad.any():
                diverged_at[k] = done - n + 1 + int(np.argmax(bad))
        record(done, metrics)
        if progress is not None:
            progress(done, {"eval_loss": float(np.nanmean(last_eval[0]))})
        if all(d is not None for d in diverged_at):
            break

    loss, metric = last_eval
    results = [
        SeedResult(seed=s, eval_loss=float(loss[k]), eval_metric=float(metric[k]),
                   solved=bool(loss[k] < threshold), solved_at_step=solved_at[k],
                   diverged_at_step=diverged_at[k])
        for k, s in enumerate(seeds)
    ]
    return FitResult(seeds=results, steps=done, num_params=num_params, compile_seconds=compile_seconds,
                     train_seconds=train_seconds, wall_seconds=time.perf_counter() - t_start,
                     diverged=any(d is not None for d in diverged_at))
