"""Turn run directories into a report: ``results.csv``, ``report.md`` and figures.

``rnnbench-report DIR [DIR ...]`` reads only what ``logging.py`` wrote (``summary.json``,
``metrics.jsonl``, ``diagnostics.jsonl``, Hydra's ``.hydra/overrides.yaml``); it needs no W&B. It
writes into ``DIR/report/`` (the first DIR; or ``--out``):

- ``results.csv``: one row per run and seed, every number the report uses;
- ``report.md``: per task, a ranked summary written from the numbers, the table of final evaluation
  losses (median and interquartile range over seeds, solve counts), pairwise Mann-Whitney tests over
  seeds, the figures; then gradient flow, cost, and every run with its status;
- PNG figures, one idea each: loss vs length, solve rate vs length, learning curves (vs steps and vs
  wall time), gradient flow at the start and end of training, gradient horizon vs length, cost.

Runs are grouped by task, by *variant* and by sequence length T. A variant is the cell plus whatever
the sweep varied besides the task, its length and the seed (``cell.forget_bias=0`` is variant
``lstm forget_bias=0``), read from each run's Hydra overrides. Failed, diverged, interrupted and
still-running runs are read too and said to be so: their seeds count as unsolved, and a seed that
never evaluated has no loss. A run whose summary says ``running`` but whose lock nobody holds was
killed: it is reported as ``stopped`` (the same command resumes it).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import json
import math
import os
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnbench.logging import CONFIG_FILE, DIAGNOSTICS_FILE, FINISHED, LOCK_FILE, METRICS_FILE, SUMMARY_FILE

# Overrides that never name a variant: the grouping keys themselves, and settings of display and storage
# and the settings that change how a run is executed, measured or stored but not what it learns
_NOT_A_VARIANT = re.compile(
    r"^(seed|cell|task|task\.seq_len|sweep|experiment|logger|logger\..*|hydra\..*|diagnostics\..*|"
    r"model\.(unroll|remat|hoist_input)|train\.(num_seeds|seed_parallelism|shard_seeds|compile_cache|tune_malloc|progress|"
    r"rerun_failed|checkpoint_every|keep_checkpoints))$")
CSV_COLUMNS = [
    "job", "run_dir", "status", "task", "seq_len", "cell", "variant", "optim", "hidden_size", "num_params",
    "param_budget", "num_layers", "bidirectional", "num_seeds", "seed", "seed_status", "eval_loss",
    "baseline_loss", "loss_ratio", "eval_metric", "metric_name", "solved", "solved_threshold",
    "solved_at_step", "diverged_at_step", "grad_horizon", "grad_decay_rate", "task_seq_len", "steps", "target_steps",
    "steps_per_second", "compile_seconds", "wall_seconds", "length_eval", "error",
]
SIG_LEVEL = 0.05


# --- reading ---------------------------------------------------------------------------------------------


def _lock_held(run_dir: Path) -> bool:
    """Whether a process holds the run's lock (rnnbench.job takes it exclusively while it trains)."""
    path = run_dir / LOCK_FILE
    if not path.exists():
        return False
    try:
        with open(path, "rb") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError:
        return False
    return False


def _overrides(run_dir: Path) -> list[tuple[str, str]]:
    """Hydra's command-line and sweep overrides of the run, as ``(key, value)``; [] when not recorded."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    from omegaconf import OmegaConf

    try:
        items = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # a torn or hand-edited file: the run is still reported, as its plain cell
        return []
    out = []
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if sep:
            out.append((key.lstrip("+~"), value))
    return out


def _from_config(run_dir: Path) -> tuple[int | None, int | None]:
    """``(train.steps, task.seq_len)`` of the run's own config.yaml; None where it cannot be read."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return None, None
    from omegaconf import OmegaConf

    out = []
    try:
        cfg = OmegaConf.load(path)
    except Exception:
        return None, None
    for key in ("train.steps", "task.seq_len"):
        try:
            out.append(int(OmegaConf.select(cfg, key)))
        except Exception:
            out.append(None)
    return out[0], out[1]


