"""One job: check the config, build the pieces, train, and write everything the run produced.

The order is the point: every user-facing option is checked and every plug-in built *before* any
file is written or any compute starts, so bad input leaves no half-written run directory. Once
training starts, ``summary.json`` always says how the run ended: completed, diverged, failed (with the
error) or interrupted.

Re-running a command in a run directory that already holds a run picks up where it stopped: a
completed or diverged run is skipped, a failed one is skipped unless ``train.rerun_failed=true``, and
a killed or interrupted one resumes from its newest checkpoint (``checkpoint.py``), its metrics files
cut back to that step, to finish bit-identical to a run never stopped. The config must be the run's
own (``RESUME_MAY_DIFFER`` lists the keys that may change); a lock keeps two processes out of one
run directory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rnnbench.config import (
    ConfigError,
    build_cell,
    build_eval_tasks,
    build_optimizer,
    build_task,
    plugin_setting,
    to_plain,
    validate,
)
from rnnbench.logging import (
    CONFIG_FILE,
    FINISHED,
    LOCK_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    RunLogger,
    WandbError,
    check_wandb_credentials,
    truncate_to,
)
from rnnbench.malloc import activation_bytes, resolve, tune_malloc

log = logging.getLogger("rnnbench")


# Keys a resumed run may change: they alter how a run is shown, stored or logged, never its numbers.
RESUME_MAY_DIFFER = ("train.progress", "train.compile_cache", "train.tune_malloc", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.rerun_failed", "logger.init_timeout", "logger.fallback_offline")


def _discard_empty_run_dir(run_dir: Path) -> None:
    """Remove a run directory this job created but never wrote results into (Hydra made it)."""
    if not run_dir.is_dir() or (run_dir / SUMMARY_FILE).exists() or (run_dir / METRICS_FILE).exists():
        return
    if all(p.name in (".hydra", "wandb", LOCK_FILE) or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        parent = run_dir.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def previous_run(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a run already in ``run_dir`` (None: nothing there yet)."""
    path = run_dir / SUMMARY_FILE
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # written atomically, so only a damaged disk gets here: resume
            return {"status": "running"}
    if (run_dir / METRICS_FILE).exists():
        return {"status": "running"}
    return None


def check_same_config(run_dir: Path, plain: dict[str, Any], *, skipping: bool = False) -> None:
    """Refuse, in one line, to resume a run directory with another config than its own.

    ``skipping``: the run is finished and will only be skipped. Then a key that only one of the two
    configs has (an option a newer rnnbench added or removed since the run) is passed over, so that a
    sweep started before an upgrade can be re-launched to finish its other jobs; a key both have must
    still match. A run that will resume is held to every key."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return
    old = _flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    new = _flatten(plain)
    for key in sorted(old.keys() | new.keys()):
        if key in RESUME_MAY_DIFFER or old.get(key, "<absent>") == new.get(key, "<absent>"):
            continue
        if skipping and (key not in old or key not in new):
            continue
        raise ConfigError(f"cannot resume {run_dir}: {key}={new.get(key, '<absent>')!r} differs from the run's "
                          f"{old.get(key, '<absent>')!r} (its {CONFIG_FILE}); rerun with the run's own settings "
                          "or choose another hydra.run.dir / hydra.sweep.dir")


def _lock(run_dir: Path):
    """An exclusive lock on the run directory for this process's lifetime (released when it exits)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ConfigError(f"run directory {run_dir} is in use by another rnnbench process; wait for it or choose "
                          "another hydra.run.dir") from None
    return f


class StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM (a cluster's pre-emption notice) while training: finish the chunk,
    write a checkpoint, stop with status "interrupted". A second signal stops at once (the newest
    periodic checkpoint is then the resume point). Signals can be caught only in the main thread; a
    job run in another thread (some launchers) keeps the default behaviour."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"rnnbench: {signal.Signals(signum).name}: stopping after the current chunk to write a checkpoint "
              "(Ctrl-C again stops at once)", file=sys.stderr, flush=True)

    def __call__(self) -> int:
        return self.signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def enable_compile_cache(path: str | None) -> None:
    """Turn on JAX's persistent compilation cache in ``path`` (None: leave it off)."""
    if not path:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", str(Path(path).expanduser()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _progress_bar(enabled: bool | None, total: int, desc: str):
    from tqdm.auto import tqdm

    disable = not sys.stderr.isatty() if enabled is None else not enabled
    return tqdm(total=total, desc=desc, unit="step", disable=disable, dynamic_ncols=True, leave=False)


def _size_to_budget(cfg: DictConfig, cell_factory, task, bidirectional: bool) -> None:
    """Set ``cfg.model.hidden_size`` to the size whose model has ~``model.param_budget`` parameters."""
    from rnnbench.model import hidden_size_for_budget

    try:
        hidden, count = hidden_size_for_budget(
            cell_factory, cfg.model.param_budget, input_dim=task.input_dim, output_dim=task.output_dim,
            readout=task.readout, num_layers=cfg.model.num_layers, bidirectional=bidirectional)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    log.info("model.param_budget=%d: hidden_size=%d gives %d parameters", cfg.model.param_budget, hidden, count)
    cfg.model.hidden_size = hidden


def run_job(cfg: DictConfig, run_dir: Path, *, names: dict[str, str], group: str | None = None) -> dict[str, Any]:
    """Run one configured job in ``run_dir``; returns the summary also written to summary.json.

    ``names`` are the config-group choices (``cell``, ``task``, ``optim``), used to name the run. A run
    directory that holds a finished run (or a failed one, without ``train.rerun_failed``) is left as it
    is: its summary is returned with ``skipped: true``.
    """
    run_dir = Path(run_dir)
    try:
        validate(cfg)
        task = build_task(cfg.task)
        eval_tasks = build_eval_tasks(cfg.task, task, list(cfg.eval.seq_lens))
        cell_factory, bidirectional = build_cell(cfg.cell)
        optimizer = build_optimizer(cfg.optim, total_steps=cfg.train.steps)
        if cfg.train.skip_nonfinite_updates:
            import optax

            # every non-finite update skipped (apply_if_finite applies one after this many in a row)
            optimizer = optax.apply_if_finite(optimizer, max_consecutive_errors=2**31 - 1)
        if cfg.model.param_budget is not None:
            _size_to_budget(cfg, cell_factory, task, bidirectional)
        if cfg.train.shard_seeds:  # the device count is known only to JAX: check it before any work
            from rnnbench.train import seed_mesh

            try:
                seed_mesh(cfg.train.num_seeds, True)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        plain = to_plain(cfg)
        previous = previous_run(run_dir)
        if previous is not None:
            status = previous.get("status")
            skip = status in FINISHED or (status == "failed" and not cfg.train.rerun_failed)
            check_same_config(run_dir, plain, skipping=skip)
            if skip:
                return {**previous, "skipped": True}
        wandb_mode = check_wandb_credentials(cfg.logger.mode.value, cfg.logger.fallback_offline,
                                             timeout=min(5.0, cfg.logger.init_timeout))
    except (ConfigError, WandbError):
        _discard_empty_run_dir(run_dir)
        raise
    lock = _lock(run_dir)  # its failure must not discard the directory: another process is writing it
    try:
        return _run_locked(cfg, run_dir, names=names, group=group, task=task, eval_tasks=eval_tasks,
                           cell_factory=cell_factory, bidirectional=bidirectional, optimizer=optimizer,
                           plain=plain, previous=previous, wandb_mode=wandb_mode)
    finally:
        lock.close()


def _recurrent_width(cell_factory, hidden_size: int, input_dim: int) -> int:
    """G, the width of the cell's recurrent projection ``w_h [H, G]`` (4H for the LSTM); H for cells
    without one. Read from the shapes of its parameters, without computing them."""
    import jax

    cell = cell_factory(hidden_size)
    shapes = jax.eval_shape(lambda key: cell.init(key, input_dim), jax.random.key(0))
    w_h = shapes.get("w_h") if isinstance(shapes, dict) else None
    return w_h.shape[-1] if w_h is not None and len(w_h.shape) == 2 else hidden_size


