"""The cell catalogue: every ``configs/cell/*.yaml`` built as the CLI builds it, with its sizes.

``rnnbench-cells`` prints it. Each cell is composed through Hydra (defaults lists and interpolations
applied, as for a run), built with ``config.build_cell``, and measured from shapes only (nothing is
compiled), so the listing is exact for the given input, hidden and output sizes.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from rnnbench.config import build_cell, register_schemas


def _description(path: Path) -> str:
    """The cell's name and source from its config's first comment line, without the file pointer."""
    lines = path.read_text().splitlines()
    text = (lines[0] if lines else "").lstrip("#").strip()
    text = re.sub(r"\s*\(?rnnbench/\S+\)?\.?$", "", text)  # "(rnnbench/cells/x.py)" or "; rnnbench/..."
    text = re.sub(r";\s*(equations.*)?$", "", text)
    return text.rstrip(" ;.")


def cell_names(config_dir: str) -> list[str]:
    return sorted(p.stem for p in (Path(config_dir) / "cell").glob("*.yaml"))


def catalog(config_dir: str, *, input_dim: int, hidden_size: int, output_dim: int, readout: str = "last",
            budget: int | None = None, names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per cell config: name, description, direction, gates, parallel form, parameter counts.

    ``layer_params`` counts one layer (both directions when bidirectional); ``model_params`` adds the
    readout. With ``budget``, ``budget_hidden_size`` and ``budget_params`` are what
    ``model.param_budget=budget`` would choose.
    """
    import jax
    from hydra import compose, initialize_config_dir

    from rnnbench.model import count_params, hidden_size_for_budget, make_model

    register_schemas()
    rows = []
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        for name in names or cell_names(config_dir):
            cfg = compose("config", overrides=[f"cell={name}"])
            factory, bidirectional = build_cell(cfg.cell)
            model = make_model(factory, hidden_size=hidden_size, output_dim=output_dim, readout=readout,
                               bidirectional=bidirectional)
            shapes = jax.eval_shape(lambda k, m=model: m.init(k, input_dim), jax.random.key(0))
            cell = model.layers[0].forward
            gate_names: list[str] = []
            if cell.gates is not None:
                p = shapes["layers"][0]["fwd"] if bidirectional else shapes["layers"][0]
                carry = cell.initial_carry((1,))
                gx = jax.eval_shape(cell.project_input, p, jax.ShapeDtypeStruct((1, input_dim), jax.numpy.float32))
                gate_names = list(jax.eval_shape(cell.gates, p, carry, gx))
            row = {
                "cell": name,
                "description": _description(Path(config_dir) / "cell" / f"{name}.yaml"),
                "bidirectional": bidirectional,
                "gates": gate_names,
                "parallel": cell.parallel is not None,  # used by this cell on this backend
                "has_parallel_form": "mode" in inspect.signature(factory).parameters,
                "layer_params": count_params(shapes["layers"]),
                "model_params": count_params(shapes),
            }
            if budget is not None:
                h, n = hidden_size_for_budget(factory, budget, input_dim=input_dim, output_dim=output_dim,
                                              readout=readout, bidirectional=bidirectional)
                row.update(budget_hidden_size=h, budget_params=n)
            rows.append(row)
    return rows


def format_catalog(rows: list[dict[str, Any]], *, input_dim: int, hidden_size: int, output_dim: int,
                   budget: int | None = None) -> str:
    """The catalogue as a fixed-width text table."""
    head = ["cell", "description", "params", "gates", "parallel"]
    if budget is not None:
        head += [f"H @ {budget}", "params @ budget"]
    body = []
    for r in rows:
        line = [r["cell"], r["description"], f"{r['model_params']:,}", ",".join(r["gates"]) or "-",
                "on" if r["parallel"] else ("off here" if r["has_parallel_form"] else "-")]
        if budget is not None:
            line += [str(r["budget_hidden_size"]), f"{r['budget_params']:,}"]
        body.append(line)
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    right = {2, 5, 6}

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                               strict=True)))

    title = (f"{len(rows)} cells; params = one layer plus a linear readout, at input size {input_dim}, "
             f"hidden size {hidden_size}, output size {output_dim}\n"
             "parallel: the associative-scan form ('off here': cell.mode=auto chose the sequential form, as on CPU)")
    return "\n".join([title, "", fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])
