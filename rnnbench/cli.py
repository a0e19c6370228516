"""Thin Hydra entry point: ``rnnbench [overrides]`` and ``rnnbench -m [sweeps]``.

Only Hydra and OmegaConf load before a job starts, so ``rnnbench --help`` stays fast; JAX, optax and
W&B are imported by ``rnnbench.job`` once the config has been checked. The configs live in the
repository's top-level ``configs/`` and ship inside the wheel as ``rnnbench/configs``; ``config_dir``
finds whichever exists, so the command works from any directory, editable install or wheel.

Errors a user can fix (a bad option, W&B unable to start) print one line and exit with status 2;
a job that fails while training exits with status 1 after recording the failure in its summary.json.
In a multirun, a failing job is recorded and reported in one line and the sweep goes on. At the end,
the launching process reads every job's summary.json in the sweep directory, prints the comparison
table and exits with status 1 if any job did not finish: the same with any launcher, whether the jobs
ran in this process (Hydra's basic launcher) or in others (joblib, submitit: ``configs/hydra/launcher``),
whose module state this process never sees.
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
# Hydra's in-process launcher; every other launcher runs the jobs in processes of its own
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
PLUGIN_LAUNCHERS = ("joblib", "submitit_local", "submitit_slurm")  # the `launchers` extra's (pyproject.toml)
_sweep_failures = ""  # set by SweepTable at the end of a multirun with unfinished jobs: the line that says so
_jobs_started = 0  # how many jobs reached our code (an OSError before the first is Hydra making the run dir)


def config_dir() -> str:
    """The configs directory: inside the installed package (wheel) or at the repository's top level."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"rnnbench: no configs/config.yaml next to {here}: broken installation")


class SweepTable(Callback):
    """At the end of a multirun, print the comparison table of the sweep's jobs and note the unfinished ones.

    Hydra calls this in the launching process with any launcher, after every job has returned; it reads
    what the jobs wrote (their summary.json), so it does not matter which process ran them. It covers the
    whole sweep directory: jobs an earlier launch of the same sweep left there count too.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from rnnbench.report import collect, comparison_table

        global _sweep_failures
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect([sweep_dir])
        if rows:
            print(f"\n{comparison_table(rows)}\n\nruns in {sweep_dir}", flush=True)
        unfinished = _unfinished_jobs(sweep_dir, rows)
        if unfinished:
            more = f"; and {len(unfinished) - 5} more" if len(unfinished) > 5 else ""
            _sweep_failures = f"{len(unfinished)} job(s) failed: {'; '.join(unfinished[:5])}{more} -> {sweep_dir}"


def _unfinished_jobs(sweep_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """The sweep's jobs that did not run to their end, as ``job 1 (why)``: those whose summary.json says
    so, and the job directories (Hydra's ``.hydra`` inside) with none, whose job stopped before training."""
    from rnnbench.logging import FINISHED

    root = sweep_dir.resolve()
    unfinished = []
    for row in rows:
        status = row.get("status")
        if status == "failed":
            unfinished.append((row["path"], " ".join(str(row.get("error", "failed")).split())[:200]))
        elif status == "interrupted":
            unfinished.append((row["path"], "interrupted; the same command resumes it"))
        elif status in ("running", "stopped"):  # (report.collect: "stopped" when nobody holds its lock)
            unfinished.append((row["path"], "stopped without recording its end; the same command resumes it"))
        elif status not in FINISHED:
            unfinished.append((row["path"], str(row.get("error") or status)))
    recorded = {Path(row["path"]).resolve() for row in rows}
    for hydra_dir in sorted(sweep_dir.rglob(".hydra")):
        if hydra_dir.parent.resolve() not in recorded:
            unfinished.append((hydra_dir.parent, "no summary.json: it stopped before training; its error went to "
                                                 "its stderr"))
    return [f"job {Path(path).resolve().relative_to(root).as_posix()} ({why})" for path, why in unfinished]


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from rnnbench.job import run_job
    from rnnbench.logging import SUMMARY_FILE, WandbError

    global _jobs_started
    _jobs_started += 1
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    group = Path(hc.sweep.dir).name if multirun else None
    names = {k: hc.runtime.choices.get(k) for k in ("cell", "task", "optim")}
    try:
        summary = run_job(cfg, Path(hc.runtime.output_dir), names=names, group=group)
    except (ConfigError, WandbError) as e:
        # A bad option is the user's to fix before any job of a sweep runs on. In this process, exit
        # here rather than raise: Hydra would add a line of its own. In a launcher's worker (joblib,
        # submitit) raise: Hydra hands the error back to the launching process, whose main() says it
        # in one line (after Hydra's line naming the job), and an exit would only end the worker.
        if os.environ.get("RNNBENCH_DEBUG") == "1" or (multirun and hc.launcher._target_ != BASIC_LAUNCHER):
            raise
        print(f"rnnbench: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except Exception as e:
        if not multirun or os.environ.get("RNNBENCH_DEBUG") == "1":
            raise
        # One job's failure must not end the sweep: say so in one line and go on. Its summary.json
        # says "failed", with the error and traceback, if training had started; either way the end
        # of the multirun finds it (SweepTable), in this process or, with another launcher, in the parent.
        summary_path = Path(hc.runtime.output_dir) / SUMMARY_FILE
        where = (f"status and traceback in {summary_path}" if summary_path.exists()
                 else f"it stopped before writing {summary_path}")
        print(f"rnnbench: job {hc.job.num} failed: {type(e).__name__}: {one_line(e)} ({where}); the sweep goes on",
              file=sys.stderr, flush=True)
        return
    where = hc.runtime.output_dir
    if summary.get("skipped"):
        if summary.get("status") == "failed":  # failed earlier; it counts as a failure of this launch too
            job = f"job {hc.job.num}" if multirun else "the run"
            print(f"rnnbench: {job} failed earlier ({summary.get('error', 'see its summary.json')}); skipped, "
                  f"train.rerun_failed=true reruns it -> {where}", file=sys.stderr, flush=True)
            if not multirun:  # (a multirun's end finds it in its summary.json)
                sys.exit(EXIT_JOB_FAILED)
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
        if group == "hydra/launcher" and name in PLUGIN_LAUNCHERS:  # (also the base of local_parallel and slurm)
            return (f"hydra/launcher {name!r} is not installed: pip install 'rnnbench[launchers]' "
                    "(hydra-joblib-launcher, hydra-submitit-launcher)")
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
        if _sweep_failures:
            print(f"rnnbench: {_sweep_failures}", file=sys.stderr)
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
