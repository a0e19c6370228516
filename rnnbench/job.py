"""One job: check the config, build the pieces, train, and write everything the run produced.

The order is the point: every user-facing option is checked and every plug-in built *before* any
file is written or any compute starts, so bad input leaves no half-written run directory. Once
training starts, ``summary.json`` always says how the run ended: completed, diverged, failed (with the
error) or interrupted.
"""

from __future__ import annotations

import logging
import shutil
import sys
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
    METRICS_FILE,
    SUMMARY_FILE,
    RunLogger,
    WandbError,
    check_wandb_credentials,
)

log = logging.getLogger("rnnbench")


def _discard_empty_run_dir(run_dir: Path) -> None:
    """Remove a run directory this job created but never wrote results into (Hydra made it)."""
    if not run_dir.is_dir() or (run_dir / SUMMARY_FILE).exists() or (run_dir / METRICS_FILE).exists():
        return
    if all(p.name in (".hydra", "wandb") or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        parent = run_dir.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def enable_compile_cache(path: str | None) -> None:
    """Turn on JAX's persistent compilation cache in ``path`` (None: leave it off)."""
    if not path:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", str(Path(path).expanduser()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


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

    ``names`` are the config-group choices (``cell``, ``task``, ``optim``), used to name the run.
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
        check_wandb_credentials(cfg.logger.mode.value)
        if cfg.model.param_budget is not None:
            _size_to_budget(cfg, cell_factory, task, bidirectional)
    except (ConfigError, WandbError):
        _discard_empty_run_dir(run_dir)
        raise

    # Heavy imports only once the config is known to be good.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
    import jax

    enable_compile_cache(cfg.train.compile_cache)
    from rnnbench.diagnostics import DiagnosticsOptions
    from rnnbench.model import make_model
    from rnnbench.train import fit

    model = make_model(cell_factory, hidden_size=cfg.model.hidden_size, output_dim=task.output_dim,
                       readout=task.readout, num_layers=cfg.model.num_layers, bidirectional=bidirectional,
                       dropout=cfg.model.dropout, unroll=cfg.model.unroll, hoist_input=cfg.model.hoist_input)
    plain = to_plain(cfg)
    seeds = list(range(cfg.seed, cfg.seed + cfg.train.num_seeds))
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
    }

    try:
        logger = RunLogger(run_dir, plain, mode=cfg.logger.mode.value, project=cfg.logger.project,
                           entity=cfg.logger.entity, group=cfg.logger.group or group, name=name,
                           tags=list(cfg.logger.tags), init_timeout=cfg.logger.init_timeout).open()
    except WandbError:  # e.g. online mode with no network: nothing of this run is worth keeping
        _discard_empty_run_dir(run_dir)
        raise
    with logger:
        (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(plain)))
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

        try:
            result = fit(model, task, optimizer, seed=cfg.seed, num_seeds=cfg.train.num_seeds,
                         steps=cfg.train.steps, batch_size=cfg.train.batch_size,
                         eval_every=cfg.train.eval_every, eval_size=cfg.train.eval_size,
                         dropout=cfg.model.dropout > 0, seed_parallel=cfg.train.seed_parallel.value,
                         clip_norm=float(plugin_setting(cfg.optim, "optim", "clip_norm", 0.0)),
                         diagnostics_every=d.every, diagnostics_batch=d.batch_size,
                         diagnostics_options=diagnostics_options, eval_tasks=eval_tasks,
                         skip_nonfinite_updates=cfg.train.skip_nonfinite_updates,
                         on_eval=logger.log_eval, on_diagnostics=logger.log_diagnostics, progress=progress)
        except BaseException as e:
            bar.close()
            interrupted = isinstance(e, KeyboardInterrupt)
            summary["status"] = "interrupted" if interrupted else "failed"
            if not interrupted:
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
