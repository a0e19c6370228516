"""Backward passes: JAX autodiff against the hand-written ones (``backward="fused"``: LSTM, GRU, RNN).

One process, one training step per variant (forward, mean squared error of a linear readout of the last
output, backward, Adam), compiled once, then timed in interleaved rounds (A, B, C, A, B, C, ...) so
that a shared, noisy machine slows every variant alike: compare the ratios, which this prints per
round and as a median, rather than the absolute times. Variants, per cell (lstm, gru, rnn):

    autodiff        CELL(backward="autodiff"): JAX differentiates the scan (x W_x inside the step on CPU)
    fused           CELL(backward="fused"): the hand-written backward; the LSTM keeps the activated
                    gates of every step for it, the GRU r, z, n and h W_hn + b_hn, the RNN its outputs
    fused recompute (LSTM only) the same keeping only the states: the gates' pre-activations recomputed
                    by matmuls over all T*B rows before the backward scan

    python -m rnnbench.bench_backward --cells lstm,gru,rnn --shapes S,L,W --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

from rnnbench.bench import INPUT_DIM, SHAPES

VARIANTS = ("autodiff", "fused", "fused recompute")


CELLS = ("lstm", "gru", "rnn")


def _cell_factory(cell: str, variant: str):
    import functools

    from rnnbench.cells.gru import gru
    from rnnbench.cells.lstm import fused_lstm_sequence, lstm
    from rnnbench.cells.rnn import rnn

    if variant != "fused recompute":
        return functools.partial({"lstm": lstm, "gru": gru, "rnn": rnn}[cell], backward=variant)

    def recompute(hidden_size):
        def sequence(params, carry, xs, mask=None, reverse=False):
            return fused_lstm_sequence(params["w_x"], params["b"], params["w_h"], *carry, xs, mask, reverse, False)

        return lstm(hidden_size, backward="fused")._replace(sequence=sequence)

    return recompute


def _train_step(cell: str, variant: str, shape: tuple[int, int, int]):
    """``run(n)``: n jitted training steps on a fixed batch; returns the compile+first-step seconds."""
    import jax
    import jax.numpy as jnp
    import optax

    from rnnbench.model import make_model

    B, T, H = shape
    model = make_model(_cell_factory(cell, variant), hidden_size=H, output_dim=1, readout="last")
    opt = optax.adam(1e-3)

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x) - y) ** 2))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jitted = jax.jit(step, donate_argnums=(0, 1))
    params = model.init(jax.random.key(0), INPUT_DIM)
    state = {"params": params, "opt": opt.init(params)}
    x = jax.random.normal(jax.random.key(1), (B, T, INPUT_DIM))
    y = jax.random.normal(jax.random.key(2), (B, 1))

    def run(n: int) -> None:
        loss = None
        for _ in range(n):
            state["params"], state["opt"], loss = jitted(state["params"], state["opt"], x, y)
        jax.block_until_ready(loss)

    t0 = time.perf_counter()
    run(1)
    return run, time.perf_counter() - t0


def compare(cell: str, shape_name: str, variants: list[str], repeats: int, target_s: float) -> None:
    shape = SHAPES[shape_name]
    runs, compile_s = {}, {}
    for v in variants:
        runs[v], compile_s[v] = _train_step(cell, v, shape)
    t0 = time.perf_counter()
    runs[variants[0]](1)
    n = max(1, round(target_s / (time.perf_counter() - t0)))  # steps per timed repeat
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            t0 = time.perf_counter()
            runs[v](n)
            times[v].append((time.perf_counter() - t0) / n)
    base = variants[0]
    print(f"\n{cell}, shape {shape_name} (B, T, H) = {shape}, input {INPUT_DIM}: "
          f"{repeats} interleaved rounds of {n} steps")
    print(f"{'variant':16} {'ms/step':>9} {'min-max':>17} {'steps/s':>8} {'compile s':>9} "
          f"{'vs ' + base:>13} {'per-round ratios':>16}")
    for v in variants:
        med = statistics.median(times[v])
        ratios = [a / b for a, b in zip(times[base], times[v], strict=True)]
        lo, hi = min(times[v]), max(times[v])
        print(f"{v:16} {med * 1e3:9.2f} {f'{lo * 1e3:.1f}-{hi * 1e3:.1f}':>17} {1 / med:8.2f} {compile_s[v]:9.2f} "
              f"{statistics.median(ratios):12.2f}x  {' '.join(f'{r:.2f}' for r in ratios)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rnnbench.bench_backward",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default=",".join(CELLS), help="comma-separated, from: " + ", ".join(CELLS))
    parser.add_argument("--shapes", default="S,L,W", help="comma-separated, from: " + ", ".join(SHAPES))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, first is the baseline")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--target-s", type=float, default=0.5, help="seconds per timed repeat, roughly")
    args = parser.parse_args(argv)
    variants, cells = args.variants.split(","), args.cells.split(",")
    for bad in ([v for v in variants if v not in VARIANTS] + [s for s in args.shapes.split(",") if s not in SHAPES]
                + [c for c in cells if c not in CELLS]):
        parser.error(f"unknown cell, variant or shape {bad!r}")
    import jax

    print(f"backend {jax.default_backend()}, jax {jax.__version__}; train step = forward + MSE + backward + Adam")
    for cell in cells:
        for shape_name in args.shapes.split(","):
            cell_variants = [v for v in variants if cell == "lstm" or v != "fused recompute"]
            compare(cell, shape_name, cell_variants, args.repeats, args.target_s)


if __name__ == "__main__":
    main()
