"""Multiruns through other launchers (configs/hydra/launcher): jobs in other processes, same results.

With hydra-joblib-launcher and hydra-submitit-launcher the jobs run in worker processes, so the end of
the multirun (the table, the failed jobs, the exit status) must come from what the jobs wrote, not from
the launching process's memory. Each test runs ``python -m rnnbench`` in a subprocess, as a user does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from test_cli import TINY, rnnbench

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

SWEEP = [*TINY, "diagnostics.every=0", "train.progress=false"]


@pytest.fixture(autouse=True)
def _preset_defaults(monkeypatch):
    for name in ("RNNBENCH_JOBS", "PJRT_NPROC"):  # the presets' own defaults
        monkeypatch.delenv(name, raising=False)


def _jobs(sweep):
    return {p.name: json.loads((p / "summary.json").read_text()) for p in sorted(sweep.iterdir())
            if (p / "summary.json").exists()}


def _own_wandb_runs(sweep, jobs):
    """Each job's offline W&B run is in its own directory and is its own (even when a worker ran two jobs)."""
    run_ids = set()
    for n, job in jobs.items():
        (offline,) = (sweep / n / "wandb").glob("offline-run-*")
        assert job["wandb_run_id"] in offline.name
        run_ids.add(job["wandb_run_id"])
    assert len(run_ids) == len(jobs)


def _check_completed(sweep, out, cells):
    assert out.returncode == 0, (out.stdout, out.stderr)
    jobs = _jobs(sweep)
    assert [jobs[str(n)]["cell"] for n in range(len(cells))] == cells
    assert all(job["status"] == "completed" for job in jobs.values())
    _own_wandb_runs(sweep, jobs)
    assert out.stdout.count("| adding | 6 |") == len(cells)  # the table, printed by the launching process


