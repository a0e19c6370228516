"""Benchmarks (``make bench``): rnnbench's cells against flax.linen and PyTorch, side by side.

The default run times the same training workload in every implementation: each step draws a fresh
batch (x ~ N(0, 1) [B, T, 8], y ~ N(0, 1) [B, 1]), runs the recurrence, reads the last output through
a linear layer, takes the mean squared error, backpropagates and applies Adam (lr 1e-3). The
implementations:

    rnnbench   make_model(lstm | gru | rnn), jitted with donated state, glibc malloc tuned in-process or
               not as the ``rnnbench`` command decides by default (``train.tune_malloc=null``,
               rnnbench/malloc.py); also with the other choice, and at T=1000 with ``remat``
    flax       nn.RNN(LSTMCell | OptimizedLSTMCell | GRUCell | SimpleCell) + nn.Dense, same step
    torch      nn.LSTM | GRU | RNN + nn.Linear + torch.optim.Adam, as users run it (default
               environment), and again under tuned glibc malloc (MALLOC_MMAP_MAX_=0
               MALLOC_ARENA_MAX=1 MALLOC_TRIM_THRESHOLD_=64G), which made it much faster on these VMs
    roofline   the same matmul shapes as a training step's (forward [B,H]x[H,G] and [B,D]x[D,G],
               backward [B,G]x[G,H], weight gradients [H,B]x[B,G] and [D,B]x[B,G]) in a lax.scan
               with the same dependency chain and nothing else: the rate an RNN step can hope for

at shapes T (B16,T100,H32), S (B64,T100,H128), L (B64,T1000,H128), W (B256,T200,H256). Every row
runs in its own process (so peak memory is its own; torch's allocator setting needs a fresh
process). The rows of one cell and shape are compiled one at a time, then stay alive and take turns:
timing 1 of every row, then timing 2 of every row, and so on, so a slow spell of this shared, noisy
machine slows every row alike. Compare the ratios printed together, never numbers from different runs.
GFLOP/s counts matmul FLOPs only: 2 B T G (2D + 3H) per step (G = 4H for the LSTM, 3H for the GRU, H for the tanh RNN).

Other modes: ``--levers`` (hoisting the input projection, unroll), ``--diagnostics`` (cost of the
gradient diagnostics), ``--parallel`` (associative_scan vs sequential for minGRU, minLSTM, LRU),
``--smoke`` (a seconds-long run of every implementation at a tiny shape, in this process: CI runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

SHAPES = {"T": (16, 100, 32), "S": (64, 100, 128), "L": (64, 1000, 128), "W": (256, 200, 256),
          "tiny": (2, 5, 4)}
INPUT_DIM = 8
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
FLAX_CELLS = {"lstm": ("LSTMCell", "OptimizedLSTMCell"), "gru": ("GRUCell",), "rnn": ("SimpleCell",)}
TORCH_CELLS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}


def matmul_flops(cell: str, shape: tuple[int, int, int], input_dim: int = INPUT_DIM) -> int:
    """Matmul FLOPs of one training step (see the module docstring)."""
    B, T, H = shape
    G = GATES[cell] * H
    return 2 * B * T * G * (2 * input_dim + 3 * H)


def _rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm_up(run_steps, target_s: float) -> tuple[float, int]:
    """The first call of ``run_steps`` (trace, compile, one step) in seconds, and the number of steps n
    that makes one timing last about ``target_s``."""
    t0 = time.perf_counter()
    run_steps(1)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_steps(1)
    one = time.perf_counter() - t0
    return first_s, max(1, min(200, round(target_s / max(one, 1e-6))))


def _time_once(run_steps, n: int) -> float:
    """Seconds per step of one timing of n steps."""
    t0 = time.perf_counter()
    run_steps(n)
    return (time.perf_counter() - t0) / n


def _summarise(seconds_per_step: list[float]) -> dict[str, Any]:
    rates = sorted(1.0 / s for s in seconds_per_step)
    return {"steps_per_s": statistics.median(rates), "min": rates[0], "max": rates[-1]}


def _jax_step(apply_fn, params, shape, remat_note=""):
    """A jitted train step over ``apply_fn(params, x) -> [B, 1]`` with Adam; data drawn inside."""
    import jax
    import jax.numpy as jnp
    import optax

    B, T, _ = shape
    opt = optax.adam(1e-3)

    def step(params, opt_state, i):
        key = jax.random.fold_in(jax.random.key(0), i)
        x = jax.random.normal(key, (B, T, INPUT_DIM))
        y = jax.random.normal(jax.random.fold_in(key, 1), (B, 1))
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((apply_fn(p, x) - y) ** 2))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jitted = jax.jit(step, donate_argnums=(0, 1))
    state = {"params": params, "opt": opt.init(params), "i": 0}

    def run_steps(n: int) -> None:
        loss = None
        for _ in range(n):
            state["params"], state["opt"], loss = jitted(state["params"], state["opt"], jnp.int32(state["i"]))
            state["i"] += 1
        jax.block_until_ready(loss)

    return run_steps


def _rnnbench_runner(cell: str, shape, remat: bool = False):
    import jax

    from rnnbench.cells.gru import gru
    from rnnbench.cells.lstm import lstm
    from rnnbench.cells.rnn import rnn
    from rnnbench.model import make_model

    factory = {"lstm": lstm, "gru": gru, "rnn": rnn}[cell]
    model = make_model(factory, hidden_size=shape[2], output_dim=1, readout="last", remat=remat)
    params = model.init(jax.random.key(0), INPUT_DIM)
    return _jax_step(lambda p, x: model.apply(p, x), params, shape)


def _flax_runner(cell_name: str, shape):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    H = shape[2]
    cell_cls = getattr(nn, cell_name)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            hs = nn.RNN(cell_cls(features=H))(x)
            return nn.Dense(1)(hs[:, -1])

    net = Net()
    params = net.init(jax.random.key(0), jnp.zeros((shape[0], shape[1], INPUT_DIM)))
    return _jax_step(net.apply, params, shape)


def _torch_runner(cell: str, shape):
    import torch

    B, T, H = shape
    torch.manual_seed(0)
    rnn = getattr(torch.nn, TORCH_CELLS[cell])(INPUT_DIM, H, batch_first=True)
    head = torch.nn.Linear(H, 1)
    opt = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-3)

    def run_steps(n: int) -> None:
        for _ in range(n):
            x, y = torch.randn(B, T, INPUT_DIM), torch.randn(B, 1)
            out, _ = rnn(x)
            loss = torch.nn.functional.mse_loss(head(out[:, -1]), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run_steps


def _roofline_runner(cell: str, shape):
    """The training step's matmul shapes in a scan, with its dependency chain (module docstring)."""
    import jax
    import jax.numpy as jnp

    B, T, H = shape
    G = GATES[cell] * H
    keys = jax.random.split(jax.random.key(0), 4)
    w_h = jax.random.normal(keys[0], (H, G)) / H**0.5
    w_x = jax.random.normal(keys[1], (INPUT_DIM, G)) / INPUT_DIM**0.5
    w_back = jax.random.normal(keys[2], (G, H)) / G**0.5
    xs = jax.random.normal(keys[3], (T, B, INPUT_DIM))

    def body(carry, x_t):
        h, dw_h, dw_x = carry
        g = h @ w_h + x_t @ w_x  # forward: [B,H]x[H,G] + [B,D]x[D,G]
        dh = g @ w_back  # backward through the recurrence: [B,G]x[G,H]
        dw_h = dw_h + h.T @ g  # weight gradients: [H,B]x[B,G], [D,B]x[B,G]
        dw_x = dw_x + x_t.T @ g
        return (jnp.tanh(dh), dw_h, dw_x), None

    @jax.jit
    def chain(h0):
        (h, dw_h, dw_x), _ = jax.lax.scan(body, (h0, jnp.zeros((H, G)), jnp.zeros((INPUT_DIM, G))), xs)
        return h, dw_h, dw_x

    h0 = jnp.zeros((B, H))

    def run_steps(n: int) -> None:
        out = None
        for _ in range(n):
            out = chain(h0)
        jax.block_until_ready(out)

    return run_steps