def collect(dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """Every run under ``dirs`` (a run directory or a sweep of them): its ``summary.json`` with ``path``,
    ``job`` (the path under its DIR), ``overrides`` and, for a ``running`` summary whose lock nobody
    holds, status ``stopped``. Job directories Hydra made with no summary.json (the job stopped before
    training) come as status ``no summary``. Sorted by task, length, cell, path."""
    rows = []
    seen: set[Path] = set()
    for d in dirs:
        d = Path(d)
        for path in sorted(d.rglob(SUMMARY_FILE)):
            run_dir = path.parent
            if run_dir.resolve() in seen or "report" in run_dir.relative_to(d).parts:
                continue
            seen.add(run_dir.resolve())
            try:
                summary = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                summary = {"status": f"unreadable ({type(e).__name__})", "seeds": []}
            if summary.get("status") == "running" and not _lock_held(run_dir):
                summary["status"] = "stopped"
            # T is the length the run asked for (task.seq_len); the task's own longest sequence
            # may differ (temporal order's lengths run T..1.1T), and is kept as task_seq_len
            summary["target_steps"], nominal = _from_config(run_dir)
            summary["task_seq_len"] = summary.get("seq_len")
            if nominal is not None:
                summary["seq_len"] = nominal
            summary["path"] = str(run_dir)
            summary["job"] = run_dir.relative_to(d).as_posix() if run_dir != d else d.name
            summary["overrides"] = _overrides(run_dir)
            rows.append(summary)
        for hydra_dir in sorted(d.rglob(".hydra")):
            run_dir = hydra_dir.parent
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            overrides = _overrides(run_dir)
            ov = dict(overrides)
            rows.append({"status": "no summary", "path": str(run_dir), "seeds": [], "overrides": overrides,
                         "job": run_dir.relative_to(d).as_posix() if run_dir != d else d.name,
                         "cell": ov.get("cell"), "task": ov.get("task"),
                         "seq_len": int(ov["task.seq_len"]) if ov.get("task.seq_len", "").isdigit() else None,
                         "error": "no summary.json: the job stopped before training (its error went to its stderr)"})
    return sorted(rows, key=lambda r: (r["status"] == "no summary", str(r.get("task")), r.get("seq_len") or 0,
                                       str(r.get("cell")), r["path"]))


def label_runs(rows: list[dict[str, Any]]) -> None:
    """Set each row's ``variant`` (cell plus the overrides that vary across the runs, besides task,
    length and seed) and ``task_label`` (task plus its varied options other than the length)."""
    keys = {k for row in rows for k, _ in row.get("overrides") or []}
    values: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        ov = dict(r.get("overrides") or [])
        for key in keys:
            values[key].add(ov.get(key, "<default>"))
    varying = {k for k, v in values.items() if len(v) > 1 and not _NOT_A_VARIANT.match(k)}
    for r in rows:
        ov = dict(r.get("overrides") or [])
        task_opts = [f"{k[len('task.'):]}={ov[k]}" for k in sorted(varying) if k.startswith("task.") and k in ov]
        other = [f"{k.removeprefix('cell.')}={ov[k]}" for k in sorted(varying) if not k.startswith("task.") and k in ov]
        r["task_label"] = " ".join([str(r.get("task")), *task_opts])
        r["variant"] = " ".join([str(r.get("cell")), *other])


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def result_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run and seed (a run with no seed record gives one row with seed empty)."""
    out = []
    for r in runs:
        base = {
            "job": r.get("job"), "run_dir": r.get("path"), "status": r.get("status"), "task": r.get("task_label"),
            "seq_len": r.get("seq_len"), "cell": r.get("cell"), "variant": r.get("variant"), "optim": r.get("optim"),
            "hidden_size": r.get("hidden_size"), "num_params": r.get("num_params"),
            "param_budget": r.get("param_budget"), "num_layers": r.get("num_layers"),
            "bidirectional": r.get("bidirectional"), "num_seeds": r.get("num_seeds"),
            "baseline_loss": r.get("baseline_loss"), "metric_name": r.get("metric_name"),
            "solved_threshold": r.get("solved_threshold"), "steps": r.get("steps"),
            "target_steps": r.get("target_steps"), "task_seq_len": r.get("task_seq_len"),
            "steps_per_second": r.get("steps_per_second"),
            "compile_seconds": r.get("compile_seconds"), "wall_seconds": r.get("wall_seconds"),
            "error": " ".join(str(r.get("error", "")).split())[:300] or None,
        }
        seeds = r.get("seeds") or [{}]
        for s in seeds:
            loss, baseline = _finite(s.get("eval_loss")), _finite(r.get("baseline_loss"))
            diverged = s.get("diverged_at_step") is not None
            seed_status = "diverged" if diverged else (r.get("status") if s else None)
            out.append({**base, "seed": s.get("seed"), "seed_status": seed_status, "eval_loss": loss,
                        "loss_ratio": loss / baseline if loss is not None and baseline else None,
                        "eval_metric": _finite(s.get("eval_metric")), "solved": bool(s.get("solved")) if s else None,
                        "solved_at_step": s.get("solved_at_step"), "diverged_at_step": s.get("diverged_at_step"),
                        "grad_horizon": s.get("grad_horizon"), "grad_decay_rate": _finite(s.get("grad_decay_rate")),
                        "length_eval": json.dumps(s["length_eval"]) if s.get("length_eval") else None})
    return out


def write_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float) else row[k])
                    for k in CSV_COLUMNS})
    return buf.getvalue()


# --- statistics ------------------------------------------------------------------------------------------


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3), linear interpolation between order statistics (numpy's default)."""
    import numpy as np

    q1, med, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q1), float(med), float(q3)


def mann_whitney(a: list[float], b: list[float]) -> tuple[float, float]:
    """Two-sided Mann-Whitney U test of samples ``a`` and ``b``: ``(U of a, p)``. Exact (the permutation
    distribution of U) without ties and for n < 8 per side as scipy does; otherwise the normal
    approximation with tie correction."""
    from scipy.stats import mannwhitneyu

    res = mannwhitneyu(a, b, alternative="two-sided", method="auto")
    return float(res.statistic), float(res.pvalue)


