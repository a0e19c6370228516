"""Checkpoints of a run: bit-exact, written atomically, the last N kept.

A checkpoint is one file, ``checkpoints/ckpt_<step>.msgpack`` in the run directory, holding

    state   every leaf of the TrainState [K seeds, ...] (parameters, optimiser state, step), as raw
            bytes with dtype and shape (flax.serialization's msgpack), so a restored state is the
            saved one bit for bit
    loop    the loop's bookkeeping at that step (fit's solved/diverged steps, last evaluation, last
            diagnostics, timings, the W&B gradient-flow history), as JSON
    files   the byte sizes of metrics.jsonl and diagnostics.jsonl when it was written: a resumed run
            cuts those files back to these sizes, so each step is in them exactly once
    meta    format version, seeds, and the treedef of the state (a resume checks it)

The RNG state and the data stream position need no storage of their own: every batch and dropout
mask is drawn from ``fold_in(key, step)`` with keys derived from the seed, so the step *is* the
position in both streams.

Writing: a temporary file in the same directory, flushed and fsync'ed, then ``os.replace`` (atomic on
POSIX) and an fsync of the directory; a process killed at any moment leaves either the old set of
checkpoints or the new one, never a torn file. Older checkpoints beyond ``keep`` are deleted after the
new one is in place. A checkpoint that cannot be read (a disk error) is skipped for the one before it.

Why not orbax: it writes a directory per step through asynchronous threads and tensorstore, for
sharded arrays on many hosts; our states are small single-host pytrees, and one msgpack file with an
atomic rename gives the same guarantees with flax's own serializer and no extra dependency.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

log = logging.getLogger("rnnbench")

CHECKPOINT_DIR = "checkpoints"
FORMAT = 1
_NAME = re.compile(r"^ckpt_(\d{8,})\.msgpack$")
CRASH_ENV = "RNNBENCH_CRASH_AT"


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit this run (another model, optimiser or seeds); one line."""


class Checkpoint(NamedTuple):
    step: int
    path: Path
    leaves: list[np.ndarray]  # the TrainState's leaves, in jax.tree order
    treedef: str
    loop: dict[str, Any]
    files: dict[str, int]  # {file name: byte size} of the run's JSONL files at this step
    seeds: list[int]


def crash_point(name: str, step: int) -> None:
    """Fault injection for the kill-and-resume tests: SIGKILL this process at a named point.

    ``RNNBENCH_CRASH_AT=name:step`` (e.g. ``checkpoint_written:20``) kills the process the moment
    it reaches that point at that step, the way a pre-empted job dies: no handler, no cleanup.
    """
    if os.environ.get(CRASH_ENV) == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointManager:
    """Saves and finds the checkpoints of one run directory; keeps the newest ``keep``."""

    def __init__(self, run_dir: Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"train.keep_checkpoints={keep} must be at least 1")
        self.directory = Path(run_dir) / CHECKPOINT_DIR
        self.keep = keep

    def steps(self) -> list[int]:
        """Steps with a checkpoint on disk, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name)))

    def path(self, step: int) -> Path:
        return self.directory / f"ckpt_{step:08d}.msgpack"

    def save(self, step: int, state: Any, loop: dict[str, Any], files: dict[str, int], seeds: list[int]) -> Path:
        """Write the checkpoint of ``step`` atomically, then delete all but the newest ``keep``."""
        import jax
        from flax import serialization

        leaves, treedef = jax.tree.flatten(jax.device_get(state))
        payload = serialization.msgpack_serialize({
            "format": FORMAT, "step": int(step), "seeds": [int(s) for s in seeds], "treedef": str(treedef),
            "leaves": {str(i): np.asarray(leaf) for i, leaf in enumerate(leaves)},
            # NaN is a legal value of the bookkeeping (a diverged seed's last loss): Python's json keeps it
            "loop": json.dumps(loop), "files": {k: int(v) for k, v in files.items()},
        })
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(step)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it private
            crash_point("checkpoint_unrenamed", step)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)
        crash_point("checkpoint_written", step)
        for old in self.steps()[:-self.keep]:
            self.path(old).unlink(missing_ok=True)
        for stale in self.directory.glob(".ckpt_*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        return target

    def read(self, step: int) -> Checkpoint:
        from flax import serialization

        path = self.path(step)
        raw = serialization.msgpack_restore(path.read_bytes())
        if raw.get("format") != FORMAT:
            raise CheckpointError(f"{path}: checkpoint format {raw.get('format')!r}, this version reads {FORMAT}")
        leaves = [raw["leaves"][str(i)] for i in range(len(raw["leaves"]))]
        return Checkpoint(step=int(raw["step"]), path=path, leaves=leaves, treedef=raw["treedef"],
                          loop=json.loads(raw["loop"]), files=dict(raw["files"]), seeds=list(raw["seeds"]))

    def latest(self) -> Checkpoint | None:
        """The newest readable checkpoint, or None when there is none."""
        for step in reversed(self.steps()):
            try:
                return self.read(step)
            except CheckpointError:
                raise
            except Exception as e:  # unreadable (a disk error, a file cut short by hand): try the previous one
                log.warning("checkpoint %s is unreadable (%s: %s); trying the one before it",
                            self.path(step), type(e).__name__, e)
        return None


def restore_state(ckpt: Checkpoint, template: Any, seeds: list[int]) -> Any:
    """The checkpoint's state, with ``template``'s structure (a freshly initialised TrainState [K, ...]).

    Refuses, in one line, a checkpoint of other seeds, another treedef (cell, optimiser) or other
    leaf shapes and dtypes: resuming it would silently train something else.
    """
    import jax
    import jax.numpy as jnp

    if list(ckpt.seeds) != list(seeds):
        raise CheckpointError(f"{ckpt.path} holds seeds {ckpt.seeds}, this run trains seeds {seeds}")
    leaves, treedef = jax.tree.flatten(template)
    if str(treedef) != ckpt.treedef or len(leaves) != len(ckpt.leaves):
        raise CheckpointError(f"{ckpt.path} holds another model or optimiser state than this run builds")
    for i, (want, got) in enumerate(zip(leaves, ckpt.leaves, strict=True)):
        if tuple(want.shape) != tuple(got.shape) or np.dtype(want.dtype) != got.dtype:
            raise CheckpointError(f"{ckpt.path}: state leaf {i} is {got.dtype}{list(got.shape)}, "
                                  f"this run builds {np.dtype(want.dtype)}{list(want.shape)}")
    return jax.tree.unflatten(treedef, [jnp.asarray(a) for a in ckpt.leaves])
