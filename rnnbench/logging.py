"""Run outputs behind one small interface: local files always, Weights & Biases when enabled.

A run directory holds

    metrics.jsonl    one record per evaluation and seed (appended and flushed as training goes)
    summary.json     written atomically: status "running" at the start, the final record at the end
    config.yaml      the resolved config (Hydra's .hydra/config.yaml keeps ${oc.env:...} unresolved)
    wandb/           the W&B run (offline by default: ``wandb sync RUN_DIR/wandb/offline-run-*``)

``report.py`` reads only these files; it never needs W&B.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def check_wandb_credentials(mode: str) -> None:
    """Fail at once, before any work, if online mode has no key (W&B would otherwise prompt or hang)."""
    if mode == "online" and not wandb_api_key_available():
        raise WandbError("logger.mode=online needs a W&B API key (set WANDB_API_KEY or run `wandb login`); "
                         "use logger.mode=offline and `wandb sync` later")


class RunLogger:
    """Writes a run's records to ``metrics.jsonl`` and W&B, and its summary to ``summary.json``.

    Use as a context manager: the W&B run is finished on exit, so the next job of a multirun gets
    a run of its own (a run left open would swallow every later job's metrics).
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], *, mode: str, project: str, entity: str | None,
                 group: str | None, name: str, tags: list[str], init_timeout: float) -> None:
        self.run_dir = Path(run_dir)
        self._wandb_args = dict(mode=mode, project=project, entity=entity, group=group, name=name,
                                tags=list(tags), init_timeout=init_timeout)
        self._config = config
        self._metrics = None
        self.wandb_run = None

    def __enter__(self) -> RunLogger:
        return self if self._metrics is not None else self.open()

    def open(self) -> RunLogger:
        """Start the W&B run and open metrics.jsonl (``__enter__`` does this unless done already)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        args = self._wandb_args
        if args["mode"] != "disabled":  # first, so a W&B failure leaves no metrics file behind
            self.wandb_run = self._init_wandb(**args)
        self._metrics = open(self.run_dir / METRICS_FILE, "a")
        return self

    def _init_wandb(self, *, mode, project, entity, group, name, tags, init_timeout):
        import wandb

        check_wandb_credentials(mode)
        settings = wandb.Settings(x_disable_stats=True, init_timeout=init_timeout, console="off", silent=True)
        try:
            return wandb.init(project=project, entity=entity, group=group, name=name, tags=tags,
                              config=self._config, dir=str(self.run_dir), mode=mode,
                              reinit="finish_previous", settings=settings)
        except Exception as e:  # CommError after init_timeout, UsageError, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WandbError(f"W&B {mode} init failed ({first}); use logger.mode=offline or "
                             "check the network and credentials") from None

    def log_eval(self, step: int, records: list[dict[str, Any]]) -> None:
        """One record per seed at ``step``: appended to metrics.jsonl and logged to W&B."""
        for rec in records:
            self._metrics.write(json.dumps(_json_safe(rec)) + "\n")
        self._metrics.flush()
        if self.wandb_run is not None:
            data: dict[str, Any] = {}
            for rec in records:
                for key, value in rec.items():
                    if key not in ("step", "seed") and value is not None:
                        data[f"seed{rec['seed']}/{key}"] = value
            for key in ("train_loss", "eval_loss", "eval_metric", "grad_norm"):
                values = [r[key] for r in records if r.get(key) is not None]
                if values:
                    data[key] = sum(values) / len(values)
            self.wandb_run.log(data, step=step)

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
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=0 if exc_type is None else 1)
            self.wandb_run = None