@dataclass
class Group:
    """The seeds of one (task, variant, T): every run of it together."""

    task: str
    variant: str
    seq_len: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        return [r["eval_loss"] for r in self.rows if r["eval_loss"] is not None]

    @property
    def n(self) -> int:
        return sum(r["seed"] is not None for r in self.rows)

    @property
    def solved(self) -> int:
        return sum(bool(r["solved"]) for r in self.rows)

    @property
    def diverged(self) -> int:
        return sum(r["seed_status"] == "diverged" for r in self.rows)

    def median(self, key: str) -> float | None:
        vals = [r[key] for r in self.rows if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    @property
    def loss_quartiles(self) -> tuple[float, float, float] | None:
        return quartiles(self.losses) if self.losses else None

    @property
    def ratio(self) -> float | None:
        """Median eval loss over the trivial baseline's."""
        q, base = self.loss_quartiles, self.rows[0].get("baseline_loss") if self.rows else None
        return q[1] / base if q and base else None


def groups(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[int, Group]]]:
    """``{task: {variant: {T: Group}}}`` over runs that have a task and a length. A group's ``runs`` are all
    of them; its ``rows`` (the seeds the statistics use) only those of finished runs (completed or diverged)."""
    out: dict[str, dict[str, dict[int, Group]]] = {}
    for run in runs:
        if run.get("task") is None or run.get("seq_len") is None:
            continue
        t, v, T = run["task_label"], run["variant"], int(run["seq_len"])
        g = out.setdefault(t, {}).setdefault(v, {}).setdefault(T, Group(t, v, T))
        g.runs.append(run)
    for row in rows:  # only finished runs' seeds are evidence; the others are listed with their status
        if row["status"] not in FINISHED:
            continue
        if row["task"] is not None and row["seq_len"] is not None and row["task"] in out:
            g = out[row["task"]].get(row["variant"], {}).get(int(row["seq_len"]))
            if g is not None:
                g.rows.append(row)
    return out


def largest_solved(by_len: dict[int, Group]) -> int | None:
    """The largest T at which at least half the seeds solved the task."""
    ok = [T for T, g in by_len.items() if g.n and g.solved * 2 >= g.n]
    return max(ok) if ok else None


def rank_variants(by_variant: dict[str, dict[int, Group]]) -> list[str]:
    """Best first: most seeds solved over all lengths, then the largest length solved, then the
    geometric mean over lengths of median loss / baseline (a variant with no loss at all last)."""

    def key(v: str):
        by_len = by_variant[v]
        ratios = [g.ratio for g in by_len.values() if g.ratio is not None and g.ratio > 0]
        gmean = math.exp(statistics.fmean(math.log(x) for x in ratios)) if ratios else math.inf
        return (-sum(g.solved for g in by_len.values()), -(largest_solved(by_len) or 0), gmean, v)

    return sorted(by_variant, key=key)


def pairwise_tests(by_variant: dict[str, dict[int, Group]], reference: str | None = None) -> list[dict[str, Any]]:
    """At each length, the variant with the lowest median loss (or ``reference``, where it ran) against
    every other: Mann-Whitney over the seeds' final eval losses."""
    out = []
    for T in sorted({T for by_len in by_variant.values() for T in by_len}):
        here = {v: by_len[T] for v, by_len in by_variant.items() if T in by_len and len(by_len[T].losses) >= 1}
        if len(here) < 2 or (reference is not None and reference not in here):
            continue
        best = reference or min(here, key=lambda v: (here[v].loss_quartiles[1], v))
        for v in sorted(here, key=lambda v: (here[v].loss_quartiles[1], v)):
            if v == best:
                continue
            a, b = here[best].losses, here[v].losses
            u, p = mann_whitney(a, b) if len(a) >= 1 and len(b) >= 1 else (None, None)
            out.append({"seq_len": T, "better": best, "other": v, "median_better": here[best].loss_quartiles[1],
                        "median_other": here[v].loss_quartiles[1], "n_better": len(a), "n_other": len(b),
                        "U": u, "p": p})
    return out


# --- text --------------------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 4) -> str:
    """Numbers as the report prints them (``digits`` significant digits); ``-`` for none."""
    return "-" if x is None else f"{x:.{digits}g}"



def _lengths(Ts: Iterable[int]) -> str:
    Ts = sorted(Ts)
    return f"T={Ts[0]}" if len(Ts) == 1 else f"T={Ts[0]}..{Ts[-1]}"


def task_summary(task: str, by_variant: dict[str, dict[int, Group]], tests: list[dict[str, Any]]) -> list[str]:
    """The ranked summary of one task, every clause computed from the groups."""
    lines = []
    all_T = sorted({T for by_len in by_variant.values() for T in by_len})
    for i, v in enumerate(rank_variants(by_variant), 1):
        by_len = by_variant[v]
        n, solved = sum(g.n for g in by_len.values()), sum(g.solved for g in by_len.values())
        top = largest_solved(by_len)
        ratios = {T: g.ratio for T, g in sorted(by_len.items()) if g.ratio is not None}
        if n == 0:
            statuses = sorted({str(run.get("status")) for g in by_len.values() for run in g.runs})
            lines.append(f"{i}. **{v}**: solved 0/0 seeds: no finished run yet ({', '.join(statuses)}).")
            continue
        parts = [f"solved {solved}/{n} seeds over {_lengths(T for T, g in by_len.items() if g.n)}"]
        if top is not None:
            parts.append(f"at least half the seeds solved it up to T={top}")
        if ratios:
            lo, hi = min(ratios.values()), max(ratios.values())
            parts.append(f"median loss {fmt(lo, 2)}x baseline" if len(ratios) == 1 or fmt(lo, 2) == fmt(hi, 2)
                         else f"median loss {fmt(lo, 2)}-{fmt(hi, 2)}x baseline")
        failed = [T for T, g in sorted(by_len.items()) if g.n and g.solved * 2 < g.n]
        pending = [T for T, g in sorted(by_len.items()) if not g.n]
        if failed:
            worst = [f"T={T}: {fmt(ratios.get(T), 3)}x baseline" for T in failed if ratios.get(T) is not None]
            trivial = [T for T in failed if ratios.get(T) is not None and ratios[T] > 0.9]
            parts.append(f"unsolved by more than half the seeds at {', '.join(f'T={T}' for T in failed)}"
                         + (f" ({'; '.join(worst)})" if worst else ""))
            if trivial:
                parts.append(f"no better than the trivial baseline at {', '.join(f'T={T}' for T in trivial)}")
        div = sum(g.diverged for g in by_len.values())
        if div:
            parts.append(f"{div} seed(s) diverged")
        if pending:
            parts.append(f"no finished run at {', '.join(f'T={T}' for T in pending)}")
        missing = [T for T in all_T if T not in by_len]
        if missing:
            parts.append(f"not run at {', '.join(f'T={T}' for T in missing)}")
        lines.append(f"{i}. **{v}**: " + "; ".join(parts) + ".")
    # the claims that hold up: at each length, best vs runner-up
    by_T: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for t in tests:
        by_T[t["seq_len"]].append(t)
    for T, ts in sorted(by_T.items()):
        t = ts[0]  # the runner-up (tests are ordered by the other's median)
        verdict = (f"significant at {SIG_LEVEL}" if t["p"] is not None and t["p"] < SIG_LEVEL
                   else f"not significant at {SIG_LEVEL}")
        lines.append(f"- T={T}: {t['better']} (median {fmt(t['median_better'])}) vs {t['other']} "
                     f"(median {fmt(t['median_other'])}): Mann-Whitney p={fmt(t['p'], 3)} "
                     f"(n={t['n_better']}, {t['n_other']}), {verdict}.")
    return lines


