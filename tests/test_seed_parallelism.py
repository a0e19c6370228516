"""Seeds split across devices (``train.shard_seeds``): the same numbers as on one device, the state
really spread over the devices, resuming included.

JAX fixes its device count when it starts, so the sharded runs happen in one subprocess with two CPU
devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2``), which reports back as JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from rnnbench.cells.lstm import lstm
from rnnbench.model import make_model
from rnnbench.optim import adam
from rnnbench.tasks.adding import adding
from rnnbench.train import SEED_PARALLELISM, make_trainer, resolve_seed_parallelism, seed_keys, seed_mesh

# Runs in the subprocess: tiny models (hidden 4, seq_len 5, 10 steps) keep it to seconds of compiling.
TWO_DEVICES = r"""
import json

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_numpy_rank_promotion", "raise")

from rnnbench.cells.lstm import lstm
from rnnbench.model import make_model
from rnnbench.optim import adam
from rnnbench.tasks.adding import adding
from rnnbench.train import fit, seed_mesh

task = adding(5)
model = make_model(lstm, hidden_size=4, output_dim=task.output_dim, readout=task.readout)


def run(num_seeds, shard_seeds, mode="auto", restore=None):
    records, states = [], {}

    def on_checkpoint(step, state, loop):
        leaf = jax.tree.leaves(state.params)[0]
        states[step] = {"devices": sorted(d.id for d in leaf.sharding.device_set),
                        "shards": [[int(i.start or 0), int(i.stop or num_seeds)]
                                   for i in (s.index[0] for s in leaf.addressable_shards)],
                        "state": jax.device_get(state), "loop": json.loads(json.dumps(loop))}

    fit(model, task, adam(10, lr=1e-2), seed=0, num_seeds=num_seeds, steps=10, batch_size=8, eval_every=5,
        eval_size=16, seed_parallelism=mode, shard_seeds=shard_seeds, checkpoint_every=5,
        on_checkpoint=on_checkpoint, restore=restore, on_eval=lambda step, recs: records.extend(recs))
    numbers = [[r["step"], r["seed"], r["eval_loss"], r["train_loss"], r["l2_params"]] for r in records]
    return numbers, states


out = {"device_count": jax.device_count(),
       "mesh_4": seed_mesh(4) is not None, "mesh_3": seed_mesh(3) is not None, "mesh_4_off": seed_mesh(4, False)}
try:
    seed_mesh(3, True)
except ValueError as e:
    out["error_3"] = str(e)
out["one_device"], _ = run(4, False)
out["sharded"], states = run(4, None)
out["sharded_placement"] = {k: states[10][k] for k in ("devices", "shards")}
out["sharded_vmap"], states = run(2, True, "vmap")
half = states[5]
restore = lambda template: (jax.tree.map(jnp.asarray, half["state"]), half["loop"])
out["resumed"], states = run(2, True, "vmap", restore=restore)
out["resumed_placement"] = {k: states[10][k] for k in ("devices", "shards")}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def two_devices() -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-W", "error", "-c", TWO_DEVICES], env=env, capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def _close(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x[:2] == y[:2]  # step, seed
        for u, v in zip(x[2:], y[2:], strict=True):  # eval_loss, train_loss (None at step 0), l2_params
            assert u == (None if v is None else pytest.approx(v, rel=1e-5, abs=1e-7)), x[:2]


def test_seeds_are_sharded_only_when_they_divide_over_the_devices(two_devices):
    assert two_devices["device_count"] == 2
    assert two_devices["mesh_4"] and not two_devices["mesh_3"] and two_devices["mesh_4_off"] is None
    message = "train.shard_seeds=true needs train.num_seeds (3) to be a multiple of the 2 devices"
    assert two_devices["error_3"] == message


def test_sharded_seeds_equal_the_same_seeds_on_one_device(two_devices):
    _close(two_devices["sharded"], two_devices["one_device"])
    first_two = [r for r in two_devices["one_device"] if r[1] in (0, 1)]
    _close(two_devices["sharded_vmap"], first_two)


def test_the_trained_state_lives_on_both_devices(two_devices):
    assert two_devices["sharded_placement"] == {"devices": [0, 1], "shards": [[0, 2], [2, 4]]}
    assert two_devices["resumed_placement"] == {"devices": [0, 1], "shards": [[0, 1], [1, 2]]}


def test_a_sharded_run_resumes_from_a_checkpoint_with_the_same_numbers(two_devices):
    after = [r for r in two_devices["sharded_vmap"] if r[0] > 5]
    assert two_devices["resumed"] == after  # the same programs on the same devices: exactly equal


def test_one_device_never_needs_a_mesh_unless_asked():
    assert jax.device_count() == 1  # the test process itself has one CPU device
    assert seed_mesh(3) is None and seed_mesh(3, False) is None
    assert seed_mesh(3, True).devices.size == 1  # any K divides over one device


def test_the_init_never_runs_a_batched_qr():
    """Batched QRs (orthogonal init under vmap) side by side deadlocked XLA:CPU's thread pool: the init
    maps the seeds one after another in every mode, so each QR sees one [H, H] matrix."""
    task = adding(4)
    model = make_model(lstm, hidden_size=4, output_dim=task.output_dim, readout=task.readout)
    trainer = make_trainer(model, task, adam(10), batch_size=2, eval_size=2, seed_parallelism="vmap")
    keys = jax.tree.map(lambda *ks: jnp.stack(ks), *[seed_keys(s) for s in range(3)])
    qr = [line for line in str(jax.make_jaxpr(trainer.init)(keys)).splitlines() if "= qr[" in line]
    assert qr  # the LSTM's recurrent blocks are orthogonal
    for line in qr:
        assert all(shape.count(",") == 1 for shape in re.findall(r"f32\[([\d,]+)\]", line)), line


def test_auto_names_a_mode_on_every_backend_and_bad_modes_are_one_line_errors():
    for backend in ("cpu", "gpu", "tpu"):
        assert resolve_seed_parallelism("auto", backend) in SEED_PARALLELISM[1:]
    assert resolve_seed_parallelism("auto", "gpu") == "vmap"
    with pytest.raises(ValueError, match=r"^train.seed_parallelism='pmap' is not allowed; choose one of: auto, vmap"):
        resolve_seed_parallelism("pmap")


def test_the_command_refuses_seeds_that_cannot_be_split_before_any_work(tmp_path):
    from test_cli import rnnbench

    env = {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"}
    out = rnnbench("train.shard_seeds=true", "train.num_seeds=3", "hydra.run.dir=out/run", cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "rnnbench: error: train.shard_seeds=true needs train.num_seeds (3) to be a multiple of the 2 devices"]
    assert not (tmp_path / "out").exists()
