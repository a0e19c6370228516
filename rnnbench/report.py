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

from rnnbench.logging import SUMMARY_FILE


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


def main(argv: list[str] | None = None) -> None:
    """Console script ``rnnbench-report``."""
    parser = argparse.ArgumentParser(prog="rnnbench-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        parser.exit(2, f"rnnbench-report: error: not a directory: {', '.join(missing)}\n")
    rows = collect(args.dirs)
    if not rows:
        parser.exit(2, f"rnnbench-report: error: no {SUMMARY_FILE} under {', '.join(map(str, args.dirs))}\n")
    print(comparison_table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
