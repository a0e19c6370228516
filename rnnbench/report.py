"""Turn run directories into comparison tables; reads only the files ``logging.py`` wrote.

``rnnbench-report DIR [DIR ...]`` prints one row per run (job) found under the given directories:
median final evaluation loss over seeds with its range, the task's trivial baseline, the metric,
how many seeds solved the task, parameters and speed. Failed, diverged and still-running runs are
listed with their status rather than dropped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from rnnbench.logging import DIAGNOSTICS_FILE, SUMMARY_FILE


def collect(dirs: list[Path]) -> list[dict[str, Any]]:
    """Every ``summary.json`` under ``dirs`` (a run directory or a sweep of them), sorted for reading."""
    rows = []
    for d in dirs:
        for path in sorted(Path(d).rglob(SUMMARY_FILE)):
            try:
                summary = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                summary = {"status": f"unreadable ({type(e).__name__})", "seeds": []}
            summary["path"] = str(path.parent)
            rows.append(summary)
    return sorted(rows, key=lambda r: (str(r.get("task")), r.get("seq_len") or 0, str(r.get("cell")), r["path"]))


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table, one line per run."""
    header = ["task", "T", "cell", "params", "status", "eval loss: median [min, max]", "baseline",
              "metric (mean)", "solved", "steps/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        seeds = r.get("seeds") or []
        losses = [s["eval_loss"] for s in seeds if s.get("eval_loss") is not None]
        metrics = [s["eval_metric"] for s in seeds if s.get("eval_metric") is not None]
        loss = (f"{_fmt(statistics.median(losses))} [{_fmt(min(losses))}, {_fmt(max(losses))}]"
                if losses else "-")
        metric = f"{statistics.fmean(metrics):.3f} {r.get('metric_name', '')}".strip() if metrics else "-"
        solved = f"{sum(bool(s.get('solved')) for s in seeds)}/{len(seeds)}" if seeds else "-"
        cells = [str(r.get("task", "?")), str(r.get("seq_len", "?")), str(r.get("cell", "?")),
                 str(r.get("num_params") or "-"), str(r.get("status")), loss, _fmt(r.get("baseline_loss")),
                 metric, solved, _fmt(r.get("steps_per_second"), 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gradient_flow_curves(run_dir: Path) -> dict[int, list[list[float]]]:
    """``{diagnostic step: [per-seed curve ||dL/dh_t||, t = 1..T]}`` from a run's diagnostics.jsonl."""
    curves: dict[int, list[list[float]]] = {}
    path = Path(run_dir) / DIAGNOSTICS_FILE
    if not path.exists():
        return curves
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        curves.setdefault(rec["step"], []).append(
            [float("nan") if v is None else v for v in rec["grad_norm_per_step"]])
    return curves


def plot_gradient_flow(rows: list[dict[str, Any]], out: Path) -> Path | None:
    """One figure per task: ||dL/dh_{T-k}|| / ||dL/dh_T|| against the lag k (log scale), one line per
    cell (median over seeds, interquartile band), at the first and the last diagnostic step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = [(r, gradient_flow_curves(Path(r["path"]))) for r in rows]
    runs = [(r, c) for r, c in runs if c]
    if not runs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for r, curves in runs:
        steps = sorted(curves)
        for ax, step in zip(axes, (steps[0], steps[-1]), strict=True):
            c = np.asarray(curves[step], dtype=float)[:, ::-1]  # [seeds, lag]
            ratio = c / c[:, :1]
            lag = np.arange(ratio.shape[1])
            med = np.nanmedian(ratio, axis=0)
            line, = ax.plot(lag, med, label=f"{r.get('cell')} ({r.get('task')}, T={r.get('seq_len')})")
            if ratio.shape[0] > 1:
                q1, q3 = np.nanpercentile(ratio, [25, 75], axis=0)
                ax.fill_between(lag, q1, q3, color=line.get_color(), alpha=0.2)
            ax.set_title(f"{'start' if step == steps[0] else 'end'} of training (step {step})")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("lag k = T - t (steps back from the last)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("||dL/dh_{T-k}|| / ||dL/dh_T||")
    axes[1].legend(fontsize=8)
    fig.suptitle("Gradient flow through time: median over seeds, band = interquartile range")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    """Console script ``rnnbench-report``."""
    parser = argparse.ArgumentParser(prog="rnnbench-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--plots", action="store_true", help="also write PNG plots (gradient flow)")
    parser.add_argument("--out", type=Path, help="where plots go (default: the first DIR/report)")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        parser.exit(2, f"rnnbench-report: error: not a directory: {', '.join(missing)}\n")
    rows = collect(args.dirs)
    if not rows:
        parser.exit(2, f"rnnbench-report: error: no {SUMMARY_FILE} under {', '.join(map(str, args.dirs))}\n")
    print(comparison_table(rows))
    if args.plots:
        out = (args.out or args.dirs[0] / "report") / "gradient_flow.png"
        written = plot_gradient_flow(rows, out)
        print(f"\n{written}" if written else f"\nno {DIAGNOSTICS_FILE} under the given directories: no plot")


if __name__ == "__main__":
    main(sys.argv[1:])
