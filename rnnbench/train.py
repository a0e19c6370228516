"""Pure jitted training and evaluation, the loop, and K seeds trained together in one program.

The train step is pure, ``(state, batch, key) -> (state, metrics)`` (big_vision's shape); the loop
compiles a *chunk* of ``train.eval_every`` steps as one ``lax.scan`` in which each step draws a fresh
batch on device from ``fold_in(data_key, step)``, so Python is visited once per evaluation, not once
per step, and nothing is retraced. The chunk is jitted once, ahead of time (its compile time is
measured, not mixed into steps/s), with the state donated.

Seeds. Seed s has its own init, data stream, held-out evaluation set and dropout stream, all derived
from ``jax.random.key(s)``; ``train.num_seeds=K`` trains seeds seed .. seed+K-1 in ONE program by
mapping the per-seed chunk over a leading seed axis (``train.seed_parallelism``: ``vmap`` batches the
seeds, ``map`` loops over them inside the program, ``loop`` traces K independent copies; ``auto`` is the
mode chosen per backend by measurement, see ``SEED_PARALLELISM_AUTO``). With several devices the seed
axis is split across them (``train.shard_seeds``, ``seed_mesh``), each device training its share with
the chosen mode. Whatever the mode and placement, a seed's numbers equal that seed trained alone.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rnnbench.diagnostics import DEFAULT_OPTIONS, DiagnosticsOptions, diagnose
from rnnbench.model import Model, count_params
from rnnbench.tasks.base import Task
from rnnbench.types import Params, PRNGKey

SEED_PARALLELISM = ("auto", "vmap", "map", "loop")
SEED_AXIS = "seed"  # the mesh axis the seeds are split over

SEED_PARALLELISM_AUTO = {"cpu": "map"}  # any other backend (GPU, TPU): "vmap"
"""What ``train.seed_parallelism=auto`` runs, per backend.

CPU: ``map``, the mode that never cost more than K separate runs. ``make bench-seeds``
(``rnnbench/bench_seeds.py``) on the 2-core CPU, jaxlib 0.10.2, shared with other jobs: one compiled
chunk of adding-task training steps (data, forward, backward, Adam), K seeds against K x one seed
alone (its ms per step in brackets), medians of 15 (T) and 7 (S) interleaved repeats; below 1.00x
the K seeds beat K separate runs::

    cell  shape (B, T, H)          K   vmap   map    loop
    lstm  T (16, 100, 32)  [3.6]   4   0.88x  0.99x  1.01x
                                   8   0.78x  0.98x  1.00x
    gru   T                [3.3]   4   0.75x  0.86x  0.92x
                                   8   0.72x  0.90x  0.93x
    lstm  S (64, 100, 128) [68]    4   1.00x  0.94x  0.94x
                                   8   0.97x  0.94x  0.89x
    gru   S                [58]    4   0.96x  0.90x  0.89x
                                   8   0.98x  0.89x  0.87x

