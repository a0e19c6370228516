"""The ``rnnbench`` command, run as a user runs it: in a subprocess, from another directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["task.seq_len=6", "model.hidden_size=4", "train.steps=20", "train.eval_every=10",
        "train.batch_size=8", "train.eval_size=16"]
SUMMARY_KEYS = {"status", "cell", "task", "seq_len", "num_params", "baseline_loss", "steps", "steps_per_second",
                "compile_seconds", "wall_seconds", "seeds"}
SEED_KEYS = {"seed", "eval_loss", "eval_metric", "solved", "solved_at_step"}
RECORD_KEYS = {"step", "seed", "train_loss", "eval_loss", "eval_metric", "grad_norm", "wall_time"}


def rnnbench(*args: str, cwd: Path, env: dict[str, str] | None = None, python: str = sys.executable):
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    full_env.pop("WANDB_MODE", None)  # the product's own default (offline) unless a test sets it
    if env and "WANDB_MODE" in env:
        full_env["WANDB_MODE"] = env["WANDB_MODE"]
    return subprocess.run([python, "-m", "rnnbench", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=300)


def test_help_lists_the_groups_without_importing_jax(tmp_path):
    out = rnnbench("--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ("bilstm", "copy", "rmsprop", "wandb"):
        assert name in out.stdout


def test_a_single_run_writes_its_files_and_an_offline_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    out = rnnbench("cell=gru", "task=copy", "seed=3", "train.num_seeds=2", f"hydra.run.dir={run_dir}", *TINY,
                   cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert (summary["status"], summary["cell"], summary["task"], summary["seq_len"]) == ("completed", "gru", "copy", 6)
    assert [s["seed"] for s in summary["seeds"]] == [3, 4]
    assert all(SEED_KEYS <= s.keys() for s in summary["seeds"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["seed"]) for r in records] == [(s, k) for s in (0, 10, 20) for k in (3, 4)]
    assert all(RECORD_KEYS <= r.keys() for r in records)
    # the summary's final losses are the last records'
    assert [s["eval_loss"] for s in summary["seeds"]] == [r["eval_loss"] for r in records[-2:]]
    # gradient diagnostics at the start and the end (diagnostics.every=500 > steps), per seed
    diagnostics = [json.loads(line) for line in (run_dir / "diagnostics.jsonl").read_text().splitlines()]
    assert [(d["step"], d["seed"]) for d in diagnostics] == [(0, 3), (0, 4), (20, 3), (20, 4)]
    assert all(len(d["grad_norm_per_step"]) == 6 + 2 * 10 for d in diagnostics)  # copy: T + 2 * copy_len steps
    assert [s["grad_horizon"] for s in summary["seeds"]] == [d["grad_horizon"] for d in diagnostics[-2:]]
    assert [s["grad_decay_rate"] for s in summary["seeds"]] == [d["grad_decay_rate"] for d in diagnostics[-2:]]
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
    assert summary["wandb_run_id"] in offline[0].name
    # read the W&B run back with W&B's own tool: config, metrics and the diagnostics plots are in it
    (log,) = offline[0].glob("run-*.wandb")
    wandb_cli = Path(sys.executable).with_name("wandb")
    inspect = subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json", str(log)],
                             capture_output=True, text=True, timeout=120, check=True)
    logged = json.loads(inspect.stdout)
    assert {"seed3/eval_loss", "seed4/grad_horizon", "grad_horizon", "gradient_flow/curve_table",
            "gradient_flow/over_training"} <= set(logged["summary"])
    assert logged["summary"]["seed4/eval_loss"] == pytest.approx(summary["seeds"][1]["eval_loss"])
    assert "gru copy T=6: completed" in out.stdout


def test_multirun_gives_each_job_its_own_wandb_run(tmp_path):
    sweep = tmp_path / "sweep"
    out = rnnbench("-m", "cell=rnn,lstm", f"hydra.sweep.dir={sweep}", "diagnostics.every=0", *TINY, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    jobs = sorted(p for p in sweep.iterdir() if (p / "summary.json").exists())
    assert len(jobs) == 2
    cells, run_ids = [], []
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        cells.append(summary["cell"])
        run_ids.append(summary["wandb_run_id"])
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1
        assert not (job / "diagnostics.jsonl").exists()  # diagnostics.every=0 turns them off
    assert cells == ["rnn", "lstm"]
    assert len(set(run_ids)) == 2
    # the comparison table printed at the end of the sweep has one row per job
    assert out.stdout.count("| adding | 6 |") == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["cell=foo"], "foo"),
        (["task=nope"], "nope"),
        (["task.seq_len=-5"], "task.seq_len=-5"),
        (["model.hidden_size=0"], "model.hidden_size=0"),
        (["model.hiden_size=3"], "hiden_size"),
        (["logger.mode=ofline"], "ofline"),
        (["seed=1.5"], "1.5"),
        (["optim.lr=abc"], "abc"),
        (["train.steps=0"], "train.steps=0"),
        (["cell.forget_bias=abc"], "abc"),
        (["diagnostics.every=-1"], "diagnostics.every=-1"),
        (["diagnostics.horizon_threshold=2"], "diagnostics.horizon_threshold=2"),
        (["cell=lru", "cell.mode=fast"], "cell.mode='fast' is not allowed; choose one of: auto, parallel, sequential"),
        (["cell=mut1", "cell.variant=4"], "cell.variant=4"),
        (["cell=janet", "cell.chrono_t_max=2"], "cell.chrono_t_max=2"),
        (["model.param_budget=0"], "model.param_budget=0"),
        (["task.length_range=[5,2]"], "task.length_range=[5, 2]"),
        (["eval.seq_lens=[0]"], "eval.seq_lens=[0]"),
        (["task=digits", "eval.seq_lens=[128]"], "is not possible for task 'digits'"),
        (["task=reber", "task.length_range=[5,9]"], "task.length_range"),
        (["task=assoc_recall", "task.seq_len=10"], "task.seq_len=10"),
        (["cell=lru", "cell.r_max=1.5"], "r_max=1.5"),
        (["hydra.run.dir=/dev/null/run"], "cannot create the output directory"),
        (["train.checkpoint_every=-1"], "train.checkpoint_every=-1 must be >= 0"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, args, needle):
    out = rnnbench("hydra.run.dir=out/run", *args, cwd=tmp_path)  # (a later hydra.run.dir wins)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("rnnbench: error:") and needle in lines[0]
    assert not list(tmp_path.rglob("summary.json"))
    assert not (tmp_path / "out" / "run").exists()


def test_wandb_mode_from_the_environment_is_checked(tmp_path):
    out = rnnbench("hydra.run.dir=out/run", cwd=tmp_path, env={"WANDB_MODE": "ofline"})
    assert out.returncode == 2
    assert "ofline" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_online_mode_without_a_key_fails_fast(tmp_path):
    env = {"WANDB_API_KEY": "", "NETRC": str(tmp_path / "no-netrc"), "HOME": str(tmp_path)}
    out = rnnbench("logger.mode=online", "hydra.run.dir=out/run", *TINY, cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert "logger.mode=online needs a W&B API key" in out.stderr
    assert not (tmp_path / "out" / "run").exists()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(REPO)], check=True, capture_output=True, timeout=300)
    (whl,) = dist.glob("rnnbench-*.whl")
    return whl


def test_the_wheel_ships_the_configs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    ours = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))
    assert ours and all(f"rnnbench/{name}" in names for name in ours)


def test_a_run_from_the_installed_wheel_in_another_directory(tmp_path, wheel):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {"PYTHONPATH": str(target), "WANDB_MODE": "disabled"}
    where = subprocess.run([sys.executable, "-c", "import rnnbench.cli as c; print(c.__file__, c.config_dir())"],
                           cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, check=True)
    module, configs = where.stdout.split()
    assert module.startswith(str(target)) and configs == str(target / "rnnbench" / "configs")
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = rnnbench("cell=bilstm", *TINY, cwd=work, env=env)
    assert out.returncode == 0, out.stderr
    (summary,) = work.rglob("summary.json")
    assert json.loads(summary.read_text())["status"] == "completed"


FAILING_JOB = """
import sys
import rnnbench.train as train
real_fit = train.fit
def fit(model, task, *args, **kwargs):  # the job with seq_len 7 fails while training
    if task.seq_len == 7:
        raise RuntimeError("injected failure")
    return real_fit(model, task, *args, **kwargs)
