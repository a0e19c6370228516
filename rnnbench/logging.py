"""Run outputs behind one small interface: local files always, Weights & Biases when enabled.

A run directory holds

    metrics.jsonl    one record per evaluation and seed (appended and flushed as training goes)
    diagnostics.jsonl one record per diagnostic step and seed: full gradient-flow curves, Jacobian
                     norms, gate statistics (see diagnostics.py)
    summary.json     written atomically: status "running" at the start, the final record at the end
    config.yaml      the resolved config (Hydra's .hydra/config.yaml keeps ${oc.env:...} unresolved)
    checkpoints/     the last train.keep_checkpoints checkpoints (checkpoint.py)
    wandb/           the W&B run (offline by default: ``wandb sync RUN_DIR/wandb/offline-run-*``)

A resumed run cuts metrics.jsonl and diagnostics.jsonl back to their sizes at its checkpoint
(``truncate_to``) before appending, so each step is in them exactly once; its W&B run keeps the id
of the first segment (online: W&B resumes the run; offline: each segment is an ``offline-run-*``
directory with that id, and ``wandb sync`` uploads them into the one run, in order).

``report.py`` reads only these files; it never needs W&B.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rnnbench.checkpoint import crash_point

METRICS_FILE = "metrics.jsonl"
DIAGNOSTICS_FILE = "diagnostics.jsonl"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"  # held (flock, exclusive) by the process training in the run directory
FINISHED = ("completed", "diverged")  # the statuses of a summary.json whose run reached its end
CONFIG_FILE = "config.yaml"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same directory, then rename: never half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_json_safe(data), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for the group to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def truncate_to(run_dir: Path, sizes: dict[str, int]) -> None:
    """Cut the run's JSONL files back to ``sizes`` ({file name: bytes}; a file not named: to 0)."""
    for name in (METRICS_FILE, DIAGNOSTICS_FILE):
        path = Path(run_dir) / name
        if path.exists():
            with open(path, "r+b") as f:
                f.truncate(min(int(sizes.get(name, 0)), os.fstat(f.fileno()).st_size))
                f.flush()
                os.fsync(f.fileno())


def wandb_api_key_available() -> bool:
    """Whether W&B online mode has credentials: WANDB_API_KEY or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class WandbError(RuntimeError):
    """W&B could not start (online mode without credentials or network); message is one line."""


def _wandb_host() -> tuple[str, int]:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)


def wandb_unreachable(timeout: float) -> str | None:
    """Why the W&B server cannot be reached (name lookup, TCP connect), or None when it can.

    Behind a proxy a direct connection may fail while W&B (which honours the proxy) works: then this
    says nothing and ``wandb.init``'s own ``init_timeout`` is the limit."""
    import socket

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return None
    host, port = _wandb_host()
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"cannot reach {host}:{port} ({type(e).__name__}: {e})"
    return None


def check_wandb_credentials(mode: str, fallback_offline: bool = False, timeout: float = 5.0) -> str:
    """The W&B mode this run can use, decided at once, before any work.

    Online mode needs an API key (W&B would otherwise prompt, or wait forever in a terminal) and a
    server that answers (W&B would otherwise retry for ``init_timeout`` seconds): both are checked
    here within ``timeout`` seconds. Either missing raises a one-line ``WandbError``, or with
    ``fallback_offline`` logs a warning and returns "offline".
    """
    if mode != "online":
        return mode
    problem = None
    if not wandb_api_key_available():
        problem = "logger.mode=online needs a W&B API key (set WANDB_API_KEY or run `wandb login`)"
    elif (why := wandb_unreachable(timeout)) is not None:
        problem = f"logger.mode=online: {why}"
    if problem is None:
        return mode
    if fallback_offline:
        logging.getLogger("rnnbench").warning("%s; logging offline instead (logger.fallback_offline=true); "
                                              "`wandb sync` uploads the run later", problem)
        return "offline"
    raise WandbError(f"{problem}; use logger.mode=offline (and `wandb sync` later) or logger.fallback_offline=true")


