"""Checkpoints and resuming: the file is bit-exact, the loop resumes in process, and the command,
killed with SIGKILL at several points or stopped with Ctrl-C, finishes bit-identical to a run that
was never stopped; a re-launched sweep skips what is done and resumes what is not."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_cli import rnnbench
from test_train import _blow_up_where_readout_starts_positive, _setup

from rnnbench.checkpoint import CheckpointError, CheckpointManager, restore_state
from rnnbench.job import StopRequest
from rnnbench.optim import adam
from rnnbench.tasks.adding import adding
from rnnbench.train import Interrupted, TrainState, fit, seed_keys

# --- the checkpoint file ---------------------------------------------------------------------------


def _state(seeds=(0, 1), hidden=4, optimizer=None):
    """A TrainState [K, ...] as fit builds it, with awkward values: NaN, -0.0, a subnormal, bools, ints."""
    task = adding(5)
    model = _setup(task, hidden=hidden)
    optimizer = optimizer or optax.apply_if_finite(optax.adam(1e-3), 3)

    def one(seed):
        params = model.init(seed_keys(seed).init, task.input_dim)
        return TrainState(params, optimizer.init(params), jnp.asarray(7, jnp.int32))

    state = jax.tree.map(lambda *xs: jnp.stack(xs), *[one(s) for s in seeds])
    w = state.params["readout"]["w"]
    w = w.at[0, 0, 0].set(jnp.nan).at[0, 1, 0].set(-0.0).at[1, 0, 0].set(np.float32(1e-44))
    return state._replace(params={**state.params, "readout": {**state.params["readout"], "w": w}})


def test_a_checkpoint_restores_every_leaf_bit_for_bit(tmp_path):
    state = _state()
    loop = {"step": 7, "last_eval": [[float("nan"), 0.5]], "solved_at": [None, 3], "frozen": [True, False]}
    manager = CheckpointManager(tmp_path, keep=2)
    manager.save(7, state, loop, {"metrics.jsonl": 123}, seeds=[0, 1])
    ckpt = manager.latest()
    assert (ckpt.step, ckpt.files, ckpt.seeds) == (7, {"metrics.jsonl": 123}, [0, 1])
    assert json.dumps(ckpt.loop) == json.dumps(loop)  # NaN and None survive
    template = jax.tree.map(jnp.zeros_like, state)
    restored = restore_state(ckpt, template, [0, 1])
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for want, got in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        want, got = np.asarray(want), np.asarray(got)
        assert want.dtype == got.dtype and want.shape == got.shape and want.tobytes() == got.tobytes()
    assert {np.asarray(x).dtype.kind for x in jax.tree.leaves(state)} >= {"f", "i", "b"}  # the awkward leaves exist


def test_only_the_newest_are_kept_and_a_torn_or_unreadable_file_is_passed_over(tmp_path, caplog):
    state, manager = _state(), CheckpointManager(tmp_path, keep=2)
    for step in (10, 20, 30):
        manager.save(step, state, {"step": step}, {}, seeds=[0, 1])
    assert manager.steps() == [20, 30]
    # a process killed inside the atomic write leaves a temporary file, never a checkpoint
    (manager.directory / ".ckpt_00000040.msgpack.abc.tmp").write_bytes(b"half a checkpoint")
    assert manager.steps() == [20, 30] and manager.latest().step == 30
    manager.save(40, state, {"step": 40}, {}, seeds=[0, 1])
    assert manager.steps() == [30, 40] and not list(manager.directory.glob("*.tmp"))
    # a newest file damaged outside our control: the one before it is used, with a warning
    newest = manager.path(40)
    newest.write_bytes(newest.read_bytes()[:100])
    assert manager.latest().step == 30
    assert "ckpt_00000040.msgpack is unreadable" in caplog.text
    with pytest.raises(ValueError, match=r"train\.keep_checkpoints=0"):
        CheckpointManager(tmp_path, keep=0)


@pytest.mark.parametrize(
    "other, needle",
    [
        (dict(seeds=(0, 2)), "holds seeds [0, 1], this run trains seeds [0, 2]"),
        (dict(hidden=5), "state leaf"),
        (dict(optimizer=optax.sgd(0.1)), "another model or optimiser state"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused(tmp_path, other, needle):
    manager = CheckpointManager(tmp_path)
    manager.save(7, _state(), {}, {}, seeds=[0, 1])
    template = _state(**other)
    with pytest.raises(CheckpointError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        restore_state(manager.latest(), template, list(other.get("seeds", (0, 1))))


# --- the loop, resumed in process --------------------------------------------------------------------


def _run(task, model, opt, restore=None, should_stop=None, **kw):
    """fit with everything it reports collected: eval and diagnostics records, checkpoints."""
    records, diags, checkpoints = [], [], {}

    def on_checkpoint(step, state, loop):
        checkpoints[step] = (jax.device_get(state), json.loads(json.dumps(loop)))  # as a file would hold it

    args = dict(seed=0, num_seeds=2, steps=50, batch_size=16, eval_every=10, eval_size=64, checkpoint_every=20,
                diagnostics_every=20, diagnostics_batch=8)
    args.update(kw)
    result = fit(model, task, opt, on_eval=lambda s, r: records.extend(r), on_diagnostics=lambda s, r: diags.extend(r),
                 on_checkpoint=on_checkpoint, restore=restore, should_stop=should_stop, **args)
    return result, records, diags, checkpoints


def _without_time(records):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in records]


def _equal_results(a, b):
    assert (a.seeds, a.steps, a.diverged, a.num_params) == (b.seeds, b.steps, b.diverged, b.num_params)


@pytest.mark.parametrize("case, resume_at", [("adam", (20, 50)), ("one seed diverges", (20,))])
def test_the_loop_resumed_from_a_checkpoint_gives_the_same_numbers(case, resume_at):
    task = adding(5)
    model = _setup(task)
    if case == "adam":
        opt, seed = adam(total_steps=50, lr=1e-2, schedule="cosine", warmup_steps=5), 0  # the schedule resumes too
    else:  # seed pairs where exactly one seed's first update is infinite: it diverges, the other trains on
        opt = _blow_up_where_readout_starts_positive(0.05)
        first = [float(model.init(seed_keys(s).init, task.input_dim)["readout"]["w"][0, 0]) > 0 for s in range(20)]
        seed = next(s for s in range(19) if first[s] != first[s + 1])
    full, records, diags, checkpoints = _run(task, model, opt, seed=seed)
    assert sorted(checkpoints) == [20, 40, 50]  # every checkpoint_every steps, and at the end
    assert full.diverged == (case != "adam")
    assert all(loop["step"] == step for step, (_, loop) in checkpoints.items())
    for step in resume_at:  # mid-run, and the final checkpoint (a run killed before its summary was written)
        state, loop = checkpoints[step]
        resumed, rec2, diag2, _ = _run(task, model, opt, seed=seed,
                                       restore=lambda template, s=state, lp=loop: (jax.tree.map(jnp.asarray, s), lp))
        assert _without_time(rec2) == _without_time([r for r in records if r["step"] > step])
        assert diag2 == [d for d in diags if d["step"] > step]
        _equal_results(resumed, full)


def test_a_stop_request_checkpoints_that_step_and_raises_interrupted():
    task = adding(5)
    polls, saved = iter([0, signal.SIGTERM]), []
    with pytest.raises(Interrupted) as stopped:
        fit(_setup(task), task, adam(50, lr=1e-2), seed=0, num_seeds=1, steps=50, batch_size=8, eval_every=10,
            eval_size=16, checkpoint_every=1000, should_stop=lambda: next(polls),
            on_checkpoint=lambda step, state, loop: saved.append((step, loop["step"], int(state.step[0]))))
    assert (stopped.value.step, stopped.value.signum) == (20, signal.SIGTERM)
    assert saved == [(20, 20, 20)]  # the state and bookkeeping of the step it stopped at


def test_a_stop_request_is_set_by_the_first_signal_and_the_second_stops_at_once():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert stop() == 0
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() == signal.SIGTERM  # noted, nothing raised: the loop checkpoints and stops
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers restored


# --- the command: killed, interrupted, re-launched ----------------------------------------------------

RUN = ["task.seq_len=6", "model.hidden_size=4", "train.batch_size=8", "train.eval_size=16", "train.num_seeds=2",
       "train.eval_every=10", "train.checkpoint_every=20", "diagnostics.every=20", "diagnostics.batch_size=4"]
LIGHT = [*RUN, "diagnostics.every=0", "logger=none"]  # where diagnostics and W&B are not the point


def _outputs(run_dir: Path):
    """Everything a run wrote that must be bit-identical (wall times and timings aside)."""
    def jsonl(name):
        return _without_time([json.loads(line) for line in (run_dir / name).read_text().splitlines()])

    summary = json.loads((run_dir / "summary.json").read_text())
    return jsonl("metrics.jsonl"), jsonl("diagnostics.jsonl"), summary["seeds"], summary["status"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One run of RUN with 300 steps, never stopped."""
    where = tmp_path_factory.mktemp("reference")
    out = rnnbench(*RUN, "train.steps=300", "logger=none", f"hydra.run.dir={where / 'run'}", cwd=where)
    assert out.returncode == 0, out.stderr
    return _outputs(where / "run")