def _run_locked(cfg: DictConfig, run_dir: Path, *, names: dict[str, str], group: str | None, task, eval_tasks,
                cell_factory, bidirectional: bool, optimizer, plain: dict[str, Any], previous: dict[str, Any] | None,
                wandb_mode: str) -> dict[str, Any]:
    # Heavy imports only once the config is known to be good.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
    import jax

    enable_compile_cache(cfg.train.compile_cache)
    step_bytes = activation_bytes(cfg.train.batch_size, task.seq_len,
                                  _recurrent_width(cell_factory, cfg.model.hidden_size, task.input_dim),
                                  cfg.model.num_layers, 2 if bidirectional else 1, cfg.train.num_seeds)
    tuned = resolve(cfg.train.tune_malloc, step_bytes, jax.default_backend())
    log.info("glibc malloc %s (train.tune_malloc=%s, step activations %.1f MiB)",
             "tuned" if tune_malloc(tuned) and tuned else "at its defaults", cfg.train.tune_malloc, step_bytes / 2**20)
    from rnnbench.checkpoint import CheckpointManager, restore_state
    from rnnbench.diagnostics import DiagnosticsOptions
    from rnnbench.model import make_model
    from rnnbench.train import Interrupted, fit

    model = make_model(cell_factory, hidden_size=cfg.model.hidden_size, output_dim=task.output_dim,
                       readout=task.readout, num_layers=cfg.model.num_layers, bidirectional=bidirectional,
                       dropout=cfg.model.dropout, unroll=cfg.model.unroll, hoist_input=cfg.model.hoist_input,
                       remat=cfg.model.remat)
    seeds = list(range(cfg.seed, cfg.seed + cfg.train.num_seeds))
    checkpoints = CheckpointManager(run_dir, keep=cfg.train.keep_checkpoints)
    # Resuming: the newest checkpoint, and the metrics files cut back to it (to nothing without one:
    # the run starts afresh and writes every step again, once).
    checkpoint = checkpoints.latest() if previous is not None else None
    if previous is not None:
        truncate_to(run_dir, checkpoint.files if checkpoint is not None else {})
        log.info("resuming %s from %s", run_dir, f"step {checkpoint.step}" if checkpoint else "the start")
    name = cfg.logger.name or f"{names['cell']}-{names['task']}-T{task.seq_len}-s{cfg.seed}"
    summary: dict[str, Any] = {
        "status": "running", "cell": names["cell"], "task": names["task"], "optim": names.get("optim"),
        "seq_len": task.seq_len, "length_range": list(task.length_range) if task.length_range else None,
        "eval_seq_lens": sorted(eval_tasks), "num_params": None, "baseline_loss": task.baseline_loss,
        "solved_threshold": task.solved_threshold, "metric_name": task.metric_name,
        "hidden_size": cfg.model.hidden_size, "param_budget": cfg.model.param_budget,
        "num_layers": cfg.model.num_layers, "bidirectional": bidirectional,
        "num_seeds": cfg.train.num_seeds, "steps": 0, "steps_per_second": None, "compile_seconds": None,
        "wall_seconds": None, "backend": jax.default_backend(), "run_dir": str(run_dir.resolve()),
        "seeds": [{"seed": s, "eval_loss": None, "eval_metric": None, "solved": False, "solved_at_step": None,
                   "grad_horizon": None, "grad_decay_rate": None} for s in seeds],
        "checkpoint_step": checkpoint.step if checkpoint else None,
        "resumed_at_steps": [*(previous or {}).get("resumed_at_steps", []), checkpoint.step if checkpoint else 0]
        if previous is not None else [],
    }

    try:
        logger = RunLogger(run_dir, plain, mode=wandb_mode, project=cfg.logger.project,
                           entity=cfg.logger.entity, group=cfg.logger.group or group, name=name,
                           tags=list(cfg.logger.tags), init_timeout=cfg.logger.init_timeout,
                           run_id=(previous or {}).get("wandb_run_id"),
                           fallback_offline=cfg.logger.fallback_offline).open()
    except WandbError:  # e.g. online mode with no network: nothing of this run is worth keeping
        _discard_empty_run_dir(run_dir)
        raise
    with logger:
        _write_text_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(plain)))
        if logger.wandb_run is not None:
            summary["wandb_run_id"] = logger.wandb_run.id
            summary["wandb_dir"] = str(Path(logger.wandb_run.dir).parent)
        logger.write_summary(summary)
        bar = _progress_bar(cfg.train.progress, cfg.train.steps, name)
        d = cfg.diagnostics
        diagnostics_options = DiagnosticsOptions(
            horizon_threshold=d.horizon_threshold, jacobian_times=d.jacobian_times,
            jacobian_spans=tuple(d.jacobian_spans), jacobian_batch=d.jacobian_batch, power_iters=d.power_iters)

        def progress(done: int, postfix: dict[str, float]) -> None:
            bar.update(done - bar.n)
            bar.set_postfix(postfix, refresh=False)

        def save_checkpoint(step: int, state, loop: dict[str, Any]) -> None:
            checkpoints.save(step, state, {**loop, "wandb_flow_history": logger.flow_history},
                             logger.file_sizes(), seeds)
            summary["checkpoint_step"] = step

        def restore(template):
            if checkpoint is None:
                return None
            logger.flow_history = list(checkpoint.loop.get("wandb_flow_history", []))
            bar.update(checkpoint.step)
            return restore_state(checkpoint, template, seeds), checkpoint.loop

        stop = StopRequest()
        try:
            with stop:
                result = fit(
                    model, task, optimizer, seed=cfg.seed, num_seeds=cfg.train.num_seeds,
                    steps=cfg.train.steps, batch_size=cfg.train.batch_size,
                    eval_every=cfg.train.eval_every, eval_size=cfg.train.eval_size,
                    dropout=cfg.model.dropout > 0, seed_parallelism=cfg.train.seed_parallelism.value,
                    shard_seeds=cfg.train.shard_seeds,
                    clip_norm=float(plugin_setting(cfg.optim, "optim", "clip_norm", 0.0)),
                    diagnostics_every=d.every, diagnostics_batch=d.batch_size,
                    diagnostics_options=diagnostics_options, eval_tasks=eval_tasks,
                    skip_nonfinite_updates=cfg.train.skip_nonfinite_updates,
                    checkpoint_every=cfg.train.checkpoint_every,
                    on_checkpoint=save_checkpoint if cfg.train.checkpoint_every > 0 else None,
                    restore=restore, should_stop=stop, on_eval=logger.log_eval,
                    on_diagnostics=logger.log_diagnostics, progress=progress)
        except BaseException as e:
            bar.close()
            interrupted = isinstance(e, KeyboardInterrupt)
            summary["status"] = "interrupted" if interrupted else "failed"
            if isinstance(e, Interrupted):
                summary["steps"] = e.step
            if interrupted:
                step = summary["checkpoint_step"]
                where = f"the checkpoint of step {step}" if step is not None else "the start (no checkpoint yet)"
                print(f"rnnbench: interrupted; the same command with this run directory ({run_dir}) resumes from "
                      f"{where}", file=sys.stderr, flush=True)
            else:
                summary["error"] = f"{type(e).__name__}: {e}"
                summary["traceback"] = traceback.format_exc()
            logger.write_summary(summary)
            raise
        bar.close()
        summary.update(
            status="diverged" if result.diverged else "completed",
            num_params=result.num_params,
            steps=result.steps,
            steps_per_second=result.steps / result.train_seconds if result.train_seconds > 0 else None,
            compile_seconds=result.compile_seconds,
            train_seconds=result.train_seconds,
            wall_seconds=result.wall_seconds,
            diagnostics_seconds=result.diagnostics_seconds,
            seeds=[r._asdict() for r in result.seeds],
        )
        logger.write_summary(summary)
    return summary
