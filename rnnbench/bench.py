"""Micro-benchmarks behind defaults that were chosen by measurement (``make bench``).

Measures one training step (forward, backward, Adam) per cell with the input projection hoisted out
of the scan and computed inside it, and with several ``unroll`` values, all in this one process, and
prints the medians side by side with ratios. Speed claims compare ratios measured in one run: the
machines are shared and noisy. Usage: ``python -m rnnbench.bench [--shape S] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

SHAPES = {"T": (16, 100, 32), "S": (64, 100, 128), "L": (64, 1000, 128), "W": (256, 200, 256)}
INPUT_DIM = 8


def _step_fn(cell_factory, hidden, hoist, unroll):
    import jax
    import jax.numpy as jnp
    import optax

    from rnnbench.model import make_model

    model = make_model(cell_factory, hidden_size=hidden, output_dim=1, readout="last", unroll=unroll,
                       hoist_input=hoist)
    opt = optax.adam(1e-3)

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x) - y) ** 2))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = model.init(jax.random.key(0), INPUT_DIM)
    return jax.jit(step, donate_argnums=(0, 1)), params, opt.init(params)


def measure(cell_factory, shape, hoist, unroll, repeats):
    import jax

    B, T, H = shape
    step, params, opt_state = _step_fn(cell_factory, H, hoist, unroll)
    x = jax.random.normal(jax.random.key(1), (B, T, INPUT_DIM))
    y = jax.random.normal(jax.random.key(2), (B, 1))
    t0 = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, x, y)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, x, y)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times), compile_s


def diagnostics_overhead(shape, repeats: int, every: int) -> None:
    """Time one diagnostic step (``diagnostics.diagnose`` at its defaults) against one train step."""
    import jax
    import jax.numpy as jnp

    from rnnbench.cells.gru import gru
    from rnnbench.cells.lstm import lstm
    from rnnbench.cells.rnn import rnn
    from rnnbench.diagnostics import diagnose
    from rnnbench.model import make_model
    from rnnbench.tasks.base import Batch

    B, T, H = shape
    print(f"\ndiagnostics (batch 64, defaults) vs one train step (batch {B}); slowdown at diagnostics.every={every}")
    print(f"{'cell':6} {'train ms':>9} {'diag ms':>9} {'ratio':>7} {'slowdown':>9}")
    for name, factory in (("rnn", rnn), ("lstm", lstm), ("gru", gru)):
        train_med = measure(factory, shape, False, 1, repeats)[0]
        model = make_model(factory, hidden_size=H, output_dim=1, readout="last")
        params = model.init(jax.random.key(0), INPUT_DIM)
        batch = Batch(jax.random.normal(jax.random.key(1), (64, T, INPUT_DIM)), jnp.zeros((64, 1)))
        diag = jax.jit(lambda p, b, model=model: diagnose(model, lambda y, b: jnp.mean((y - b.y) ** 2), p, b,
                                                           jax.random.key(2)))
        jax.block_until_ready(diag(params, batch))
        times = []
        for _ in range(max(3, repeats // 4)):
            t0 = time.perf_counter()
            jax.block_until_ready(diag(params, batch))
            times.append(time.perf_counter() - t0)
        diag_med = statistics.median(times)
        print(f"{name:6} {train_med * 1e3:9.2f} {diag_med * 1e3:9.2f} {diag_med / train_med:6.2f}x "
              f"{100 * diag_med / (every * train_med):8.2f}%", flush=True)


def parallel_vs_sequential(shape, repeats: int) -> None:
    """The cells linear in their state: ``mode=parallel`` (associative_scan) against ``sequential``."""
    import functools

    from rnnbench.cells.lru import lru
    from rnnbench.cells.minimal import mingru, minlstm

    print(f"\n{'cell':8} {'mode':11} {'ms/step':>9} {'min-max':>15} {'compile s':>9} {'vs sequential':>13}")
    for name, factory in (("mingru", mingru), ("minlstm", minlstm), ("lru", lru)):
        base = None
        for mode in ("sequential", "parallel"):
            med, lo, hi, comp = measure(functools.partial(factory, mode=mode), shape, False, 1, repeats)
            base = base or med
            print(f"{name:8} {mode:11} {med * 1e3:9.2f} {f'{lo * 1e3:.2f}-{hi * 1e3:.2f}':>15} {comp:9.2f} "
                  f"{base / med:12.2f}x", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rnnbench.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="S", help="T, S, L or W (B, T, H below)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cells", default="rnn,lstm,gru")
    parser.add_argument("--diagnostics", action="store_true", help="time the gradient diagnostics instead")
    parser.add_argument("--every", type=int, default=500, help="diagnostics.every for the slowdown column")
    parser.add_argument("--parallel", action="store_true",
                        help="time the parallel (associative_scan) form of minGRU, minLSTM and LRU instead")
    args = parser.parse_args(argv)
    if args.diagnostics:
        return diagnostics_overhead(SHAPES[args.shape], args.repeats, args.every)
    if args.parallel:
        return parallel_vs_sequential(SHAPES[args.shape], args.repeats)

    import jax

    from rnnbench.cells.gru import gru
    from rnnbench.cells.lstm import lstm
    from rnnbench.cells.rnn import rnn

    factories = {"rnn": rnn, "lstm": lstm, "gru": gru}
    shape = SHAPES[args.shape]
    print(f"backend {jax.default_backend()}, shape {args.shape} (B, T, H) = {shape}, input {INPUT_DIM}, "
          f"train step = forward + backward + Adam, median of {args.repeats}")
    print(f"{'cell':6} {'variant':18} {'ms/step':>9} {'min-max':>15} {'compile s':>9} {'vs inside,u1':>12}")
    for name in args.cells.split(","):
        base = None
        for hoist, unroll in [(False, 1), (True, 1), (False, 2), (False, 4), (True, 4)]:
            med, lo, hi, comp = measure(factories[name], shape, hoist, unroll, args.repeats)
            base = base or med
            variant = f"{'hoisted' if hoist else 'inside'}, unroll {unroll}"
            print(f"{name:6} {variant:18} {med * 1e3:9.2f} {f'{lo * 1e3:.2f}-{hi * 1e3:.2f}':>15} {comp:9.2f} "
                  f"{base / med:11.2f}x", flush=True)


if __name__ == "__main__":
    main()
