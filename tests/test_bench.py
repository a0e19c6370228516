"""The benchmark harness (``make bench``): what it counts and that every implementation runs.

Speed itself is never asserted here (machines are shared and noisy); BENCHMARKS.md holds the numbers.
"""

from __future__ import annotations

import importlib.util

import pytest

from rnnbench.bench import INPUT_DIM, _Row, _run_worker, compare, matmul_flops


def test_matmul_flops_are_the_training_steps_matmuls():
    # forward x W_x [B,D]x[D,G] and h W_h [B,H]x[H,G]; backward dh [B,G]x[G,H]; dW_h [H,B]x[B,G]; dW_x [D,B]x[B,G]
    B, T, H, D = 64, 100, 128, INPUT_DIM
    for cell, G in (("lstm", 4 * H), ("gru", 3 * H), ("rnn", H)):
        per_step = 2 * B * D * G + 2 * B * H * G + 2 * B * G * H + 2 * H * B * G + 2 * D * B * G
        assert matmul_flops(cell, (B, T, H)) == T * per_step


def test_a_smoke_run_measures_every_implementation_with_consistent_ratios(capsys):
    rows = compare(["tiny"], ["lstm"], repeats=2, smoke=True)
    labels = [r["label"] for r in rows]
    expected = ["rnnbench lstm", "flax LSTMCell", "flax OptimizedLSTMCell"]
    if importlib.util.find_spec("torch") is not None:
        expected.append("torch LSTM")
    assert labels == [*expected, "roofline (matmuls only)"]
    assert all(r["steps_per_s"] > 0 and r["min"] <= r["steps_per_s"] <= r["max"] and r["gflops"] > 0 for r in rows)
    ours, flax_best = rows[0], max(r["steps_per_s"] for r in rows if r["impl"] == "flax")
    assert ours["vs_flax"] == pytest.approx(ours["steps_per_s"] / flax_best)
    assert rows[-1]["vs_flax"] is None  # the roofline is a rate, not a competitor
    assert ours["of_roofline"] == pytest.approx(ours["gflops"] / rows[-1]["gflops"]) and rows[-1]["of_roofline"] == 1
    table = capsys.readouterr().out
    assert all(label in table for label in labels)


def test_a_row_runs_in_its_own_process_and_reports_its_memory():
    row = _run_worker({"impl": "roofline", "cell": "rnn", "shape": [2, 5, 4], "repeats": 2, "target_s": 0.01})
    assert row["steps_per_s"] > 0 and row["peak_rss_mb"] >= row["rss_before_mb"] > 0


def test_rows_stay_alive_and_take_turns_and_a_failing_row_reports_its_error():
    spec = {"cell": "rnn", "shape": [2, 5, 4], "target_s": 0.01}
    good, bad = _Row({**spec, "impl": "roofline"}), _Row({**spec, "impl": "nope"})
    for _ in range(3):
        good.time()
        bad.time()
    assert len(good.times) == 3 and good.proc.poll() is None  # still alive between timings
    result = good.close()
    assert good.proc.returncode == 0 and result["steps_per_timing"] >= 1
    assert result["min"] <= result["steps_per_s"] <= result["max"]
    assert bad.close() == {"error": "ValueError: unknown impl 'nope'"}