``vmap`` wins at the small shape but not at S (1.08-1.22x there in an earlier, busier run: XLA:CPU's
batched dots and K-fold temporaries); ``loop`` matches ``map`` at S but compiles about twice as long
at K=8 (15-19 s against 6-10 s) and reached 1.01x at T. GPU/TPU: ``vmap``, where batching the seeds
fills the device (not measured here: this machine has no accelerator).
"""


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


def make_train_step(
    model: Model, task: Task, optimizer: optax.GradientTransformation, dropout: bool, clip_norm: float = 0.0
) -> Callable:
    """``train_step(state, batch, key) -> (state, metrics)``; pure, for one seed.

    Besides the loss: the global gradient norm ``l2_grads``, one norm per layer and the readout
    (``l2_grads_layers``), ``l2_updates``, ``l2_params``, whether the gradient was clipped (its norm
    above ``clip_norm``, exactly when ``optax.clip_by_global_norm`` rescales) and how many gradient
    entries were NaN or Inf.
    """

    def train_step(state: TrainState, batch, key: PRNGKey):
        def loss_fn(params):
            pred = model.apply(params, batch.x, batch.mask, dropout_key=key if dropout else None)
            return task.loss(pred, batch)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        l2_grads = optax.tree.norm(grads)
        metrics = {
            "loss": loss,
            "l2_grads": l2_grads,
            "l2_grads_layers": jnp.stack([optax.tree.norm(g) for g in (*grads["layers"], grads["readout"])]),
            "l2_updates": optax.tree.norm(updates),
            "l2_params": optax.tree.norm(params),
            "clipped": (l2_grads > clip_norm) if clip_norm > 0 else jnp.zeros((), bool),
            "nonfinite_grads": sum(jnp.sum(~jnp.isfinite(g)) for g in jax.tree.leaves(grads)),
        }
        return TrainState(params, opt_state, state.step + 1), metrics

    return train_step


def resolve_seed_parallelism(seed_parallelism: str, backend: str | None = None) -> str:
    """The mode ``vmap``, ``map`` or ``loop`` that ``seed_parallelism`` means on ``backend`` (default: JAX's)."""
    if seed_parallelism not in SEED_PARALLELISM:
        allowed = ", ".join(SEED_PARALLELISM)
        raise ValueError(f"train.seed_parallelism={seed_parallelism!r} is not allowed; choose one of: {allowed}")
    if seed_parallelism != "auto":
        return seed_parallelism
    return SEED_PARALLELISM_AUTO.get(backend or jax.default_backend(), "vmap")


def _over_seeds(fn: Callable, how: str) -> Callable:
    """Apply a one-seed function to arguments with a leading seed axis [K, ...]; outputs get one too.

    ``vmap`` batches every operation over the seeds; ``map`` (``lax.map``) runs the one-seed program K
    times in a loop inside the program, compiled once; ``loop`` traces it K times, so the program holds
    K independent copies that XLA may schedule side by side (compile time grows with K). One seed is
    never mapped, whatever the mode: it runs as the one-seed program itself (measured on CPU: ``vmap``
    over one seed cost up to 1.24x the plain program).
    """

    def over_seeds(*args):
        num_seeds = jax.tree.leaves(args)[0].shape[0]
        if how == "vmap" and num_seeds > 1:
            return jax.vmap(fn)(*args)
        if how == "map" and num_seeds > 1:
            return jax.lax.map(lambda a: fn(*a), args)
        outs = [fn(*jax.tree.map(lambda a, k=k: a[k], args)) for k in range(num_seeds)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return over_seeds


def seed_mesh(num_seeds: int, shard_seeds: bool | None = None) -> Mesh | None:
    """The 1-D device mesh (axis ``"seed"``) the seeds are split over, or None to keep them on one device.

    ``shard_seeds=None`` shards when there is more than one device and ``num_seeds`` is a multiple of
    the device count (every device then holds the same number of seeds: one program for all);
    ``True`` insists (a one-line ValueError when it cannot be done); ``False`` never shards.
    """
    devices = jax.devices()
    fits = num_seeds % len(devices) == 0
    if shard_seeds is True and not fits:
        raise ValueError(f"train.shard_seeds=true needs train.num_seeds ({num_seeds}) to be a multiple of the "
                         f"{len(devices)} devices")
    if shard_seeds is False or (shard_seeds is None and (len(devices) == 1 or not fits)):
        return None
    return Mesh(np.asarray(devices), (SEED_AXIS,))


def _shard_over_seeds(fn: Callable, mesh: Mesh | None) -> Callable:
    """``fn`` (arguments and outputs with a leading seed axis) run on each device's share of the seeds.

    ``shard_map`` rather than sharding annotations on a jitted ``fn``: the partitioner cannot split
    the iterations of ``lax.map`` (a ``while`` loop over seeds) across devices, while ``shard_map``
    hands each device its own seeds explicitly, with no communication, whatever the mode inside.
    ``check_vma=False``: the cells' and optimisers' constants (a zero initial carry in ``lax.scan``)
    are not marked as varying over the seed axis, which the check would reject; with no collective
    inside, every value is per device anyway.
    """
    if mesh is None:
        return fn
    spec = PartitionSpec(SEED_AXIS)
    return jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)


def seed_sharding(mesh: Mesh | None) -> NamedSharding | None:
    """Where arrays with a leading seed axis live under ``mesh`` (None: JAX's default placement)."""
    return None if mesh is None else NamedSharding(mesh, PartitionSpec(SEED_AXIS))


class Trainer(NamedTuple):
    """Jittable pieces for K seeds; every array argument has a leading seed axis [K, ...]."""

    init: Callable  # (keys: SeedKeys[K]) -> TrainState[K]
    chunk: Callable  # (state[K], keys[K], n: static) -> (state[K], metrics {name: [K, n]})
    evaluate: Callable  # (params[K], keys[K]) -> (loss [K], metric [K])
    diagnose: Callable  # (params[K], keys[K]) -> diagnostics.diagnose's dict, leaves [K, ...]


def make_trainer(
    model: Model,
    task: Task,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    eval_size: int,
    dropout: bool = False,
    seed_parallelism: str = "auto",
    mesh: Mesh | None = None,
    clip_norm: float = 0.0,
    diagnostics_batch: int = 64,
    diagnostics_options: DiagnosticsOptions = DEFAULT_OPTIONS,
) -> Trainer:
    """The programs for K seeds, mapped with ``seed_parallelism`` and, given a ``mesh`` (``seed_mesh``),
    split across its devices; the seed axis must then be a multiple of the mesh size."""
    how = resolve_seed_parallelism(seed_parallelism)
    train_step = make_train_step(model, task, optimizer, dropout, clip_norm)
    sample_eval = task.sample_eval or task.sample  # held-out data: a data set's test split

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
        batch = sample_eval(keys.eval, eval_size)
        pred = model.apply(params, batch.x, batch.mask)
        return task.loss(pred, batch), task.metric(pred, batch)

    def diagnose_one(params: Params, keys: SeedKeys):
        # A fixed batch (the evaluation stream), so curves from different steps are comparable.
        batch = sample_eval(jax.random.fold_in(keys.eval, 1), diagnostics_batch)
        return diagnose(model, task.loss, params, batch, jax.random.fold_in(keys.eval, 2), diagnostics_options)

    def over_seeds(fn: Callable, mode: str = how) -> Callable:
        return _shard_over_seeds(_over_seeds(fn, mode), mesh)

    def chunk(state, keys, n):
        return over_seeds(lambda s, k: chunk_one(s, k, n))(state, keys)

    return Trainer(
        # The init is never vmapped: orthogonal initialisers call LAPACK's QR, and several batched QRs
        # running side by side deadlocked XLA:CPU (each blocks a thread of the pool it fans out to; seen
        # on 2 cores with jaxlib 0.10.2). It runs once, so one seed after another costs nothing that counts.
        init=over_seeds(init_one, "map" if how == "vmap" else how),
        chunk=chunk,
        evaluate=over_seeds(evaluate_one),
        diagnose=over_seeds(diagnose_one),
    )


class SeedResult(NamedTuple):
    seed: int
    eval_loss: float
    eval_metric: float
    solved: bool
    solved_at_step: int | None
    diverged_at_step: int | None
    grad_horizon: int | None = None  # from the last diagnostic step
    grad_decay_rate: float | None = None
    eval_data_sha256: str | None = None  # fingerprint of the seed's evaluation batch
    length_eval: dict[str, dict[str, Any]] | None = None  # eval at other lengths: {str(T): {loss, metric, solved}}


class Interrupted(KeyboardInterrupt):
    """Training stopped at a chunk boundary on request (Ctrl-C, SIGTERM), after its last checkpoint."""

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step = step
        self.signum = signum


class FitResult(NamedTuple):
    seeds: list[SeedResult]
    steps: int
    num_params: int
    compile_seconds: float
    train_seconds: float
    wall_seconds: float
    diverged: bool
    diagnostics_seconds: float = 0.0


def _finite_or_none(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _seed_diagnostics(diag: dict[str, Any], k: int) -> dict[str, Any]:
    """Seed k's slice of a diagnostics dict, as JSON-ready Python (lists, floats, None for NaN)."""
    def plain(a):  # a scalar or a curve of seed k
        a = np.asarray(a[k])
        if a.ndim == 0:
            return int(a) if a.dtype.kind in "iu" else _finite_or_none(a)
        return [_finite_or_none(v) for v in a]

    spans = [int(s) for s in np.asarray(diag["jacobian_spans"][k])]
    return {
        "grad_norm_per_step": plain(diag["grad_norm_per_step"]),
        "grad_norm_per_step_state": [plain(c) for c in diag["grad_norm_per_step_state"]],
        "grad_ratio_first_last": plain(diag["grad_ratio_first_last"]),
        "grad_decay_rate": plain(diag["grad_decay_rate"]),
        "grad_horizon": plain(diag["grad_horizon"]),
        "jacobian_times": [int(t) for t in np.asarray(diag["jacobian_times"][k])],
        "jacobian_norm": {str(span): plain(diag["jacobian_norm"][:, i]) for i, span in enumerate(spans)},
        "gates": [{d: {g: {stat: plain(v) for stat, v in stats.items()} for g, stats in gates.items()}
                   for d, gates in layer.items()} for layer in diag["gates"]],
    }


def _eval_fingerprints(task: Task, keys: SeedKeys, eval_size: int) -> list[str]:
    """sha256 of each seed's evaluation batch (x, y and mask bytes, with their shapes and dtypes)."""
    sample_eval = task.sample_eval or task.sample
    batches = jax.device_get(jax.jit(jax.vmap(lambda k: sample_eval(k.eval, eval_size)))(keys))
    out = []
    for k in range(len(keys.eval)):
        h = hashlib.sha256()
        for leaf in jax.tree.leaves(batches):
            a = np.ascontiguousarray(leaf[k])
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        out.append(h.hexdigest())
    return out


def _evaluate_lengths(programs: dict[int, Any], tasks: dict[int, Task], params, keys) -> list[dict[str, dict]]:
    """Per seed: {str(seq_len): {"eval_loss", "eval_metric", "solved"}} at each extra length."""
    by_seed: list[dict[str, dict[str, Any]]] = [{} for _ in range(len(keys.eval))]
    for length, program in programs.items():
        loss, metric = (np.asarray(a) for a in jax.device_get(program(params, keys)))
        for k in range(len(by_seed)):
            by_seed[k][str(length)] = {"eval_loss": _finite_or_none(loss[k]), "eval_metric": _finite_or_none(metric[k]),
                                       "solved": bool(loss[k] < tasks[length].solved_threshold)}
    return by_seed


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
    seed_parallelism: str = "auto",
    shard_seeds: bool | None = None,
    clip_norm: float = 0.0,
    diagnostics_every: int = 0,
    diagnostics_batch: int = 64,
    diagnostics_options: DiagnosticsOptions = DEFAULT_OPTIONS,
    eval_tasks: dict[int, Task] | None = None,
    skip_nonfinite_updates: bool = False,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[int, TrainState, dict[str, Any]], None] | None = None,
    restore: Callable[[TrainState], tuple[TrainState, dict[str, Any]] | None] | None = None,
    should_stop: Callable[[], int] | None = None,
    on_eval: Callable[[int, list[dict[str, Any]]], None] | None = None,
    on_diagnostics: Callable[[int, list[dict[str, Any]]], None] | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``num_seeds`` seeds together for ``steps`` steps, evaluating every ``eval_every`` steps.

    The seeds share each program, mapped with ``seed_parallelism`` (``make_trainer``) and, with
    ``shard_seeds`` (``seed_mesh``), split across the devices: then the state handed to
    ``on_checkpoint`` is sharded over them, and a restored state is put back the same way.

    ``on_eval(step, records)`` receives one record per seed at step 0, every ``eval_every`` steps and
    at the end: step, seed, eval_loss, eval_metric, wall_time (seconds since start) and, over the steps
    since the last record, train_loss, grad_norm and grad_norm_layers (means), clip_fraction,
    nonfinite_grads (a count), and the last step's l2_updates, l2_params and update_param_ratio.
    With ``diagnostics_every > 0``, ``on_diagnostics(step, records)`` receives one record per seed
    (see ``diagnostics.diagnose``) at step 0, at the first evaluation on or after each multiple of
    ``diagnostics_every``, and at the end. ``progress(steps_done, postfix)`` is called after each
    chunk. A seed whose loss or gradient turns non-finite has diverged: it stops (its state returns to
    the start of that chunk, the last one known finite) while the other seeds go on; training ends
    early once every seed has diverged. With ``skip_nonfinite_updates`` (the optimiser then skips
    non-finite updates, ``optax.apply_if_finite``), a seed diverges only when its parameters do.

    ``eval_tasks`` ({seq_len: task}, the same task built at other lengths) are evaluated once, after
    training, on each seed's held-out set at that length (length generalisation); the final record
    and each SeedResult carry them as ``length_eval``. Each seed's result also carries
    ``eval_data_sha256``, a fingerprint of its evaluation batch, so two runs can show they saw the
    same data.

    Checkpoints and resuming. With ``checkpoint_every > 0``, ``on_checkpoint(step, state, loop)``
    receives the state and the loop's bookkeeping (JSON-ready) at the first evaluation on or after
    each multiple of ``checkpoint_every`` and at the end. ``restore(template)`` (given the freshly
    initialised state) returns such a ``(state, loop)`` pair, or None to start afresh: training goes
    on from that step exactly as if it had never stopped, because every batch and dropout mask is
    drawn from ``fold_in(key, step)`` and the programs are the same. ``should_stop()`` is polled after
    each chunk; a non-zero answer (a signal number) checkpoints that step and raises ``Interrupted``.
    """
    t_start = time.perf_counter()
    mesh = seed_mesh(num_seeds, shard_seeds)
    sharding = seed_sharding(mesh)

    def place(tree):  # the compiled programs expect their inputs exactly where they were compiled for
        return tree if sharding is None else jax.device_put(tree, sharding)

    trainer = make_trainer(model, task, optimizer, batch_size=batch_size, eval_size=eval_size, dropout=dropout,
                           seed_parallelism=seed_parallelism, mesh=mesh, clip_norm=clip_norm,
                           diagnostics_batch=diagnostics_batch, diagnostics_options=diagnostics_options)
    seeds = [seed + k for k in range(num_seeds)]
    keys = place(jax.tree.map(lambda *ks: jnp.stack(ks), *[seed_keys(s) for s in seeds]))

    # Compile ahead of time: one program per distinct chunk length (at most two), evaluation and the
    # diagnostics; the compile time is reported on its own, never mixed into steps/s.
    t0 = time.perf_counter()
    state = jax.jit(trainer.init)(keys)
    num_params = count_params(jax.tree.map(lambda p: p[0], state.params))
    lengths = sorted({min(eval_every, steps), steps % eval_every} - {0})
    chunks = {
        n: jax.jit(trainer.chunk, static_argnums=2, donate_argnums=0).lower(state, keys, n).compile()
        for n in lengths
    }
    evaluate = jax.jit(trainer.evaluate).lower(state.params, keys).compile()
    diagnose_all = jax.jit(trainer.diagnose).lower(state.params, keys).compile() if diagnostics_every else None
    length_evals = {
        length: jax.jit(make_trainer(model, other, optimizer, batch_size=batch_size, eval_size=eval_size,
                                     seed_parallelism=seed_parallelism, mesh=mesh).evaluate
                         ).lower(state.params, keys).compile()
        for length, other in sorted((eval_tasks or {}).items())
    }
    compile_seconds = time.perf_counter() - t0
    fingerprints = _eval_fingerprints(task, keys, eval_size)

    threshold = task.solved_threshold
    solved_at: list[int | None] = [None] * num_seeds
    diverged_at: list[int | None] = [None] * num_seeds
    last_eval = (np.full(num_seeds, np.nan), np.full(num_seeds, np.nan))
    last_diag: list[dict[str, Any]] = [{} for _ in seeds]
    length_results: list[dict[str, dict[str, Any]] | None] = [None] * num_seeds
    frozen = [False] * num_seeds  # seeds stopped by an earlier chunk: their training metrics are void
    train_seconds = diagnostics_seconds = 0.0

    last_diag_step = -1
    elapsed_before = 0.0  # wall time of the earlier segments of a resumed run
    done = 0

    def loop_state() -> dict[str, Any]:
        """The loop's bookkeeping: with the TrainState, everything a resumed run needs."""
        return {"step": done, "seeds": seeds, "solved_at": solved_at, "diverged_at": diverged_at, "frozen": frozen,
                "last_eval": [np.asarray(a, dtype=float).tolist() for a in last_eval], "last_diag": last_diag,
                "last_diag_step": last_diag_step, "length_results": length_results,
                "train_seconds": train_seconds, "diagnostics_seconds": diagnostics_seconds,
                "elapsed": elapsed_before + time.perf_counter() - t_start}

    restored = restore(state) if restore is not None else None
    if restored is not None:
        state, loop = restored
        state = place(state)
        done, last_diag_step = int(loop["step"]), int(loop["last_diag_step"])
        solved_at[:], diverged_at[:], frozen[:] = loop["solved_at"], loop["diverged_at"], loop["frozen"]
        last_eval = tuple(np.asarray(a, dtype=float) for a in loop["last_eval"])
        last_diag[:], length_results[:] = loop["last_diag"], loop["length_results"]
        train_seconds, diagnostics_seconds = float(loop["train_seconds"]), float(loop["diagnostics_seconds"])
        elapsed_before = float(loop["elapsed"])

    def record(step: int, metrics: dict[str, np.ndarray] | None, final: bool = False) -> None:
        nonlocal last_eval, diagnostics_seconds, last_diag_step
        loss, metric = (np.asarray(a) for a in jax.device_get(evaluate(state.params, keys)))
        last_eval = (loss, metric)
        records = []
        for k, s in enumerate(seeds):
            if solved_at[k] is None and loss[k] < threshold:
                solved_at[k] = step
            rec = {"step": step, "seed": s, "train_loss": None, "grad_norm": None, "grad_norm_layers": None,
                   "clip_fraction": None, "nonfinite_grads": None, "l2_updates": None, "l2_params": None,
                   "update_param_ratio": None, "eval_loss": _finite_or_none(loss[k]),
                   "eval_metric": _finite_or_none(metric[k]),
                   "wall_time": elapsed_before + time.perf_counter() - t_start}
            rec["diverged"] = diverged_at[k] is not None
            if metrics is not None and not frozen[k]:
                updates, params_norm = metrics["l2_updates"][k][-1], metrics["l2_params"][k][-1]
                rec.update(
                    train_loss=_finite_or_none(np.mean(metrics["loss"][k])),
                    grad_norm=_finite_or_none(np.mean(metrics["l2_grads"][k])),
                    grad_norm_layers=[_finite_or_none(v) for v in metrics["l2_grads_layers"][k].mean(axis=0)],
                    clip_fraction=float(np.mean(metrics["clipped"][k])),
                    nonfinite_grads=int(np.sum(metrics["nonfinite_grads"][k])),
                    l2_updates=_finite_or_none(updates),
                    l2_params=_finite_or_none(params_norm),
                    update_param_ratio=(_finite_or_none(updates / params_norm)
                                        if params_norm > 0 and np.isfinite([updates, params_norm]).all() else None),
                )
            records.append(rec)
        if final and length_evals:
            for k, by_length in enumerate(_evaluate_lengths(length_evals, eval_tasks, state.params, keys)):
                length_results[k] = by_length
                records[k]["length_eval"] = by_length
        if on_eval is not None:
            on_eval(step, records)
        due = last_diag_step < 0 or step // diagnostics_every > last_diag_step // diagnostics_every
        if diagnose_all is not None and (due or final):
            last_diag_step = step
            t0 = time.perf_counter()
            diag = jax.device_get(diagnose_all(state.params, keys))
            diagnostics_seconds += time.perf_counter() - t0
            diag_records = [{"step": step, "seed": s, **_seed_diagnostics(diag, k)} for k, s in enumerate(seeds)]
            last_diag[:] = diag_records
            if on_diagnostics is not None:
                on_diagnostics(step, diag_records)

    last_checkpoint = done
    if done == 0:
        record(0, None)
    while done < steps and not all(d is not None for d in diverged_at):
        n = min(eval_every, steps - done)
        t0 = time.perf_counter()
        before = jax.tree.map(jnp.copy, state)  # the chunk donates the state; a diverging seed returns here
        state, metrics = chunks[n](state, keys)
        metrics = jax.device_get(metrics)
        train_seconds += time.perf_counter() - t0
        done += n
        for k in range(num_seeds):
            if skip_nonfinite_updates:  # non-finite steps were skipped: only a non-finite model diverges
                bad = ~np.isfinite(np.asarray(jax.device_get(optax.tree.norm(
                    jax.tree.map(lambda p, k=k: p[k], state.params))))).reshape(1)
            else:
                bad = ~np.isfinite(metrics["loss"][k]) | ~np.isfinite(metrics["l2_grads"][k])
            if diverged_at[k] is None and bad.any():
                diverged_at[k] = done - n + 1 + int(np.argmax(bad))
        # A diverged seed stops: its state stays at the last chunk start before its first non-finite
        # step (finite parameters, so its evaluations stay the last finite ones); the others go on.
        stopped = np.array([d is not None for d in diverged_at])
        if stopped.any():
            keep_old = jnp.asarray(stopped)

            def restore(new, old, keep_old=keep_old):  # every state leaf has the seed axis first
                return jnp.where(keep_old.reshape((-1,) + (1,) * (new.ndim - 1)), old, new)

            state = place(jax.tree.map(restore, state, before))
        del before
        all_diverged = all(d is not None for d in diverged_at)
        record(done, metrics, final=done == steps or all_diverged)
        frozen[:] = stopped.tolist()
        if progress is not None:
            progress(done, {"eval_loss": float(np.nanmean(last_eval[0]))})
        signum = should_stop() if should_stop is not None else 0
        due = checkpoint_every and done // checkpoint_every > last_checkpoint // checkpoint_every
        if on_checkpoint is not None and (due or signum or done == steps or all_diverged):
            on_checkpoint(done, state, loop_state())
            last_checkpoint = done
        if signum:
            raise Interrupted(done, signum)

    loss, metric = last_eval
    results = [
        SeedResult(seed=s, eval_loss=float(loss[k]), eval_metric=float(metric[k]),
                   solved=bool(loss[k] < threshold), solved_at_step=solved_at[k],
                   diverged_at_step=diverged_at[k], grad_horizon=last_diag[k].get("grad_horizon"),
                   grad_decay_rate=last_diag[k].get("grad_decay_rate"), eval_data_sha256=fingerprints[k],
                   length_eval=length_results[k])
        for k, s in enumerate(seeds)
    ]
    return FitResult(seeds=results, steps=done, num_params=num_params, compile_seconds=compile_seconds,
                     train_seconds=train_seconds, wall_seconds=elapsed_before + time.perf_counter() - t_start,
                     diverged=any(d is not None for d in diverged_at), diagnostics_seconds=diagnostics_seconds)
