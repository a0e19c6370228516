"""Thin Hydra entry point: ``rnnbench [overrides]`` and ``rnnbench -m [sweeps]``.

Only Hydra and OmegaConf load before a job starts, so ``rnnbench --help`` stays fast; JAX, optax and
W&B are imported by ``rnnbench.job`` once the config has been checked. The configs live in the
repository's top-level ``configs/`` and ship inside the wheel as ``rnnbench/configs``; ``config_dir``
finds whichever exists, so the command works from any directory, editable install or wheel.

Errors a user can fix (a bad option, W&B unable to start) print one line and exit with status 2;
a job that fails while training exits with status 1 after recording the failure in its summary.json.
In a multirun, a failing job is recorded and reported in one line and the sweep goes on; the command
exits with status 1 at the end if any job failed.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from rnnbench.config import ConfigError, one_line, register_schemas

EXIT_USAGE = 2
EXIT_JOB_FAILED = 1
_failed_jobs: list[str] = []  # jobs of this multirun that failed (each recorded in its summary.json)
_jobs_started = 0  # how many jobs reached our code (an OSError before the first is Hydra making the run dir)


def config_dir() -> str:
    """The configs directory: inside the installed package (wheel) or at the repository's top level."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"rnnbench: no configs/config.yaml next to {here}: broken installation")