class RunLogger:
    """Writes a run's records to ``metrics.jsonl`` and W&B, and its summary to ``summary.json``.

    Use as a context manager: the W&B run is finished on exit, so the next job of a multirun gets
    a run of its own (a run left open would swallow every later job's metrics).
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], *, mode: str, project: str, entity: str | None,
                 group: str | None, name: str, tags: list[str], init_timeout: float, run_id: str | None = None,
                 fallback_offline: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self._wandb_args = dict(mode=mode, project=project, entity=entity, group=group, name=name,
                                tags=list(tags), init_timeout=init_timeout, run_id=run_id)
        self._fallback_offline = fallback_offline
        self._config = config
        self._metrics = None
        self._diagnostics = None
        self.flow_history: list[list[float]] = []  # log10 ||dL/dh_t||, mean over seeds, per diagnostic step
        self.wandb_run = None

    def __enter__(self) -> RunLogger:
        return self if self._metrics is not None else self.open()

    def open(self) -> RunLogger:
        """Start the W&B run and open metrics.jsonl (``__enter__`` does this unless done already)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        args = self._wandb_args
        if args["mode"] != "disabled":  # first, so a W&B failure leaves no metrics file behind
            try:
                self.wandb_run = self._init_wandb(**args)
            except WandbError as e:
                if not (self._fallback_offline and args["mode"] == "online"):
                    raise
                logging.getLogger("rnnbench").warning("%s; logging offline instead (logger.fallback_offline=true)", e)
                self.wandb_run = self._init_wandb(**{**args, "mode": "offline"})
        self._metrics = open(self.run_dir / METRICS_FILE, "a")
        return self

    def _init_wandb(self, *, mode, project, entity, group, name, tags, init_timeout, run_id):
        import wandb

        check_wandb_credentials(mode)
        settings = wandb.Settings(x_disable_stats=True, init_timeout=init_timeout, console="off", silent=True)
        # A resumed run keeps its id: online, W&B appends to that run; offline (where W&B 0.31 cannot
        # resume), the new offline-run-* directory carries the same id and `wandb sync` joins them.
        resume = {"id": run_id, "resume": "allow"} if run_id and mode == "online" else {"id": run_id}
        try:
            return wandb.init(project=project, entity=entity, group=group, name=name, tags=tags,
                              config=self._config, dir=str(self.run_dir), mode=mode,
                              reinit="finish_previous", settings=settings, **resume)
        except Exception as e:  # CommError after init_timeout, UsageError, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WandbError(f"W&B {mode} init failed ({first}); use logger.mode=offline or "
                             "check the network and credentials") from None

    def file_sizes(self) -> dict[str, int]:
        """Byte sizes of the JSONL files written so far (a checkpoint stores them; see truncate_to)."""
        return {name: (self.run_dir / name).stat().st_size if (self.run_dir / name).exists() else 0
                for name in (METRICS_FILE, DIAGNOSTICS_FILE)}

    def log_eval(self, step: int, records: list[dict[str, Any]]) -> None:
        """One record per seed at ``step``: appended to metrics.jsonl and logged to W&B."""
        for rec in records:
            self._metrics.write(json.dumps(_json_safe(rec)) + "\n")
        self._metrics.flush()
        crash_point("metrics_written", step)
        if self.wandb_run is not None:
            data: dict[str, Any] = {}
            for rec in records:
                for key, value in rec.items():
                    if key in ("step", "seed") or value is None:
                        continue
                    if isinstance(value, list):  # per-layer values: one scalar each (the readout last)
                        data.update({f"seed{rec['seed']}/{key}/{i}": v for i, v in enumerate(value) if v is not None})
                    elif isinstance(value, dict):  # length_eval: {seq_len: {eval_loss, eval_metric, solved}}
                        data.update({f"seed{rec['seed']}/{key}/T{length}/{name}": v
                                     for length, values in value.items() for name, v in values.items()
                                     if v is not None})
                    else:
                        data[f"seed{rec['seed']}/{key}"] = value
            for key in ("train_loss", "eval_loss", "eval_metric", "grad_norm"):
                values = [r[key] for r in records if r.get(key) is not None]
                if values:
                    data[key] = sum(values) / len(values)
            self.wandb_run.log(data, step=step)

    def log_diagnostics(self, step: int, records: list[dict[str, Any]]) -> None:
        """One record per seed at ``step``: appended to diagnostics.jsonl; scalars and plots to W&B."""
        if self._diagnostics is None:
            self._diagnostics = open(self.run_dir / DIAGNOSTICS_FILE, "a")  # closed in __exit__
        for rec in records:
            self._diagnostics.write(json.dumps(_json_safe(rec)) + "\n")
        self._diagnostics.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(_wandb_diagnostics(step, records, self.flow_history), step=step)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.run_dir / SUMMARY_FILE, summary)
        if self.wandb_run is not None:
            flat = {k: v for k, v in summary.items() if k != "seeds"}
            for s in summary.get("seeds", []):
                flat.update({f"seed{s['seed']}/{k}": v for k, v in s.items() if k != "seed"})
            self.wandb_run.summary.update(_json_safe(flat))

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._metrics is not None:
            self._metrics.close()
        if self._diagnostics is not None:
            self._diagnostics.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=0 if exc_type is None else 1)
            self.wandb_run = None