def _offline_ids(run_dir: Path) -> set[str]:
    return {p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")}


def test_killed_at_several_points_and_resumed_the_run_is_bit_identical(tmp_path, reference):
    """SIGKILL (RNNBENCH_CRASH_AT) before the first checkpoint, between checkpoints, inside the atomic
    write of one and right after it: each time the same command resumes, and the end is the same."""
    run_dir = tmp_path / "run"
    cmd = [*RUN, "train.steps=300", f"hydra.run.dir={run_dir}"]  # W&B offline: the run id must carry over
    # checkpoints every 20 steps, the newest 2 kept: each kill resumes from the newest one on disk
    for crash, checkpoints in [("metrics_written:0", []), ("metrics_written:70", [40, 60]),
                               ("checkpoint_unrenamed:100", [60, 80]), ("checkpoint_written:100", [60, 80, 100])]:
        out = rnnbench(*cmd, cwd=tmp_path, env={"RNNBENCH_CRASH_AT": crash})
        assert out.returncode == -signal.SIGKILL, (crash, out.stderr)
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"  # no chance to say more
        assert CheckpointManager(run_dir).steps() == checkpoints, crash
    assert len(list((run_dir / "checkpoints").glob("*.tmp"))) == 1  # the torn write of step 100, never a checkpoint
    out = rnnbench(*cmd, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_at_steps"] == [0, 60, 80, 100]
    metrics, diags, seeds, status = _outputs(run_dir)
    assert (metrics, diags, seeds, status) == reference  # each step exactly once, every number the same
    segments = list((run_dir / "wandb").glob("offline-run-*"))  # one per process, all with the run's id
    assert len(segments) == 5 and _offline_ids(run_dir) == {summary["wandb_run_id"]}
    assert CheckpointManager(run_dir).steps() == [280, 300] and not list((run_dir / "checkpoints").glob("*.tmp"))


def _start(args, cwd):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "offline"}
    return subprocess.Popen([sys.executable, "-m", "rnnbench", *args], cwd=cwd, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _step(line: str) -> int:
    try:
        return json.loads(line)["step"]
    except ValueError:  # a line being written
        return -1


def _wait_for_step(proc, run_dir: Path, step: int, timeout: float = 240) -> None:
    """Until metrics.jsonl has a record past ``step`` (the run is mid-training)."""
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if any(_step(line) > step for line in lines):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError(f"no step past {step} within {timeout} s")


def test_ctrl_c_checkpoints_and_a_kill_at_any_moment_loses_nothing(tmp_path, reference):
    run_dir = tmp_path / "run"
    args = [*RUN, "train.steps=300", f"hydra.run.dir={run_dir}"]
    proc = _start(args, tmp_path)
    _wait_for_step(proc, run_dir, 30)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    stopped = summary["steps"]
    assert 30 < stopped < 300 and summary["checkpoint_step"] == stopped == CheckpointManager(run_dir).steps()[-1]
    assert f"resumes from the checkpoint of step {stopped}" in err
    # the W&B run was closed cleanly, with the summary in it
    (log,) = next((run_dir / "wandb").glob("offline-run-*")).glob("run-*.wandb")
    inspect = subprocess.run([str(Path(sys.executable).with_name("wandb")), "leet", "inspect", "--summary", "--json",
                              str(log)], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(inspect.stdout)["summary"]["status"] == "interrupted"

    proc = _start(args, tmp_path)  # resumed, then killed at whatever moment the poll lands on
    _wait_for_step(proc, run_dir, stopped + 50)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    out = rnnbench(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert _outputs(run_dir) == reference
    assert json.loads((run_dir / "summary.json").read_text())["resumed_at_steps"][0] == stopped


def test_a_relaunched_sweep_skips_finished_jobs_and_resumes_the_killed_one(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "train.steps=20,40", *LIGHT, f"hydra.sweep.dir={sweep}"]
    out = rnnbench(*args, cwd=tmp_path, env={"RNNBENCH_CRASH_AT": "metrics_written:30"})  # only job 1 gets there
    assert out.returncode == -signal.SIGKILL
    assert [json.loads((sweep / str(n) / "summary.json").read_text())["status"] for n in (0, 1)] == \
        ["completed", "running"]
    first = {p.name: p.read_bytes() for p in (sweep / "0").iterdir() if p.is_file()}
    out = rnnbench(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "lstm adding T=6: completed earlier; skipped" in out.stdout
    assert {p.name: p.read_bytes() for p in (sweep / "0").iterdir() if p.is_file() and p.name != "rnnbench.log"} == \
        {k: v for k, v in first.items() if k != "rnnbench.log"}  # the finished job is left as it was
    job1 = json.loads((sweep / "1" / "summary.json").read_text())
    assert (job1["status"], job1["steps"], job1["resumed_at_steps"]) == ("completed", 40, [20])
    steps = [json.loads(line)["step"] for line in (sweep / "1" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [s for s in range(0, 41, 10) for _ in range(2)]  # each step once, both seeds
    assert "| adding | 6 | lstm |" in out.stdout  # the table covers the skipped job too


def test_resuming_with_another_config_or_while_another_process_runs_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    args = [*LIGHT, "train.steps=20", f"hydra.run.dir={run_dir}"]
    assert rnnbench(*args, cwd=tmp_path).returncode == 0
    before = (run_dir / "metrics.jsonl").read_bytes()
    out = rnnbench(*args, "train.steps=30", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"rnnbench: error: cannot resume {run_dir}: train.steps=30 differs from the run's 20 (its config.yaml); "
        "rerun with the run's own settings or choose another hydra.run.dir / hydra.sweep.dir"]
    # keys that change only how a run is shown or stored may differ: the finished run is just skipped
    out = rnnbench(*args, "train.progress=false", "train.keep_checkpoints=5", cwd=tmp_path)
    assert out.returncode == 0 and "completed earlier; skipped" in out.stdout
    # a run made before an upgrade added an option (its config.yaml lacks the key, and has one since
    # removed): the finished run is skipped, so a sweep begun before the upgrade can be finished
    config = (run_dir / "config.yaml").read_text()
    assert "\n  bidirectional: false\n" in config  # (the cell's, as an example of a key a version may add)
    (run_dir / "config.yaml").write_text(config.replace("\n  bidirectional: false\n", "\n  retired_option: 3\n"))
    out = rnnbench(*args, cwd=tmp_path)
    assert out.returncode == 0 and "completed earlier; skipped" in out.stdout, out.stderr
    # but a key both configs have must still match, and a run that would resume is held to every key
    out = rnnbench(*args, "train.steps=30", cwd=tmp_path)
    assert out.returncode == 2 and "train.steps=30 differs" in out.stderr
    (run_dir / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    out = rnnbench(*args, cwd=tmp_path)
    assert out.returncode == 2 and "cannot resume" in out.stderr and "bidirectional=False differs" in out.stderr, \
        out.stderr
    (run_dir / "config.yaml").write_text(config)
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))
    with open(run_dir / ".lock") as held:  # another process holds the run directory
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        (run_dir / "summary.json").write_text(json.dumps({"status": "running"}))
        out = rnnbench(*args, cwd=tmp_path)
    assert out.returncode == 2 and "is in use by another rnnbench process" in out.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == before  # nothing touched


def test_online_wandb_without_network_fails_in_seconds_or_falls_back_to_offline(tmp_path):
    env = {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",  # a closed port: refused at once
           **{v: "" for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")}}
    t0 = time.monotonic()
    out = rnnbench("logger.mode=online", "hydra.run.dir=out/run", "train.steps=10", *RUN, "diagnostics.every=0",
                   cwd=tmp_path, env=env)
    assert out.returncode == 2 and time.monotonic() - t0 < 30
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("rnnbench: error: logger.mode=online: cannot reach 127.0.0.1:9")
    assert "fallback_offline" in line
    assert not (tmp_path / "out").exists()
    out = rnnbench("logger.mode=online", "logger.fallback_offline=true", "hydra.run.dir=out/run", "train.steps=10",
                   *RUN, "diagnostics.every=0", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "logging offline instead" in out.stdout + out.stderr  # Hydra's job log prints to stdout
    assert len(list((tmp_path / "out" / "run" / "wandb").glob("offline-run-*"))) == 1