class SweepTable(Callback):
    """At the end of a multirun, print the comparison table of the sweep's jobs."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from rnnbench.report import collect, comparison_table

        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect([sweep_dir])
        if rows:
            print(f"\n{comparison_table(rows)}\n\nruns in {sweep_dir}", flush=True)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from rnnbench.job import run_job
    from rnnbench.logging import WandbError

    global _jobs_started
    _jobs_started += 1
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    group = Path(hc.sweep.dir).name if multirun else None
    names = {k: hc.runtime.choices.get(k) for k in ("cell", "task", "optim")}
    try:
        summary = run_job(cfg, Path(hc.runtime.output_dir), names=names, group=group)
    except (ConfigError, WandbError) as e:
        # Exit here rather than raise: Hydra would add a line of its own, and a bad option is the
        # user's to fix before any job of a sweep runs on.
        if os.environ.get("RNNBENCH_DEBUG") == "1":
            raise
        print(f"rnnbench: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except Exception as e:
        if not multirun or os.environ.get("RNNBENCH_DEBUG") == "1":
            raise
        # One job's failure must not end the sweep: its summary.json already says "failed" with the
        # error and traceback; say so in one line and go on to the next job.
        _failed_jobs.append(hc.runtime.output_dir)
        print(f"rnnbench: job {hc.job.num} failed: {type(e).__name__}: {one_line(e)} "
              f"(status and traceback in {hc.runtime.output_dir}/summary.json); the sweep goes on",
              file=sys.stderr, flush=True)
        return
    where = hc.runtime.output_dir
    if summary.get("skipped"):
        if summary.get("status") == "failed":  # failed earlier; it counts as a failure of this launch too
            _failed_jobs.append(where)
            job = f"job {hc.job.num}" if multirun else "the run"
            print(f"rnnbench: {job} failed earlier ({summary.get('error', 'see its summary.json')}); skipped, "
                  f"train.rerun_failed=true reruns it -> {where}", file=sys.stderr, flush=True)
        else:
            print(f"{summary.get('cell')} {summary.get('task')} T={summary.get('seq_len')}: {summary.get('status')} "
                  f"earlier; skipped -> {where}", flush=True)
        return
    seeds = summary["seeds"]
    losses = ", ".join(f"{s['eval_loss']:.4g}" if s["eval_loss"] is not None else "nan" for s in seeds)
    speed = f"{summary['steps_per_second']:.1f} steps/s" if summary["steps_per_second"] else "no training steps"
    print(f"{summary['cell']} {summary['task']} T={summary['seq_len']}: {summary['status']}, eval loss {losses} "
          f"(baseline {summary['baseline_loss']:.4g}), solved {sum(s['solved'] for s in seeds)}/{len(seeds)}, "
          f"{speed} -> {where}", flush=True)


def _usage_message(e: BaseException) -> str:
    """One line for the errors a user makes at composition time (Hydra's messages span lines)."""
    import dataclasses
    import re

    from hydra.errors import MissingConfigException

    from rnnbench.config import Config

    text = str(e)
    cause = one_line(e.__cause__) if e.__cause__ is not None else ""
    if isinstance(e, MissingConfigException) and e.missing_cfg_file:
        group, _, name = e.missing_cfg_file.rpartition("/")
        if group:
            return f"unknown {group} {name!r}; choose one of: {', '.join(e.options or [])}"
    if m := re.match(r"Could not override '([^']+)'", text):
        key = m.group(1)
        section = {f.name: f for f in dataclasses.fields(Config)}.get(key.split(".")[0])
        default = section.default_factory() if section and section.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            allowed = ", ".join(f.name for f in dataclasses.fields(default))
            return f"unknown config key {key!r}; {key.split('.')[0]} has: {allowed}"
        return f"unknown config key {key!r} (rnnbench --cfg job lists every key; + adds a new one)"
    if m := re.match(r"Error merging override (\S+)", text):
        return f"{m.group(1)}: {cause}" if cause else text
    return one_line(e)


def main() -> None:
    """Console script ``rnnbench``."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rnnbench.logging import WandbError

    register_schemas()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us, so we can say them in one line
    debug = os.environ.get("RNNBENCH_DEBUG") == "1"
    try:
        _hydra_main()
        if _failed_jobs:
            print(f"rnnbench: {len(_failed_jobs)} job(s) failed: {', '.join(_failed_jobs)}",
                  file=sys.stderr)
            sys.exit(EXIT_JOB_FAILED)
    except (ConfigError, WandbError) as e:
        if debug:
            raise
        print(f"rnnbench: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except (HydraException, OmegaConfBaseException) as e:
        if debug:
            raise
        print(f"rnnbench: error: {_usage_message(e)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt as e:  # status "interrupted" and a checkpoint are already written
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))
    except Exception as e:
        if debug:
            raise
        if isinstance(e, OSError) and not _jobs_started:  # Hydra makes the run directory before any job
            print(f"rnnbench: error: cannot create the output directory: {type(e).__name__}: {one_line(e)} "
                  "(set hydra.run.dir or hydra.sweep.dir to a writable place)", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        print(f"rnnbench: job failed: {type(e).__name__}: {one_line(e)} (RNNBENCH_DEBUG=1 for the traceback)",
              file=sys.stderr)
        sys.exit(EXIT_JOB_FAILED)



def _cells_parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="rnnbench-cells",
        description="List the cells (configs/cell/*.yaml) with their parameter counts at given sizes.")
    parser.add_argument("--input-size", type=int, default=1, help="input features D (default 1)")
    parser.add_argument("--hidden-size", type=int, default=64, help="hidden units H (default 64)")
    parser.add_argument("--output-size", type=int, default=1, help="readout outputs O (default 1)")
    parser.add_argument("--budget", type=int, default=None,
                        help="also show the hidden size model.param_budget=N would choose, and its count")
    parser.add_argument("cells", nargs="*", help="cell names (default: all)")
    return parser


def cells_main(argv: list[str] | None = None) -> None:
    """Console script ``rnnbench-cells``: the cell catalogue (``rnnbench/catalog.py``)."""
    args = _cells_parser().parse_args(argv)
    for flag in ("input_size", "hidden_size", "output_size", "budget"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            print(f"rnnbench-cells: error: --{flag.replace('_', '-')}={value} must be a positive integer",
                  file=sys.stderr)
            sys.exit(EXIT_USAGE)
    from rnnbench.catalog import catalog, cell_names, format_catalog

    known = cell_names(config_dir())
    unknown = [c for c in args.cells if c not in known]
    if unknown:
        print(f"rnnbench-cells: error: unknown cell {unknown[0]!r}; choose from: {', '.join(known)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sizes = {"input_dim": args.input_size, "hidden_size": args.hidden_size, "output_dim": args.output_size}
    try:
        rows = catalog(config_dir(), budget=args.budget, names=args.cells or None, **sizes)
    except (ConfigError, ValueError) as e:
        print(f"rnnbench-cells: error: {one_line(e)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    print(format_catalog(rows, budget=args.budget, **sizes))



if __name__ == "__main__":
    main()