def test_joblib_runs_the_jobs_in_parallel_processes_and_a_relaunch_skips_them(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=local_parallel", "cell=rnn,lstm", f"hydra.sweep.dir={sweep}", *SWEEP]
    out = rnnbench(*args, cwd=tmp_path)
    _check_completed(sweep, out, ["rnn", "lstm"])
    assert "Joblib.Parallel(n_jobs=2," in out.stdout

    again = rnnbench(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("completed earlier; skipped") == 2
    assert again.stdout.count("| completed |") == 2


def test_submitit_local_runs_the_jobs_and_the_table_is_printed(tmp_path):
    sweep = tmp_path / "sweep"
    out = rnnbench("-m", "hydra/launcher=submitit_local", "cell=rnn,lstm", f"hydra.sweep.dir={sweep}", *SWEEP,
                   cwd=tmp_path)
    _check_completed(sweep, out, ["rnn", "lstm"])
    assert (sweep / ".submitit").is_dir()


def test_failed_jobs_under_joblib_exit_1_and_are_named(tmp_path):
    # Real failures, not injected code (a worker would not see a monkeypatch): job 1 cannot write its
    # first checkpoint (a file stands where its checkpoints/ directory goes), so it fails while training
    # and records it; job 2 cannot write its config.yaml (a directory stands there), so it stops before
    # it has a summary.json. Every bad *option* is caught before training (test_cli's bad-input table).
    sweep = tmp_path / "sweep"
    (sweep / "1").mkdir(parents=True)
    (sweep / "1" / "checkpoints").write_text("in the way")
    (sweep / "2" / "config.yaml").mkdir(parents=True)
    args = ["-m", "hydra/launcher=local_parallel", "seed=0,1,2", f"hydra.sweep.dir={sweep}", *SWEEP]
    out = rnnbench(*args, cwd=tmp_path)  # 3 jobs on 2 workers: one worker runs two of them
    assert out.returncode == 1, (out.stdout, out.stderr)
    jobs = _jobs(sweep)
    assert (jobs["0"]["status"], jobs["1"]["status"]) == ("completed", "failed") and "2" not in jobs
    _own_wandb_runs(sweep, jobs)
    assert jobs["1"]["error"].startswith("FileExistsError") and "Traceback" in jobs["1"]["traceback"]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("rnnbench: 2 job(s) failed: job 1 (FileExistsError"), out.stderr
    assert "job 2 (no summary.json" in last and str(sweep) in last
    assert "| adding | 6 | lstm | - | failed |" in out.stdout  # the table lists the recorded failure


def test_bad_input_in_a_worker_is_one_clear_line_and_exit_2(tmp_path):
    sweep = tmp_path / "sweep"
    rest = [a for a in SWEEP if not a.startswith("task.seq_len=")]
    out = rnnbench("-m", "hydra/launcher=local_parallel", "task.seq_len=-5,-6", f"hydra.sweep.dir={sweep}",
                   "logger=none", *rest, cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    # Hydra names the job (its overrides), then the launching process says what is wrong, once
    assert out.stderr.strip().splitlines()[-1] == "rnnbench: error: task.seq_len=-5 must be a positive integer"
    assert "Traceback" not in out.stderr
    assert not (sweep / "0").exists() and not (sweep / "1").exists()  # nothing written for a bad job


def test_the_slurm_preset_composes_into_a_valid_sbatch_file(tmp_path):
    out = rnnbench("hydra/launcher=slurm", "--cfg", "hydra", "--resolve", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    hydra_cfg = yaml.safe_load(out.stdout)["hydra"]
    launcher = hydra_cfg["launcher"]
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["partition"], launcher["cpus_per_task"], launcher["array_parallelism"]) == (None, 4, 64)
    assert hydra_cfg["job"]["env_set"]["PJRT_NPROC"] == "4"
    # submitit accepts every parameter (it rejects unknown ones) and writes the sbatch file, as the plugin
    # would hand them over; there is no Slurm here, so a stand-in `srun` passes submitit's check for one
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    build = f"""
import submitit
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf
params = {{k: v for k, v in {launcher!r}.items() if k not in ("_target_", "submitit_folder")}}
base = set(OmegaConf.structured(BaseQueueConf).keys())
executor = submitit.AutoExecutor(folder={str(tmp_path / "submitit")!r}, cluster="slurm",
                                 slurm_max_num_timeout=params.pop("max_num_timeout"))
executor.update_parameters(**{{k if k in base else "slurm_" + k: v for k, v in params.items()}})
print(executor._executor._make_submission_file_text("python job.py", "0"))
"""
    sbatch = subprocess.run([sys.executable, "-c", build], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert sbatch.returncode == 0, sbatch.stderr
    for line in ("#SBATCH --cpus-per-task=4", "#SBATCH --gpus-per-node=1", "#SBATCH --mem=16GB",
                 "#SBATCH --time=240"):
        assert line in sbatch.stdout
    assert "--partition" not in sbatch.stdout  # null: the cluster's default


def test_a_launcher_whose_plugin_is_missing_is_one_line(tmp_path):
    hide = ("import sys; sys.modules['hydra_plugins.hydra_joblib_launcher'] = None; "  # as if not installed
            "sys.argv = ['rnnbench', *sys.argv[1:]]; from rnnbench.cli import main; main()")
    out = subprocess.run([sys.executable, "-c", hide, "-m", "hydra/launcher=local_parallel"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "rnnbench: error: hydra/launcher 'joblib' is not installed: pip install 'rnnbench[launchers]' "
        "(hydra-joblib-launcher, hydra-submitit-launcher)"]


def test_local_parallel_takes_its_job_count_from_the_environment(tmp_path):
    out = rnnbench("hydra/launcher=local_parallel", "--cfg", "hydra", "--resolve", cwd=tmp_path,
                   env={"RNNBENCH_JOBS": "3"})
    assert out.returncode == 0, out.stderr
    launcher = yaml.safe_load(out.stdout)["hydra"]["launcher"]
    assert launcher["_target_"] == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher["n_jobs"] == 3