def _make_runner(spec: dict[str, Any]):
    """``run_steps(n)`` for one row: ``spec`` = impl, cell, shape and options."""
    shape = tuple(spec["shape"])
    if spec.get("compile_cache"):
        import jax

        jax.config.update("jax_compilation_cache_dir", spec["compile_cache"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    impl = spec["impl"]
    if impl == "rnnbench":
        return _rnnbench_runner(spec["cell"], shape, remat=spec.get("remat", False))
    if impl == "flax":
        return _flax_runner(spec["flax_cell"], shape)
    if impl == "torch":
        return _torch_runner(spec["cell"], shape)
    if impl == "roofline":
        return _roofline_runner(spec["cell"], shape)
    raise ValueError(f"unknown impl {impl!r}")


def _send(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def worker(spec: dict[str, Any]) -> None:
    """A row's process (``--worker SPEC``): build and warm up the row, report, then time n steps per
    ``time`` line read from stdin, until ``done`` (answered with the peak RSS). Every row stays alive
    between its timings, so the parent can interleave the rows' timings (``_Row``)."""
    from rnnbench.malloc import set_malloc, tune_malloc

    mallopt = spec.get("mallopt")  # True: rnnbench's tuning; a list of (param, value): those mallopt calls
    tuned = set_malloc(mallopt) if isinstance(mallopt, list) else bool(mallopt) and tune_malloc()
    runner = _make_runner(spec)
    rss_before = _rss_mb()
    first_s, n = _warm_up(runner, spec.get("target_s", 0.25))
    _send({"first_call_s": first_s, "steps_per_timing": n, "rss_before_mb": rss_before, "mallopt": tuned})
    for line in sys.stdin:
        if line.strip() == "time":
            _send({"seconds_per_step": _time_once(runner, n)})
        elif line.strip() == "done":
            break
    _send({"peak_rss_mb": _rss_mb()})


class _Row:
    """One implementation at one shape, ready to time: in its own process (kept alive between timings),
    or in this one (``in_process``, for ``--smoke``). Construction warms it up (compiles)."""

    def __init__(self, spec: dict[str, Any], env: dict[str, str] | None = None, in_process: bool = False):
        self.times: list[float] = []
        self.error: str | None = None
        self.proc = None
        if in_process:
            self.runner = _make_runner(spec)
            self.rss_before = _rss_mb()
            first_s, self.n = _warm_up(self.runner, spec.get("target_s", 0.25))
            self.info = {"first_call_s": first_s, "steps_per_timing": self.n, "rss_before_mb": self.rss_before,
                         "mallopt": False}
            return
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "rnnbench.bench", "--worker", json.dumps(spec)],
                                     env={**os.environ, **(env or {})}, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.info = self._receive() or {}

    def _receive(self) -> dict[str, Any] | None:
        line = self.proc.stdout.readline() if self.error is None else ""
        if line:
            return json.loads(line)
        if self.error is None:
            self.proc.wait()
            self.stderr.seek(0)
            tail = self.stderr.read().strip().splitlines()[-1:] or [f"exit status {self.proc.returncode}"]
            self.error = tail[0]
        return None

    def _command(self, command: str) -> dict[str, Any] | None:
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:  # the row died: _receive reads its error
            pass
        return self._receive()

    def time(self) -> None:
        """One timing of n steps (nothing if the row failed)."""
        if self.proc is None:
            self.times.append(_time_once(self.runner, self.n))
        elif self.error is None:
            reply = self._command("time")
            if reply:
                self.times.append(reply["seconds_per_step"])

    def close(self) -> dict[str, Any]:
        """End the row; its result: steps/s (median, min, max), first call, peak RSS, or ``error``."""
        peak = _rss_mb()
        if self.proc is not None:
            if self.error is None:
                peak = (self._command("done") or {}).get("peak_rss_mb", float("nan"))
            for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
                stream.close()
            self.proc.wait()
        if self.error is not None:
            return {"error": self.error}
        return {**self.info, **_summarise(self.times), "peak_rss_mb": peak}


def _take_turns(rows: list[_Row], repeats: int, pause_s: float = 0.1) -> None:
    """Timing 1 of every row, then timing 2 of every row, ...; a pause after each lets the row's idle
    threads (OpenMP spin-waits) settle before the next row runs."""
    for _ in range(repeats):
        for row in rows:
            row.time()
            time.sleep(pause_s)


def _run_worker(spec: dict[str, Any], env: dict[str, str] | None = None, in_process: bool = False) -> dict[str, Any]:
    """One row on its own: warm up, ``spec["repeats"]`` timings, close."""
    row = _Row(spec, env, in_process)
    for _ in range(spec["repeats"]):
        row.time()
    return row.close()


def _rows(cell: str, shape_name: str, with_torch: bool, smoke: bool) -> list[tuple[str, dict[str, Any], dict]]:
    """(label, spec, extra env) for every implementation of one cell at one shape."""
    from rnnbench.malloc import activation_bytes, resolve

    B, T, H = SHAPES[shape_name]
    import jax

    # what train.tune_malloc=null picks
    tuned = resolve(None, activation_bytes(B, T, GATES[cell] * H), jax.default_backend())
    rows = [(f"rnnbench {cell}", {"impl": "rnnbench", "cell": cell, "mallopt": tuned and not smoke}, {})]
    if not smoke:
        rows.append((f"rnnbench {cell}, {'untuned' if tuned else 'tuned'} malloc",
                     {"impl": "rnnbench", "cell": cell, "mallopt": not tuned}, {}))
        if shape_name == "L":
            rows.append((f"rnnbench {cell} remat", {"impl": "rnnbench", "cell": cell, "remat": True, "mallopt": tuned},
                         {}))
    rows += [(f"flax {name}", {"impl": "flax", "cell": cell, "flax_cell": name}, {}) for name in FLAX_CELLS[cell]]
    if with_torch:
        rows.append((f"torch {TORCH_CELLS[cell]}", {"impl": "torch", "cell": cell}, {}))
        if not smoke:
            rows.append((f"torch {TORCH_CELLS[cell]}, tuned malloc", {"impl": "torch", "cell": cell}, TUNED_MALLOC))
    rows.append(("roofline (matmuls only)", {"impl": "roofline", "cell": cell}, {}))
    return rows


def _torch_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("torch") is not None
    except ValueError:
        return False


def compare(shape_names: list[str], cells: list[str], repeats: int, smoke: bool = False) -> list[dict[str, Any]]:
    """Run and print the comparison table; returns its rows (``label``, ``cell``, ``shape`` and numbers)."""
    import platform

    with_torch = _torch_available()
    print(f"rnnbench bench: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; train step = data + forward + backward + Adam, input size {INPUT_DIM}; "
          f"median (min-max) steps/s of {repeats} timings; one process per row, the rows' timings in turns"
          + ("" if with_torch else "; torch not installed (pip install -e '.[bench]')"), flush=True)
    results = []
    for shape_name in shape_names:
        shape = SHAPES[shape_name]
        B, T, H = shape
        print(f"\nshape {shape_name}: B={B} T={T} H={H}")
        print(f"{'implementation':34} {'steps/s':>9} {'min-max':>15} {'GFLOP/s':>8} {'of roof':>7} "
              f"{'1st call s':>10} {'peak MB':>8} {'vs torch':>8} {'vs flax':>8}")
        for cell in cells:
            specs = _rows(cell, shape_name, with_torch, smoke)
            rows = []
            for _, spec, env in specs:  # warm up (compile) one row at a time, then time them in turns
                spec.update(shape=list(shape), target_s=0.05 if smoke else 0.25)
                rows.append(_Row(spec, env, in_process=smoke))
            _take_turns(rows, repeats, pause_s=0.0 if smoke else 0.1)
            measured = []
            for (label, spec, env), row in zip(specs, rows, strict=True):
                r = row.close()
                r.update(label=label, cell=cell, shape=shape_name, impl=spec["impl"], env=env)
                measured.append(r)
            roof = next((r for r in measured if r["impl"] == "roofline" and "error" not in r), None)
            torch_ref = next((r for r in measured if r["impl"] == "torch" and not r["env"] and "error" not in r), None)
            flax_best = max((r["steps_per_s"] for r in measured if r["impl"] == "flax" and "error" not in r),
                            default=None)
            flops = matmul_flops(cell, shape)
            for r in measured:
                if "error" not in r:
                    r["gflops"] = flops * r["steps_per_s"] / 1e9
            for r in measured:
                if "error" in r:
                    print(f"{r['label']:34} error: {r['error']}")
                    continue
                model = r["impl"] != "roofline"  # the roofline is a rate, not a model: no ratios
                r["vs_torch"] = r["steps_per_s"] / torch_ref["steps_per_s"] if torch_ref and model else None
                r["vs_flax"] = r["steps_per_s"] / flax_best if flax_best and model else None
                r["of_roofline"] = r["gflops"] / roof["gflops"] if roof else None
                of_roof = f"{r['of_roofline']:6.0%}" if roof else "-"
                spread = f"{r['min']:.2f}-{r['max']:.2f}"
                print(f"{r['label']:34} {r['steps_per_s']:9.2f} {spread:>15} "
                      f"{r['gflops']:8.1f} {of_roof:>7} {r['first_call_s']:10.2f} {r['peak_rss_mb']:8.0f} "
                      f"{_ratio(r['vs_torch']):>8} {_ratio(r['vs_flax']):>8}", flush=True)
            results.extend(measured)
    return results


def _ratio(x: float | None) -> str:
    return f"{x:.2f}x" if x is not None else "-"


def compile_cache_effect(shape_name: str = "S") -> None:
    """First vs second process compiling the same rnnbench LSTM with a fresh persistent cache, and the
    first-call time at T=100 vs T=1000 (compile time must stay flat in T)."""
    print("\ncompile: first call of a new process (trace + compile + one step), rnnbench lstm")
    with tempfile.TemporaryDirectory() as cache:
        spec = {"impl": "rnnbench", "cell": "lstm", "shape": list(SHAPES[shape_name]), "repeats": 1,
                "target_s": 0.01, "compile_cache": cache}
        cold, warm = _run_worker(spec), _run_worker(spec)
    print(f"  persistent cache, shape {shape_name}: 1st process {cold['first_call_s']:.2f} s, "
          f"2nd process {warm['first_call_s']:.2f} s")
    short, long_ = (_run_worker({"impl": "rnnbench", "cell": "lstm", "shape": list(SHAPES[s]), "repeats": 1,
                                 "target_s": 0.01}) for s in ("S", "L"))
    ratio = long_["first_call_s"] / short["first_call_s"]
    print(f"  T=100 {short['first_call_s']:.2f} s vs T=1000 {long_['first_call_s']:.2f} s (one step at T=1000 is "
          f"{1 / long_['steps_per_s']:.2f} s of that): {ratio:.2f}x", flush=True)


# --- levers that decided defaults -------------------------------------------------------------------------


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


def levers(shape, cells: list[str], repeats: int) -> None:
    """Hoisting the input projection and ``unroll``, per cell, against computing x W inside the step."""
    import jax

    from rnnbench.cells.gru import gru
    from rnnbench.cells.lstm import lstm
    from rnnbench.cells.rnn import rnn

    factories = {"rnn": rnn, "lstm": lstm, "gru": gru}
    print(f"backend {jax.default_backend()}, shape (B, T, H) = {shape}, input {INPUT_DIM}, "
          f"train step = forward + backward + Adam, median of {repeats}")
    print(f"{'cell':6} {'variant':18} {'ms/step':>9} {'min-max':>15} {'compile s':>9} {'vs inside,u1':>12}")
    for name in cells:
        base = None
        for hoist, unroll in [(False, 1), (True, 1), (False, 2), (False, 4), (True, 4)]:
            med, lo, hi, comp = measure(factories[name], shape, hoist, unroll, repeats)
            base = base or med
            variant = f"{'hoisted' if hoist else 'inside'}, unroll {unroll}"
            print(f"{name:6} {variant:18} {med * 1e3:9.2f} {f'{lo * 1e3:.2f}-{hi * 1e3:.2f}':>15} {comp:9.2f} "
                  f"{base / med:11.2f}x", flush=True)


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


XLA_FLAG_SETS = {  # XLA:CPU flags measured by --xla-flags (all off by default in jax 0.10 unless said)
    "default": "",
    "no YNNPACK": "--xla_cpu_experimental_ynn_fusion_type=",
    "no XNNPACK": "--xla_cpu_use_xnnpack=false",
    "XNNPACK dot+eltwise fusions": "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise",
    "XNNPACK graph fusion": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "oneDNN": "--xla_cpu_use_onednn=true",
    "Eigen single-threaded": "--xla_cpu_multi_thread_eigen=false",
    "no concurrency scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=false",
    "fast math": "--xla_cpu_enable_fast_math=true",
}


def xla_flags_lever(shape_names: list[str], cells: list[str], repeats: int, flag_sets: list[str]) -> None:
    """rnnbench's training step under XLA:CPU flag sets, one process per set, timings in turns."""
    base_flags = os.environ.get("XLA_FLAGS", "")
    print(f"XLA:CPU flags, rnnbench train step, median (min-max) steps/s of {repeats} timings in turns")
    for shape_name in shape_names:
        for cell in cells:
            print(f"\n{cell}, shape {shape_name} {SHAPES[shape_name]}")
            rows = [_Row({"impl": "rnnbench", "cell": cell, "shape": list(SHAPES[shape_name]), "target_s": 0.25,
                          "mallopt": True},
                         {"XLA_FLAGS": f"{base_flags} {XLA_FLAG_SETS[name]}".strip()}) for name in flag_sets]
            _take_turns(rows, repeats)
            results = [row.close() for row in rows]
            base = results[0].get("steps_per_s")
            for name, r in zip(flag_sets, results, strict=True):
                if "error" in r:
                    print(f"  {name:28} error: {r['error']}")
                    continue
                ratio = f"{r['steps_per_s'] / base:.2f}x" if base else "-"
                spread = f"{r['min']:.2f}-{r['max']:.2f}"
                print(f"  {name:28} {r['steps_per_s']:8.2f} {spread:>13} "
                      f"1st call {r['first_call_s']:5.2f} s  {ratio} {XLA_FLAG_SETS[name]}", flush=True)


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
    parser.add_argument("--shapes", default="T,S,L,W", help="comma-separated: T, S, L, W (B, T, H in the docstring)")
    parser.add_argument("--cells", default="lstm,gru,rnn")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="every implementation at a tiny shape, in-process")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--levers", action="store_true", help="hoisting and unroll instead (--shape)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="S",
                        help="the shape for --levers, --diagnostics and --parallel")
    parser.add_argument("--diagnostics", action="store_true", help="time the gradient diagnostics instead")
    parser.add_argument("--every", type=int, default=500, help="diagnostics.every for the slowdown column")
    parser.add_argument("--parallel", action="store_true",
                        help="time the parallel (associative_scan) form of minGRU, minLSTM and LRU instead")
    parser.add_argument("--xla-flags", nargs="?", const=",".join(XLA_FLAG_SETS), metavar="SETS",
                        help="time rnnbench under XLA:CPU flag sets instead (--shapes, --cells); comma-separated "
                             "from: " + "; ".join(XLA_FLAG_SETS) + " (the first is the baseline)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    cells = args.cells.split(",")
    unknown = [c for c in cells if c not in GATES]
    shapes = ["tiny"] if args.smoke else args.shapes.split(",")
    bad_shapes = [s for s in shapes if s not in SHAPES]
    if unknown or bad_shapes:
        parser.error(f"unknown cell {unknown[0]!r}; choose from: {', '.join(GATES)}" if unknown
                     else f"unknown shape {bad_shapes[0]!r}; choose from: T, S, L, W")
    if args.xla_flags:
        sets = args.xla_flags.split(",")
        if unknown_sets := [f for f in sets if f not in XLA_FLAG_SETS]:
            parser.error(f"unknown flag set {unknown_sets[0]!r}; choose from: {'; '.join(XLA_FLAG_SETS)}")
        return xla_flags_lever(shapes, cells, args.repeats, sets)
    if args.levers:
        return levers(SHAPES[args.shape], cells, args.repeats)
    if args.diagnostics:
        return diagnostics_overhead(SHAPES[args.shape], args.repeats, args.every)
    if args.parallel:
        return parallel_vs_sequential(SHAPES[args.shape], args.repeats)
    rows = compare(shapes, cells, 2 if args.smoke else args.repeats, smoke=args.smoke)
    if not args.smoke:
        compile_cache_effect()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