def loss_table(by_variant: dict[str, dict[int, Group]]) -> str:
    """Median eval loss [q1, q3] over seeds and solved count per variant and length; ranked rows."""
    Ts = sorted({T for by_len in by_variant.values() for T in by_len})
    header = ["variant", *[f"T={T}" for T in Ts], "largest T solved"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in rank_variants(by_variant):
        cells = [v]
        for T in Ts:
            g = by_variant[v].get(T)
            if g is None:
                cells.append("-")
                continue
            q = g.loss_quartiles
            if q:
                cells.append(f"{fmt(q[1])} [{fmt(q[0])}, {fmt(q[2])}] ({g.solved}/{g.n} solved)")
            else:
                cells.append(f"- ({', '.join(sorted({str(run.get('status')) for run in g.runs}))})")
        top = largest_solved(by_variant[v])
        cells.append("-" if top is None else str(top))
        lines.append("| " + " | ".join(cells) + " |")
    baselines = {T: g.runs[0].get("baseline_loss") for by_len in by_variant.values() for T, g in by_len.items()}
    lines.append("| *trivial baseline* | " + " | ".join(fmt(baselines.get(T)) for T in Ts) + " | |")
    return "\n".join(lines)


def metric_table(by_variant: dict[str, dict[int, Group]], metric_name: str) -> str:
    Ts = sorted({T for by_len in by_variant.values() for T in by_len})
    lines = ["| variant | " + " | ".join(f"T={T}" for T in Ts) + " |", "|" + "---|" * (len(Ts) + 1)]
    for v in rank_variants(by_variant):
        lines.append(f"| {v} | " + " | ".join(fmt(by_variant[v][T].median("eval_metric")) if T in by_variant[v]
                                               else "-" for T in Ts) + " |")
    return f"Median eval {metric_name} over seeds:\n\n" + "\n".join(lines)


def tests_table(tests: list[dict[str, Any]], first: str = "lowest median") -> str:
    header = ["T", first, "vs", "medians", "n", "U", "p"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in tests:
        lines.append(f"| {t['seq_len']} | {t['better']} | {t['other']} | {fmt(t['median_better'])} vs "
                     f"{fmt(t['median_other'])} | {t['n_better']}, {t['n_other']} | {fmt(t['U'])} | {fmt(t['p'], 3)} |")
    return "\n".join(lines)


def cost_table(tree: dict[str, dict[str, dict[int, Group]]]) -> str:
    """Per variant and length, medians over the runs of every task: parameters, training steps per
    second (all of a run's seeds together) and compile seconds."""
    per: dict[str, dict[int, list[Group]]] = defaultdict(lambda: defaultdict(list))
    for by_variant in tree.values():
        for v, by_len in by_variant.items():
            for T, g in by_len.items():
                per[v][T].append(g)
    Ts = sorted({T for by_len in per.values() for T in by_len})
    header = ["variant", "params", *[f"steps/s T={T}" for T in Ts], "compile s (median)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in sorted(per):
        runs = [run for gs in per[v].values() for g in gs for run in g.runs]
        params = [run.get("num_params") for run in runs if run.get("num_params")]
        comp = [c for run in runs if (c := _finite(run.get("compile_seconds"))) is not None]
        sps = []
        for T in Ts:
            vals = [s for g in per[v].get(T, []) for run in g.runs if (s := _finite(run.get("steps_per_second")))]
            sps.append(fmt(statistics.median(vals), 3) if vals else "-")
        prange = (str(min(params)) if params and min(params) == max(params)
                  else f"{min(params)}-{max(params)}" if params else "-")
        compile_s = fmt(statistics.median(comp), 3) if comp else "-"
        lines.append(f"| {v} | {prange} | " + " | ".join(sps) + f" | {compile_s} |")
    return "\n".join(lines)


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table, one line per run."""
    header = ["task", "T", "cell", "params", "status", "eval loss: median [min, max]", "baseline",
              "metric (mean)", "solved", "steps/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        seeds = r.get("seeds") or []
        losses = [x for s in seeds if (x := _finite(s.get("eval_loss"))) is not None]
        metrics = [x for s in seeds if (x := _finite(s.get("eval_metric"))) is not None]
        loss = (f"{fmt(statistics.median(losses))} [{fmt(min(losses))}, {fmt(max(losses))}]"
                if losses else "-")
        metric = f"{statistics.fmean(metrics):.3f} {r.get('metric_name', '')}".strip() if metrics else "-"
        solved = f"{sum(bool(s.get('solved')) for s in seeds)}/{len(seeds)}" if seeds else "-"
        cells = [str(r.get("task") or "?"), str(r.get("seq_len") or "?"), str(r.get("variant") or r.get("cell") or "?"),
                 str(r.get("num_params") or "-"), str(r.get("status")), loss, fmt(r.get("baseline_loss")),
                 metric, solved, fmt(r.get("steps_per_second"), 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- figures -----------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "task"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file; a torn last line (a run still writing) is passed over."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def learning_curves(run_dir: Path) -> dict[int, list[tuple[int, float, float]]]:
    """``{seed: [(step, wall seconds since the first evaluation, eval loss)]}`` from metrics.jsonl."""
    out: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
    for rec in _jsonl(Path(run_dir) / METRICS_FILE):
        loss = _finite(rec.get("eval_loss"))
        if loss is not None:
            out[rec["seed"]].append((rec["step"], float(rec.get("wall_time") or 0.0), loss))
    for seed, pts in out.items():
        t0 = pts[0][1]
        out[seed] = [(s, w - t0, loss) for s, w, loss in pts]
    return dict(out)


def gradient_flow_curves(run_dir: Path) -> dict[int, list[list[float]]]:
    """``{diagnostic step: [per-seed curve ||dL/dh_t||, t = 1..T]}`` from a run's diagnostics.jsonl."""
    curves: dict[int, list[list[float]]] = {}
    for rec in _jsonl(Path(run_dir) / DIAGNOSTICS_FILE):
        curves.setdefault(rec["step"], []).append(
            [float("nan") if v is None else v for v in rec["grad_norm_per_step"]])
    return curves


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    _plt().close(fig)
    return out


def _length_axis(ax, Ts: Iterable[int]) -> None:
    """The x axis of a plot against T: log scale when the lengths span 4x or more, ticks at the lengths run."""
    Ts = sorted(set(Ts))
    if Ts and Ts[-1] >= 4 * Ts[0]:
        ax.set_xscale("log", base=2)
    ax.set_xticks(Ts, [str(T) for T in Ts])
    ax.minorticks_off() if ax.get_xscale() == "log" else None
    ax.set_xlabel("sequence length T")


def _colors(variants: list[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    return {v: cmap(i % cmap.N) for i, v in enumerate(sorted(variants))}


def plot_loss_vs_length(task: str, by_variant: dict[str, dict[int, Group]], out: Path) -> Path | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors, drawn = _colors(list(by_variant)), False
    baselines: dict[int, float] = {}
    thresholds: dict[int, float] = {}
    for v in rank_variants(by_variant):
        pts = [(T, g.loss_quartiles) for T, g in sorted(by_variant[v].items()) if g.loss_quartiles]
        for T, g in by_variant[v].items():
            if g.rows and g.rows[0].get("baseline_loss"):
                baselines[T] = g.rows[0]["baseline_loss"]
            if g.rows and _finite(g.rows[0].get("solved_threshold")):
                thresholds[T] = g.rows[0]["solved_threshold"]
        if not pts:
            continue
        Ts = [T for T, _ in pts]
        ax.plot(Ts, [q[1] for _, q in pts], "o-", color=colors[v], label=v)
        ax.fill_between(Ts, [q[0] for _, q in pts], [q[2] for _, q in pts], color=colors[v], alpha=0.18)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if baselines:
        Ts = sorted(baselines)
        ax.plot(Ts, [baselines[T] for T in Ts], "k--", lw=1.5, label="trivial baseline")
    if thresholds:
        Ts = sorted(thresholds)
        ax.plot(Ts, [thresholds[T] for T in Ts], ":", color="0.4", lw=1.5, label="solved below this")
    ax.set_yscale("log")
    _length_axis(ax, baselines or [T for by_len in by_variant.values() for T in by_len])
    ax.set_ylabel("final eval loss (median over seeds)")
    ax.set_title(f"{task}: final eval loss vs length (band: interquartile range)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_solve_rate(task: str, by_variant: dict[str, dict[int, Group]], out: Path) -> Path | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = _colors(list(by_variant))
    variants = rank_variants(by_variant)
    for i, v in enumerate(variants):
        pts = [(T, g.solved / g.n) for T, g in sorted(by_variant[v].items()) if g.n]
        if pts:  # a small vertical offset keeps coinciding lines apart
            off = (i - (len(variants) - 1) / 2) * 0.012
            top = largest_solved(by_variant[v])
            ax.plot([T for T, _ in pts], [f + off for _, f in pts], "o-", color=colors[v],
                    label=f"{v} (largest T solved: {top if top is not None else 'none'})")
    ax.set_ylim(-0.08, 1.08)
    _length_axis(ax, [T for by_len in by_variant.values() for T in by_len])
    ax.set_ylabel("fraction of seeds that solved the task")
    ax.set_title(f"{task}: solve rate vs length")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_learning_curves(task: str, by_variant: dict[str, dict[int, Group]], out: Path) -> Path | None:
    import numpy as np

    plt = _plt()
    Ts = sorted({T for by_len in by_variant.values() for T in by_len})
    fig, axes = plt.subplots(len(Ts), 2, figsize=(11, 3.3 * len(Ts)), squeeze=False)
    colors, drawn = _colors(list(by_variant)), False
    for row, T in zip(axes, Ts, strict=True):
        baseline = None
        for v in rank_variants(by_variant):
            g = by_variant[v].get(T)
            if g is None:
                continue
            for run in g.runs:
                curves = learning_curves(Path(run["path"]))
                if not curves:
                    continue
                baseline = run.get("baseline_loss") or baseline
                n = min(len(c) for c in curves.values())
                arr = np.asarray([c[:n] for c in curves.values()], dtype=float)  # [seeds, n, 3]
                med = np.median(arr[:, :, 2], axis=0)
                for ax, x in zip(row, (arr[0, :, 0], np.median(arr[:, :, 1], axis=0)), strict=True):
                    ax.plot(x, med, color=colors[v], label=v if run is g.runs[0] else None)
                    if arr.shape[0] > 1:
                        q1, q3 = np.percentile(arr[:, :, 2], [25, 75], axis=0)
                        ax.fill_between(x, q1, q3, color=colors[v], alpha=0.15)
                drawn = True
        for ax, xl in zip(row, ("training step", "wall seconds since the first evaluation"), strict=True):
            if baseline:
                ax.axhline(baseline, color="k", ls="--", lw=1, label="trivial baseline" if xl.startswith("t") else None)
            ax.set_yscale("log")
            ax.set_xlabel(xl)
            ax.set_ylabel("eval loss (median over seeds)")
            ax.set_title(f"{task}, T={T}")
            ax.grid(True, which="both", alpha=0.3)
        row[0].legend(fontsize=7)
    if not drawn:
        plt.close(fig)
        return None
    return _save(fig, out)


def plot_gradient_flow(rows: list[dict[str, Any]], out: Path, title: str = "") -> Path | None:
    """||dL/dh_{T-k}|| / max_t ||dL/dh_t|| against the lag k (log scale), one line per run (median over
    seeds, interquartile band), at the first and the last diagnostic step."""
    import numpy as np

    plt = _plt()
    runs = [(r, gradient_flow_curves(Path(r["path"]))) for r in rows]
    runs = [(r, c) for r, c in runs if c]
    if not runs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = _colors([str(r.get("variant") or r.get("cell")) for r, _ in runs])
    for r, curves in runs:
        steps = sorted(curves)
        name = str(r.get("variant") or r.get("cell"))
        for ax, step in zip(axes, (steps[0], steps[-1]), strict=True):
            c = np.asarray(curves[step], dtype=float)[:, ::-1]  # [seeds, lag]
            # relative to each seed's largest ||dL/dh_t||: the last step's, except where the last steps
            # carry no loss (the look-ahead task's), whose gradient is 0
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = c / np.nanmax(c, axis=1, keepdims=True)
            lag = np.arange(ratio.shape[1])
            label = name if title else f"{name} ({r.get('task')}, T={r.get('seq_len')})"
            ax.plot(lag, np.nanmedian(ratio, axis=0), color=colors[name], label=label)
            if ratio.shape[0] > 1:
                q1, q3 = np.nanpercentile(ratio, [25, 75], axis=0)
                ax.fill_between(lag, q1, q3, color=colors[name], alpha=0.2)
            ax.set_title(f"{'start' if step == steps[0] else 'end'} of training (step {step})")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("lag k = T - t (steps back from the last)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("||dL/dh_{T-k}|| / max_t ||dL/dh_t||")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Gradient flow through time{': ' + title if title else ''} "
                 "(median over seeds, band: interquartile range)")
    return _save(fig, out)


def plot_horizon(task: str, by_variant: dict[str, dict[int, Group]], out: Path) -> Path | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors, drawn = _colors(list(by_variant)), False
    Ts = sorted({T for by_len in by_variant.values() for T in by_len})
    for v in rank_variants(by_variant):
        pts = []
        for T, g in sorted(by_variant[v].items()):
            vals = [r["grad_horizon"] for r in g.rows if r.get("grad_horizon") is not None]
            if vals:
                pts.append((T, quartiles(vals)))
        if pts:
            ax.errorbar([T for T, _ in pts], [q[1] for _, q in pts],
                        yerr=[[q[1] - q[0] for _, q in pts], [q[2] - q[1] for _, q in pts]],
                        fmt="o-", capsize=3, color=colors[v], label=v)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    _length_axis(ax, Ts)
    ax.set_ylabel("gradient horizon at the end (lags)")
    ax.set_title(f"{task}: largest lag k with ||dL/dh_(T-k)|| / ||dL/dh_T|| above the threshold")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_cost(tree: dict[str, dict[str, dict[int, Group]]], out: Path) -> Path | None:
    plt = _plt()
    per: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for by_variant in tree.values():
        for v, by_len in by_variant.items():
            per[v].extend(run for g in by_len.values() for run in g.runs)
    per = {v: runs for v, runs in per.items() if any(r.get("num_params") for r in runs)}
    if not per:
        return None
    variants = sorted(per)
    colors = _colors(variants)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    params = [statistics.median([r["num_params"] for r in per[v] if r.get("num_params")]) for v in variants]
    axes[0].barh(variants, params, color=[colors[v] for v in variants])
    axes[0].set_xlabel("parameters (median over tasks)")
    for ax, key, label in ((axes[1], "steps_per_second", "training steps / s (all seeds together)"),
                           (axes[2], "compile_seconds", "compile seconds")):
        for v in variants:
            by_T: dict[int, list[float]] = defaultdict(list)
            for r in per[v]:
                if (x := _finite(r.get(key))) is not None and r.get("seq_len"):
                    by_T[int(r["seq_len"])].append(x)
            if by_T:
                Ts = sorted(by_T)
                ax.plot(Ts, [statistics.median(by_T[T]) for T in Ts], "o-", color=colors[v], label=v)
        _length_axis(ax, [int(r["seq_len"]) for v in variants for r in per[v] if r.get("seq_len")])
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[1].set_yscale("log")
    axes[2].legend(fontsize=7)
    fig.suptitle("Cost per variant (medians over tasks)")
    return _save(fig, out)


# --- the report --------------------------------------------------------------------------------------------


def _status_lines(runs: list[dict[str, Any]]) -> list[str]:
    counts: dict[str, int] = defaultdict(int)
    for r in runs:
        counts[str(r.get("status"))] += 1
    lines = [f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "."]
    notes = {"failed": "`train.rerun_failed=true` reruns it",
             "stopped": "killed while training; the same command resumes it from its checkpoint",
             "interrupted": "stopped by a signal; the same command resumes it",
             "running": "still training, left out of the tables until it ends",
             "no summary": "stopped before training"}
    for r in runs:
        s = str(r.get("status"))
        if s not in FINISHED:
            evals = [rec["step"] for rec in _jsonl(Path(r["path"]) / METRICS_FILE) if rec.get("eval_loss") is not None]
            if evals and s != "no summary":
                s_note = f"; last evaluated at step {max(evals)}"
            else:
                s_note = ""
            err = f"; error: {' '.join(str(r['error']).split())[:200]}" if r.get("error") else ""
            lines.append(f"- `{r.get('job')}` ({r.get('variant') or r.get('cell')}, {r.get('task')}, "
                         f"T={r.get('seq_len')}): **{s}**, {notes.get(s, 'see its summary.json')}{s_note}{err}")
        elif s == "diverged" or any(x.get("diverged_at_step") is not None for x in r.get("seeds") or []):
            steps = [str(x["diverged_at_step"]) for x in r.get("seeds") or [] if x.get("diverged_at_step") is not None]
            lines.append(f"- `{r.get('job')}` ({r.get('variant')}, {r.get('task')}, T={r.get('seq_len')}): "
                         f"{len(steps)} seed(s) diverged (at step {', '.join(steps)}); they count as unsolved")
    return lines


def build_report(dirs: list[Path], out: Path, *, plots: bool = True, reference: str | None = None) -> dict[str, Any]:
    """Read the runs under ``dirs`` and write ``results.csv``, ``report.md`` and the figures into
    ``out``, each file atomically (a temp file renamed into place). Returns what it wrote.
    ``reference``: a variant to test every other against too (ValueError if no run has it)."""
    runs = collect(dirs)
    label_runs(runs)
    variants = sorted({str(r["variant"]) for r in runs})
    if reference is not None and reference not in variants:
        raise ValueError(f"--reference {reference!r} is not a variant of these runs; they are: {', '.join(variants)}")
    rows = result_rows(runs)
    tree = groups(rows, runs)
    files: dict[str, bytes] = {"results.csv": write_csv(rows).encode()}
    figures: dict[str, list[tuple[str, str]]] = defaultdict(list)  # section -> [(caption, file)]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".report-", dir=out) as tmp:  # (same file system: renames are atomic)
        tmp_dir = Path(tmp)
        if plots:
            from tqdm import tqdm

            todo = [(task, kind) for task in tree for kind in ("loss", "solve", "curves", "flow", "horizon")]
            for task, kind in tqdm(todo, desc="figures", unit="fig", disable=None, leave=False):
                slug = _slug(task)
                by_variant = tree[task]
                if kind == "loss":
                    made = plot_loss_vs_length(task, by_variant, tmp_dir / f"loss_vs_length_{slug}.png")
                    caption = "final eval loss vs length"
                elif kind == "solve":
                    made = plot_solve_rate(task, by_variant, tmp_dir / f"solve_rate_{slug}.png")
                    caption = "solve rate vs length"
                elif kind == "curves":
                    made = plot_learning_curves(task, by_variant, tmp_dir / f"learning_curves_{slug}.png")
                    caption = "learning curves"
                elif kind == "flow":
                    done = [T for by_len in by_variant.values() for T, g in by_len.items() if g.rows]
                    T = max(done, default=None)  # the longest length with finished runs
                    longest = [run for by_len in by_variant.values() if T in by_len for run in by_len[T].runs
                               if run.get("status") in FINISHED]
                    made = (plot_gradient_flow(longest, tmp_dir / f"gradient_flow_{slug}.png", title=f"{task}, T={T}")
                            if longest else None)
                    caption = f"gradient flow at T={T}"
                else:
                    made = plot_horizon(task, by_variant, tmp_dir / f"gradient_horizon_{slug}.png")
                    caption = "gradient horizon vs length"
                if made:
                    figures[task].append((caption, made.name))
            if made := plot_cost(tree, tmp_dir / "cost.png"):
                figures["cost"].append(("cost", made.name))
        files["report.md"] = render_markdown(dirs, runs, tree, figures, reference).encode()
        for name, data in files.items():
            (tmp_dir / name).write_bytes(data)
        ours = re.compile(r"^(results\.csv|report\.md|(loss_vs_length|solve_rate|learning_curves|gradient_flow|"
                          r"gradient_horizon)_.*\.png|cost\.png)$")
        written = sorted(p.name for p in tmp_dir.iterdir())
        for name in written:
            os.replace(tmp_dir / name, out / name)
        for stale in out.iterdir():  # figures of an earlier report that this one has no data for
            if ours.match(stale.name) and stale.name not in written:
                stale.unlink()
    return {"out": out, "files": written, "runs": runs, "rows": rows, "tree": tree}


def render_markdown(dirs: list[Path], runs: list[dict[str, Any]], tree: dict[str, dict[str, dict[int, Group]]],
                    figures: dict[str, list[tuple[str, str]]], reference: str | None = None) -> str:
    seeds = sorted({r.get("num_seeds") for r in runs if r.get("num_seeds")})
    md = ["# rnnbench report", "",
          f"Read from {', '.join(f'`{d}`' for d in dirs)} by `rnnbench-report`; every number below is in "
          f"`results.csv` (one row per run and seed). Seeds per run: {', '.join(map(str, seeds)) or '-'}.", "",
          *_status_lines(runs), "",
          "Method: a variant is the cell plus what the sweep varied besides task, length and seed. Losses are "
          "the final evaluation loss on each seed's held-out set; tables give the median and interquartile "
          "range [q1, q3] over seeds and how many seeds *solved* the task (eval loss below the task's "
          "threshold). Ranks: most seeds solved over all lengths, then the largest length that at least half "
          "the seeds solved, then the geometric mean over lengths of median loss / trivial baseline. Pairwise "
          "claims use a two-sided Mann-Whitney U test over seeds (exact for small samples without ties); "
          "with n seeds a side, the smallest possible p is 2/C(2n, n) (n=3: 0.1, n=4: 0.029, n=5: 0.0079).", ""]
    for task, by_variant in tree.items():
        tests = pairwise_tests(by_variant)
        any_run = next(run for by_len in by_variant.values() for g in by_len.values() for run in g.runs)
        md += [f"## {task}", "",
               f"Metric: {any_run.get('metric_name') or 'loss only'}. A seed *solved* the task when its eval loss "
               f"fell below the task's threshold ({fmt(any_run.get('solved_threshold'))} at "
               f"T={any_run.get('seq_len')}); the trivial baseline is in the table's last row.", "",
               "Ranked summary:", "", *task_summary(task, by_variant, tests), "",
               "Final eval loss, median [q1, q3] over seeds (solved seeds / seeds):", "",
               loss_table(by_variant), ""]
        metric = any_run.get("metric_name")
        groups_here = [g for by_len in by_variant.values() for g in by_len.values()]
        if metric and any(g.median("eval_metric") is not None for g in groups_here):
            md += [metric_table(by_variant, metric), ""]
        if tests:
            md += ["Pairwise tests at each length: the variant with the lowest median loss against each other "
                   "(two-sided Mann-Whitney U over seeds' final eval losses):", "", tests_table(tests), ""]
        ref_tests = pairwise_tests(by_variant, reference) if reference else []
        if ref_tests:
            md += [f"Against the reference, `{reference}`, at each length (two-sided Mann-Whitney U over seeds' "
                   "final eval losses):", "", tests_table(ref_tests, "reference"), ""]
        for caption, name in figures.get(task, []):
            md += [f"![{task}: {caption}]({name})", ""]
    if tree:
        md += ["## Cost", "", "Medians over the runs of every task; steps/s is whole training steps (forward, "
               "backward and optimiser, every seed of the run together) per second, compile excluded.", "",
               cost_table(tree), ""]
        for caption, name in figures.get("cost", []):
            md += [f"![{caption}]({name})", ""]
    md += ["## All runs", "", comparison_table(runs), ""]
    return "\n".join(md)


def main(argv: list[str] | None = None) -> None:
    """Console script ``rnnbench-report``."""
    parser = argparse.ArgumentParser(prog="rnnbench-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, help="where the report goes (default: the first DIR/report)")
    parser.add_argument("--no-plots", action="store_true", help="tables only (results.csv and report.md)")
    parser.add_argument("--reference", metavar="VARIANT",
                        help="also test every variant against this one at each length (e.g. peephole_lstm)")
    parser.add_argument("--plots", action="store_true", help=argparse.SUPPRESS)  # (figures are now the default)
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        parser.exit(2, f"rnnbench-report: error: not a directory: {', '.join(missing)}\n")
    if not any(any(d.rglob(SUMMARY_FILE)) or any(d.rglob(".hydra")) for d in args.dirs):
        parser.exit(2, f"rnnbench-report: error: no {SUMMARY_FILE} under {', '.join(map(str, args.dirs))}: "
                       "give a run directory or a sweep directory of them\n")
    out = args.out or args.dirs[0] / "report"
    try:
        result = build_report(args.dirs, out, plots=not args.no_plots, reference=args.reference)
    except ValueError as e:
        parser.exit(2, f"rnnbench-report: error: {e}\n")
    except OSError as e:
        parser.exit(2, f"rnnbench-report: error: cannot write the report to {out}: {e}\n")
    print(comparison_table(result["runs"]))
    print(f"\n{out / 'report.md'} ({len(result['files'])} files: {', '.join(result['files'])})")


if __name__ == "__main__":
    main(sys.argv[1:])