train.fit = fit
from rnnbench.cli import main
sys.argv = ["rnnbench", *sys.argv[1:]]
main()
"""


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    script = tmp_path / "failing_job.py"
    script.write_text(FAILING_JOB)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("RNNBENCH_DEBUG", None)
    args = ["-m", "task.seq_len=6,7,8", "train.steps=2", "train.eval_every=2", "train.eval_size=8",
            "diagnostics.every=0", "logger=none", "hydra.sweep.dir=sweep"]
    out = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 1, (out.stdout, out.stderr)
    statuses = {n: json.loads((tmp_path / "sweep" / str(n) / "summary.json").read_text()) for n in range(3)}
    assert [statuses[n]["status"] for n in range(3)] == ["completed", "failed", "completed"]
    assert statuses[1]["error"] == "RuntimeError: injected failure" and "Traceback" in statuses[1]["traceback"]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("rnnbench:")]
    assert len(errors) == 2 and "job 1 failed: RuntimeError: injected failure" in errors[0], out.stderr
    assert "1 job(s) failed" in errors[1]
    assert "| adding | 7 | lstm | - | failed |" in out.stdout  # the sweep's table lists it

    # Re-launched: the finished jobs are skipped, and so is the failed one unless asked to rerun it.
    out = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stdout.count("completed earlier; skipped") == 2
    assert ("job 1 failed earlier (RuntimeError: injected failure); skipped, train.rerun_failed=true reruns it"
            in out.stderr)
    rerun = rnnbench(*args, "train.rerun_failed=true", cwd=tmp_path, env={"WANDB_MODE": "disabled"})  # fixed now
    assert rerun.returncode == 0, rerun.stderr
    job1 = json.loads((tmp_path / "sweep" / "1" / "summary.json").read_text())
    assert job1["status"] == "completed" and "error" not in job1
