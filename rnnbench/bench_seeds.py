"""What K seeds in one program cost against K separate runs, per ``train.seed_parallelism`` mode.

Behind ``train.seed_parallelism=auto`` (``train.SEED_PARALLELISM_AUTO``): for LSTM and GRU it times
one compiled chunk of training steps exactly as ``train.fit`` runs it (``make_trainer`` on the adding
task: batches drawn on device, forward, backward, Adam) for K seeds in each mode, and prints ms per
step for all K seeds beside ``K x`` the time of one seed trained alone (the one-seed program, no
mapping: what K separate runs cost). Modes and repeats are interleaved so that the noise of a shared
machine hits all of them alike; compare ratios measured in one run.
Usage: ``python -m rnnbench.bench_seeds [--shape T|S] [--seeds 1,4,8] [--repeats N] [--steps N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

SHAPES = {"T": (16, 100, 32), "S": (64, 100, 128)}  # (batch, seq_len, hidden)
MODES = ("vmap", "map", "loop")
STEPS = {"T": 20, "S": 4}  # training steps per timed chunk: about 50-100 ms per seed on 2 cores


def _chunk_runner(cell_factory, shape: tuple[int, int, int], num_seeds: int, mode: str,
                  steps: int) -> tuple[Callable[[], None], float]:
    """A closure that runs one chunk of ``steps`` steps for ``num_seeds`` seeds, and its compile seconds."""
    import jax
    import jax.numpy as jnp

    from rnnbench.model import make_model
    from rnnbench.optim import adam
    from rnnbench.tasks.adding import adding
    from rnnbench.train import make_trainer, seed_keys

    batch, seq_len, hidden = shape
    task = adding(seq_len)
    model = make_model(cell_factory, hidden_size=hidden, output_dim=task.output_dim, readout=task.readout)
    trainer = make_trainer(model, task, adam(10_000, lr=1e-3), batch_size=batch, eval_size=batch,
                           seed_parallelism=mode)
    keys = jax.tree.map(lambda *ks: jnp.stack(ks), *[seed_keys(s) for s in range(num_seeds)])
    t0 = time.perf_counter()
    state = jax.jit(trainer.init)(keys)
    chunk = jax.jit(trainer.chunk, static_argnums=2, donate_argnums=0).lower(state, keys, steps).compile()
    compile_seconds = time.perf_counter() - t0
    box = [state]

    def run() -> None:
        box[0], metrics = chunk(box[0], keys)
        jax.block_until_ready(metrics)

    run()  # the first call allocates: not timed
    return run, compile_seconds


def bench(shape_name: str, cells: list[str], seeds: list[int], repeats: int, steps: int) -> None:
    import jax

    from rnnbench.cells.gru import gru
    from rnnbench.cells.lstm import lstm

    factories = {"lstm": lstm, "gru": gru}
    shape = SHAPES[shape_name]
    env = {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("MALLOC_", "XLA_FLAGS", "OMP_"))}
    print(f"backend {jax.default_backend()} ({jax.device_count()} device(s), {os.cpu_count()} cores), shape "
          f"{shape_name} (B, T, H) = {shape}, adding task (input 2), {steps} steps per chunk, median of {repeats}; "
          f"env {env or '(no MALLOC_/XLA_FLAGS/OMP_ settings)'}")
    print("'vs K runs' = median time for K seeds / (K x median time of one seed alone); below 1.00x the program "
          "beats K separate runs")
    print(f"{'cell':5} {'K':>2} {'mode':5} {'ms/step':>9} {'min-max':>17} {'compile s':>9} {'vs K runs':>9}")
    for cell in cells:
        # One seed alone: the one-seed program (train.py never maps one seed, whatever the mode).
        variants = [(1, "loop")] + [(k, m) for k in seeds if k > 1 for m in MODES]
        runners = {v: _chunk_runner(factories[cell], shape, v[0], v[1], steps) for v in variants}
        times: dict[tuple[int, str], list[float]] = {v: [] for v in variants}
        for r in range(repeats):
            shift = r % len(variants)  # a different order each repeat: no variant always runs first
            for v in variants[shift:] + variants[:shift]:
                t0 = time.perf_counter()
                runners[v][0]()
                times[v].append((time.perf_counter() - t0) / steps)
        alone = statistics.median(times[(1, "loop")])
        for k, mode in variants:
            t = times[(k, mode)]
            med = statistics.median(t)
            label = "alone" if k == 1 else mode
            print(f"{cell:5} {k:2d} {label:5} {med * 1e3:9.2f} {f'{min(t) * 1e3:.2f}-{max(t) * 1e3:.2f}':>17} "
                  f"{runners[(k, mode)][1]:9.2f} {med / (k * alone):8.2f}x", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rnnbench.bench_seeds", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="T", help="T or S (B, T, H in SHAPES)")
    parser.add_argument("--seeds", default="1,4,8", help="comma-separated seed counts K")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed chunk (default: per shape)")
    parser.add_argument("--cells", default="lstm,gru")
    args = parser.parse_args(argv)
    seeds = [int(k) for k in args.seeds.split(",")]
    if any(k < 1 for k in seeds):
        parser.error(f"--seeds={args.seeds} must be positive integers")
    bench(args.shape, args.cells.split(","), seeds, args.repeats, args.steps or STEPS[args.shape])


if __name__ == "__main__":
    main()
