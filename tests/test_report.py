"""``rnnbench-report`` on a small sweep made here by the real ``rnnbench`` command (short real runs,
real logging): the CSV against each run's summary.json and metrics.jsonl, the markdown's numbers
against statistics computed here from the CSV (numpy quantiles, an exact Mann-Whitney by enumerating
every split), the figures as real non-blank PNGs, and the runs that did not finish said to be so."""

from __future__ import annotations

import csv
import fcntl
import itertools
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import FAILING_JOB, rnnbench  # FAILING_JOB: the jobs with seq_len 7 fail while training

from rnnbench import report

# one worker builds the sweep and runs every test of this file (make test: pytest-xdist --dist loadgroup)
pytestmark = pytest.mark.xdist_group("report")

SMALL = ["train.steps=30", "train.eval_every=10", "train.batch_size=16", "train.eval_size=32", "model.hidden_size=6",
         "diagnostics.every=10", "logger=none"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """A: rnn, gru x T=6,9, 3 seeds. B: lstm with forget_bias 0 and chrono x T=6 (and T=7, which fails).
    C: a run that diverges. D: a run killed by SIGKILL mid-training (its summary still says running)."""
    root = tmp_path_factory.mktemp("report")
    out = rnnbench("-m", "cell=rnn,gru", "task.seq_len=6,9", "train.num_seeds=3", f"hydra.sweep.dir={root / 'A'}",
                   *SMALL, cwd=root)
    assert out.returncode == 0, out.stderr
    script = root / "failing.py"
    script.write_text(FAILING_JOB)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("RNNBENCH_DEBUG", None)
    out = subprocess.run([sys.executable, str(script), "-m", "cell=lstm", "cell.forget_bias=0,chrono",
                          "task.seq_len=6,7", "train.num_seeds=2", f"hydra.sweep.dir={root / 'B'}", *SMALL],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "2 job(s) failed" in out.stderr, out.stderr
    out = rnnbench("cell=rnn", "task.seq_len=6", "optim=sgd", "optim.lr=1e30", "optim.clip_norm=0",
                   f"hydra.run.dir={root / 'C' / 'diverged'}", *SMALL, cwd=root)
    assert out.returncode == 0, out.stderr
    out = rnnbench("cell=gru", "task.seq_len=9", f"hydra.run.dir={root / 'D' / 'killed'}", *SMALL, cwd=root,
                   env={"RNNBENCH_CRASH_AT": "metrics_written:10"})
    assert out.returncode == -9, out.stderr
    return root


@pytest.fixture(scope="module")
def built(sweeps):
    out = subprocess.run([sys.executable, "-m", "rnnbench.report", *(str(sweeps / d) for d in "ABCD")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rep = sweeps / "A" / "report"
    with (rep / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    return rep, rows, (rep / "report.md").read_text(), out.stdout


def _num(s: str) -> float | None:
    return None if s == "" else float(s)


def _summaries(root: Path) -> dict[str, dict]:
    return {str(p.parent): json.loads(p.read_text()) for p in root.rglob("summary.json") if "report" not in p.parts}


def test_csv_has_one_row_per_run_and_seed_with_the_runs_numbers(sweeps, built):
    _, rows, _, _ = built
    summaries = _summaries(sweeps)
    assert len(summaries) == 4 + 4 + 1 + 1
    assert len(rows) == sum(len(s["seeds"]) for s in summaries.values()) == 4 * 3 + 4 * 2 + 1 + 1
    for row in rows:
        s = summaries[row["run_dir"]]
        seed = next(x for x in s["seeds"] if x["seed"] == int(row["seed"]))
        assert (row["task"], int(row["seq_len"]), row["cell"]) == (s["task"], s["seq_len"], s["cell"])
        assert _num(row["eval_loss"]) == seed["eval_loss"]  # exact: repr round-trips
        assert _num(row["baseline_loss"]) == s["baseline_loss"]
        assert row["solved"] == str(seed["solved"])
        if seed["eval_loss"] is not None:
            assert _num(row["loss_ratio"]) == pytest.approx(seed["eval_loss"] / s["baseline_loss"], rel=1e-12)
        # an independent source: the last evaluation of that seed in metrics.jsonl
        metrics = [json.loads(line) for line in (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        mine = [m for m in metrics if m["seed"] == int(row["seed"]) and m["eval_loss"] is not None
                and math.isfinite(m["eval_loss"])]
        if s["status"] == "completed":
            assert mine[-1]["step"] == 30 and mine[-1]["eval_loss"] == seed["eval_loss"]
    by_status = {(r["job"], r["status"]) for r in rows}
    assert {("0", "completed"), ("diverged", "diverged"), ("killed", "stopped")} <= by_status
    assert sum(r["status"] == "failed" for r in rows) == 4  # B's two T=7 jobs, 2 seeds each
    assert all(r["error"] == "RuntimeError: injected failure" for r in rows if r["status"] == "failed")
    assert {r["seed_status"] for r in rows if r["job"] == "diverged"} == {"diverged"}


def test_variants_are_the_cell_plus_what_the_sweep_varied(built):
    _, rows, _, _ = built
    # num_seeds differs between the sweeps but is not a variant; the diverging run's optimiser is
    assert {r["variant"] for r in rows} == {"rnn", "gru", "lstm forget_bias=0", "lstm forget_bias=chrono",
                                            "rnn optim=sgd optim.clip_norm=0 optim.lr=1e30"}
    assert {r["variant"] for r in rows if r["cell"] == "lstm" and r["status"] == "completed"} == {
        "lstm forget_bias=0", "lstm forget_bias=chrono"}


def _loss_table(md: str, task: str) -> dict[tuple[str, int], tuple[float, float, float, int, int]]:
    section = md.split(f"\n## {task}\n", 1)[1].split("\n## ", 1)[0]
    table = section.split("(solved seeds / seeds):\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    Ts = [int(h.strip()[2:]) for h in table[0].strip("|").split("|")[1:-1]]
    out = {}
    assert table[-1].startswith("| *trivial baseline* |")
    for line in table[2:-1]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for T, cell in zip(Ts, cells[1:-1], strict=True):
            if cell != "-" and not re.fullmatch(r"- \((failed|stopped)\)", cell):
                m = re.fullmatch(r"(\S+) \[(\S+), (\S+)\] \((\d+)/(\d+) solved\)", cell)
                assert m, cell
                out[cells[0], T] = (*map(float, m.groups()[:3]), int(m[4]), int(m[5]))
    return out


def test_markdown_tables_equal_statistics_of_the_csv(built):
    _, rows, md, _ = built
    table = _loss_table(md, "adding")
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:  # only finished runs enter the tables: the killed gru T=9 run's seed does not
        if r["status"] in ("completed", "diverged"):
            groups.setdefault((r["variant"], int(r["seq_len"])), []).append(r)
    assert len(groups["gru", 9]) == 3
    assert set(table) == {k for k, rs in groups.items() if any(r["eval_loss"] for r in rs)}
    for key, (med, q1, q3, solved, n) in table.items():
        losses = np.array([float(r["eval_loss"]) for r in groups[key] if r["eval_loss"]])
        ref_q1, ref_med, ref_q3 = np.quantile(losses, [0.25, 0.5, 0.75])
        assert (med, q1, q3) == pytest.approx((ref_med, ref_q1, ref_q3), rel=6e-4)  # 4 significant digits
        assert (solved, n) == (sum(r["solved"] == "True" for r in groups[key]), len(groups[key]))


def _exact_mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided exact p: the share of all C(n+m, n) ways to split the pooled values whose U is at least
    as far from its mean n*m/2 as the observed one (no ties)."""
    pooled, n, m = a + b, len(a), len(b)

    def u_of(xs, ys):
        return sum(x > y for x in xs for y in ys)

    u_obs = u_of(a, b)
    dev = abs(u_obs - n * m / 2)
    splits = list(itertools.combinations(range(n + m), n))
    extreme = 0
    for idx in splits:
        xs = [pooled[i] for i in idx]
        ys = [pooled[i] for i in range(n + m) if i not in idx]
        extreme += abs(u_of(xs, ys) - n * m / 2) >= dev - 1e-12
    return extreme / len(splits)


def test_pairwise_p_values_equal_an_exact_permutation_test(built):
    _, rows, md, _ = built
    section = md.split("\n## adding\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if re.match(r"\| \d+ \|", ln)]
    assert lines, "the adding section has a pairwise table"
    seen = 0
    for line in lines:
        T, better, other, _, n, _, p = [c.strip() for c in line.strip("|").split("|")]
        a = [float(r["eval_loss"]) for r in rows if r["variant"] == better and r["seq_len"] == T and r["eval_loss"]]
        b = [float(r["eval_loss"]) for r in rows if r["variant"] == other and r["seq_len"] == T and r["eval_loss"]]
        assert n == f"{len(a)}, {len(b)}"
        assert np.median(a) <= np.median(b)  # the first is the one with the lower median
        if len(set(a + b)) == len(a + b):
            assert float(p) == pytest.approx(_exact_mann_whitney_p(a, b), rel=1e-3)
            seen += 1
    assert seen >= 2


def test_ranked_summary_follows_the_numbers(built):
    _, rows, md, _ = built
    section = md.split("\n## adding\n", 1)[1].split("\n## ", 1)[0]
    ranked = re.findall(r"^\d+\. \*\*(.+?)\*\*: solved (\d+)/(\d+) seeds", section, flags=re.M)
    variants = {r["variant"] for r in rows if r["eval_loss"]}
    assert [v for v, _, _ in ranked] and {v for v, _, _ in ranked} == variants | {
        r["variant"] for r in rows if r["seq_len"] and r["status"] != "no summary"}

    def key(v):  # solved seeds, then the geometric mean over lengths of median loss / baseline
        mine = [r for r in rows if r["variant"] == v and r["status"] in ("completed", "diverged")]
        solved = sum(r["solved"] == "True" for r in mine)
        ratios = []
        for T in sorted({r["seq_len"] for r in mine}):
            losses = [float(r["loss_ratio"]) for r in mine if r["seq_len"] == T and r["loss_ratio"]]
            if losses:
                ratios.append(np.median(losses))
        return (-solved, float(np.exp(np.mean(np.log(ratios)))) if ratios else math.inf)

    with_loss = [v for v, _, _ in ranked if key(v)[1] < math.inf]
    assert [key(v) for v in with_loss] == sorted(key(v) for v in with_loss)
    for v, solved, n in ranked:
        mine = [r for r in rows if r["variant"] == v and r["status"] in ("completed", "diverged")]
        assert (int(solved), int(n)) == (sum(r["solved"] == "True" for r in mine), len(mine))


def test_unfinished_runs_are_reported_with_their_status(built):
    _, _, md, stdout = built
    assert re.search(r"`diverged` \(rnn optim=sgd optim.clip_norm=0 optim.lr=1e30, adding, T=6\): 1 seed\(s\) "
                     r"diverged \(at step \d+\)", md)
    assert re.search(r"`killed` \(gru, adding, T=9\): \*\*stopped\*\*, killed while training", md)
    assert len(re.findall(r"\(lstm forget_bias=(0|chrono), adding, T=7\): \*\*failed\*\*, .*error: RuntimeError: "
                          r"injected failure", md)) == 2
    assert "| lstm forget_bias=0 | " in md and "- (failed)" in md
    assert "| stopped |" in stdout and "| failed |" in stdout


def test_a_run_whose_lock_is_held_is_still_running(sweeps, tmp_path):
    killed = sweeps / "D" / "killed"
    with open(killed / ".lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # as rnnbench.job holds it while training
        (run,) = report.collect([sweeps / "D"])
        assert run["status"] == "running"
    (run,) = report.collect([sweeps / "D"])
    assert run["status"] == "stopped"


def test_figures_are_non_blank_pngs(built):
    import matplotlib.image as mpimg

    rep, _, md, _ = built
    expected = {f"{kind}_adding.png" for kind in ("loss_vs_length", "solve_rate", "learning_curves", "gradient_flow",
                                                  "gradient_horizon")} | {"cost.png"}
    assert expected == {p.name for p in rep.glob("*.png")}
    for name in expected:
        data = (rep / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        img = mpimg.imread(rep / name)
        assert img.shape[0] > 200 and img.shape[1] > 300
        assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 20, f"{name} is nearly blank"
        assert f"]({name})" in md  # linked from the report
    assert not list(rep.glob(".report-*")), "no temporary files left behind"


def test_bad_directories_fail_in_one_line(tmp_path):
    for args, message in (([str(tmp_path / "nope")], "not a directory"), ([str(tmp_path)], "no summary.json under")):
        out = subprocess.run([sys.executable, "-m", "rnnbench.report", *args], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "report").exists()


def test_every_variant_against_a_reference(sweeps, tmp_path):
    built = report.build_report([sweeps / "A", sweeps / "B"], tmp_path / "rep", plots=False, reference="rnn")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {"report.md", "results.csv"}  # --no-plots
    section = md.split("\n## adding\n", 1)[1]
    table = section.split("Against the reference, `rnn`, at each length", 1)[1].split("\n\n")[1].splitlines()
    assert table[0].startswith("| T | reference | vs |")
    rows = built["rows"]
    for line in table[2:]:
        T, ref, other, _, n, _, p = [c.strip() for c in line.strip("|").split("|")]
        assert ref == "rnn"
        a = [r["eval_loss"] for r in rows if r["variant"] == "rnn" and str(r["seq_len"]) == T and r["eval_loss"]]
        b = [r["eval_loss"] for r in rows if r["variant"] == other and str(r["seq_len"]) == T and r["eval_loss"]
             and r["status"] == "completed"]
        assert n == f"{len(a)}, {len(b)}" and float(p) == pytest.approx(_exact_mann_whitney_p(a, b), rel=1e-3)
    others = {line.split("|")[3].strip() for line in table[2:]}
    assert others == {"gru", "lstm forget_bias=0", "lstm forget_bias=chrono"}
    out = subprocess.run([sys.executable, "-m", "rnnbench.report", str(sweeps / "A"), "--reference", "lstmm",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "rnnbench-report: error: --reference 'lstmm' is not a variant of these runs; they are: gru, rnn"]
    assert not (tmp_path / "bad").exists()