def _log10(values: list[float | None]) -> list[float]:
    return [math.log10(v) if v is not None and v > 0 else float("nan") for v in values]


def _wandb_diagnostics(step: int, records: list[dict[str, Any]], history: list[list[float]]) -> dict[str, Any]:
    """W&B payload for one diagnostic step: scalars per seed and their mean, the gradient-flow curve
    (log10 ||dL/dh_t|| against t, one line per seed), its history over training as a heatmap image,
    and gate saturation against t."""
    import numpy as np
    import wandb

    data: dict[str, Any] = {}
    scalars = ("grad_horizon", "grad_decay_rate", "grad_ratio_first_last")
    for rec in records:
        prefix = f"seed{rec['seed']}/"
        for key in scalars:
            if rec.get(key) is not None:
                data[prefix + key] = rec[key]
        for span, values in rec["jacobian_norm"].items():
            finite = [v for v in values if v is not None]
            if finite:
                data[f"{prefix}jacobian_norm/span{span}"] = sum(finite) / len(finite)
        for i, layer in enumerate(rec["gates"]):
            for direction, gates in layer.items():
                for gate, stats in gates.items():
                    sat = [v for v in stats["saturation"] if v is not None]
                    if sat:
                        data[f"{prefix}gates/layer{i}/{direction}/{gate}_saturation"] = sum(sat) / len(sat)
    for key in scalars:
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            data[key] = sum(values) / len(values)

    T = len(records[0]["grad_norm_per_step"])
    t = list(range(1, T + 1))
    curves = [_log10(r["grad_norm_per_step"]) for r in records]
    data["gradient_flow/curve"] = wandb.plot.line_series(
        xs=t, ys=curves, keys=[f"seed {r['seed']}" for r in records],
        title=f"log10 ||dL/dh_t|| at step {step}", xname="t")
    history.append(list(np.nanmean(np.asarray(curves, dtype=float), axis=0)))
    image = np.asarray(history, dtype=float)  # [diagnostic steps, T]
    finite = image[np.isfinite(image)]
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        scaled = np.nan_to_num((image - lo) / (hi - lo if hi > lo else 1.0), nan=0.0)
        pixels = (np.repeat(np.repeat(scaled, 8, axis=0), max(1, 512 // T), axis=1) * 255).astype(np.uint8)
        data["gradient_flow/over_training"] = wandb.Image(
            pixels, caption=f"log10 ||dL/dh_t|| (rows: diagnostic steps up to {step}; columns: t = 1..{T}); "
                            f"dark {lo:.2f}, light {hi:.2f}")
    first = records[0]
    for i, layer in enumerate(first["gates"]):
        for direction, gates in layer.items():
            if gates:
                data[f"gates/layer{i}/{direction}/saturation_curve"] = wandb.plot.line_series(
                    xs=t, ys=[[v if v is not None else float("nan") for v in g["saturation"]] for g in gates.values()],
                    keys=list(gates), title=f"gate saturation vs t, layer {i} {direction}, seed {first['seed']}",
                    xname="t")
    return data
