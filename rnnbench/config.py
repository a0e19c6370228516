"""Config schemas (Hydra ConfigStore) and the one place a composed config becomes objects.

The structured part (``model``, ``train``, ``logger``, ``seed``) is typed by dataclasses, so a typo'd
key or ``seed=1.5`` fails at composition. The plug-in groups (``cell``, ``task``, ``optim``) are YAML
files with a ``_target_``: their keys are checked against the target factory's signature and type
hints here, so each plug-in's hyperparameters are declared once, in its own module.

Every check raises ``ConfigError`` with one line: the bad key and value, and what is allowed.
"""

# No `from __future__ import annotations`: OmegaConf reads the dataclass annotations at run time.
import functools
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A bad user-facing option; its message is one line."""


class WandbMode(Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class SeedParallelism(Enum):
    auto = "auto"
    vmap = "vmap"
    map = "map"
    loop = "loop"


@dataclass
class ModelConfig:
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    unroll: int = 1
    hoist_input: bool | None = None  # None: decided per backend (see rnnbench/scan.py)
    remat: bool = False  # recompute each step's gates in the backward pass (jax.checkpoint): less memory
    param_budget: int | None = None  # set: hidden_size is chosen so the model has ~this many parameters


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    num_seeds: int = 1
    eval_every: int = 100
    eval_size: int = 512
    seed_parallelism: SeedParallelism = SeedParallelism.auto
    shard_seeds: bool | None = None  # None: split the seeds across the devices when there are several and K fits
    progress: bool | None = None  # None: a progress bar when stderr is a terminal
    compile_cache: str | None = "~/.cache/rnnbench/jax"  # None: no persistent compilation cache
    tune_malloc: bool | None = None  # glibc malloc keeps freed memory for reuse (rnnbench/malloc.py); None: auto
    skip_nonfinite_updates: bool = False  # true: skip updates whose gradient is NaN/Inf instead of stopping the seed
    checkpoint_every: int = 500  # steps between checkpoints (at the next evaluation), and at the end; 0: none
    keep_checkpoints: int = 2  # the newest N checkpoints are kept
    rerun_failed: bool = False  # a run directory whose summary says "failed" is run again (else skipped)


@dataclass
class DiagnosticsConfig:
    every: int = 500  # 0: off
    batch_size: int = 64
    horizon_threshold: float = 1e-3
    jacobian_times: int = 3
    jacobian_spans: list[int] = field(default_factory=lambda: [1, 8])
    jacobian_batch: int = 16
    power_iters: int = 10


@dataclass
class EvalConfig:
    seq_lens: list[int] = field(default_factory=list)  # also evaluate the trained model at these lengths


@dataclass
class LoggerConfig:
    mode: WandbMode = WandbMode.offline
    project: str = "rnnbench"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 20.0
    fallback_offline: bool = False  # online W&B unusable (no key, no network): log offline instead of failing


@dataclass
class Config:
    cell: Any = MISSING
    task: Any = MISSING
    optim: Any = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0


def register_schemas() -> None:
    """Store the schema as ``rnnbench_schema`` for ``configs/config.yaml``'s defaults list."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="rnnbench_schema", node=Config)


# --- plug-ins: _target_ + keyword arguments, checked against the factory's signature ---------------

_RESERVED = {"_target_", "bidirectional"}


def _locate(path: str, group: str) -> Callable:
    module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"{group}._target_={path!r} cannot be imported") from None


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is inspect.Parameter.empty or hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def plugin_kwargs(node: DictConfig, group: str, injected: tuple[str, ...] = ()) -> tuple[Callable, dict[str, Any]]:
    """Resolve ``node._target_`` and check ``node``'s keys against its signature.

    ``injected`` names arguments the framework supplies (``hidden_size``, ``total_steps``): they may
    not be set in the config. Returns the factory and the checked keyword arguments.
    """
    if "_target_" not in node:
        raise ConfigError(f"{group} has no _target_: pick one with {group}=NAME")
    fn = _locate(str(node._target_), group)
    params = inspect.signature(fn).parameters
    hints = typing.get_type_hints(fn)
    allowed = [p for p in params if p not in injected]
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in _RESERVED}
    for key, value in kwargs.items():
        if key not in allowed:
            raise ConfigError(
                f"unknown key {group}.{key} for {node._target_}; allowed: {', '.join(allowed) or '(none)'}"
            )
        hint = hints.get(key, inspect.Parameter.empty)
        if not _type_ok(value, hint):
            raise ConfigError(f"{group}.{key}={value!r} has the wrong type: expected {_hint_name(hint)}")
    return fn, kwargs


def _call(fn: Callable, group: str, **kwargs) -> Any:
    try:
        return fn(**kwargs)
    except ValueError as e:  # factories raise one-line ValueErrors naming the key and value
        msg = str(e)
        if re.match(r"[A-Za-z_]\w*=", msg):  # "mode='fast' is not allowed" names a key of this group
            msg = f"{group}.{msg}"
        elif not msg.startswith(f"{group}.") and "=" not in msg:
            msg = f"{group}: {msg}"
        raise ConfigError(msg) from None


def build_cell(node: DictConfig) -> tuple[Callable, bool]:
    """``(cell_factory(hidden_size) -> Cell, bidirectional)``; the cell is built once to check it."""
    fn, kwargs = plugin_kwargs(node, "cell", injected=("hidden_size",))
    bidirectional = node.get("bidirectional", False)
    if not isinstance(bidirectional, bool):
        raise ConfigError(f"cell.bidirectional={bidirectional!r} has the wrong type: expected bool")
    _call(fn, "cell", hidden_size=1, **kwargs)
    return functools.partial(fn, **kwargs), bidirectional


def build_task(node: DictConfig, **overrides: Any):
    """The task; ``overrides`` replace config values (e.g. ``seq_len`` for length generalisation)."""
    fn, kwargs = plugin_kwargs(node, "task")
    kwargs.update(overrides)
    return _call(fn, "task", **kwargs)


def build_eval_tasks(node: DictConfig, task: Any, seq_lens: list[int]) -> dict[int, Any]:
    """The task rebuilt at each of ``eval.seq_lens`` (fixed lengths), for length generalisation."""
    if not seq_lens:
        return {}
    shown = f"eval.seq_lens={list(seq_lens)}"
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in seq_lens):
        raise ConfigError(f"{shown} must be positive integers")
    if not task.generalises:
        raise ConfigError(f"{shown} is not possible for task {task.name!r}: its sequences have one fixed length")
    params = inspect.signature(plugin_kwargs(node, "task")[0]).parameters
    fixed = {"length_range": None} if "length_range" in params else {}
    out = {}
    for n in seq_lens:
        try:
            other = build_task(node, seq_len=n, **fixed)
        except ConfigError as e:
            raise ConfigError(f"{shown}: {e}") from None
        if (other.input_dim, other.output_dim) != (task.input_dim, task.output_dim):
            raise ConfigError(f"{shown}: task {task.name!r} at seq_len={n} has other input/output widths")
        out[n] = other
    return out


def build_optimizer(node: DictConfig, total_steps: int):
    fn, kwargs = plugin_kwargs(node, "optim", injected=("total_steps",))
    return _call(fn, "optim", total_steps=total_steps, **kwargs)


def plugin_setting(node: DictConfig, group: str, key: str, missing: Any = None) -> Any:
    """The value a plug-in runs with for ``key``: the config's, else its factory's default."""
    fn, kwargs = plugin_kwargs(node, group)
    if key in kwargs:
        return kwargs[key]
    param = inspect.signature(fn).parameters.get(key)
    return missing if param is None or param.default is inspect.Parameter.empty else param.default


def _positive(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value < 1:
        raise ConfigError(f"{key}={value} must be a positive integer")


def validate(cfg: DictConfig) -> None:
    """Check the structured options that the schema's types cannot (ranges, resolvable values)."""
    try:
        OmegaConf.to_container(_without_hydra(cfg), resolve=True, throw_on_missing=True)
    except Exception as e:  # e.g. WANDB_MODE=ofline in the environment, read by logger.mode
        raise ConfigError(one_line(e)) from None
    for key in ("model.hidden_size", "model.num_layers", "model.unroll", "train.steps", "train.batch_size",
                "train.num_seeds", "train.eval_every", "train.eval_size"):
        _positive(cfg, key)
    if cfg.train.checkpoint_every < 0:
        raise ConfigError(f"train.checkpoint_every={cfg.train.checkpoint_every} must be >= 0 (0 turns checkpoints off)")
    _positive(cfg, "train.keep_checkpoints")
    budget = cfg.model.param_budget
    if budget is not None and budget < 1:
        raise ConfigError(f"model.param_budget={budget} must be a positive integer (or null to use model.hidden_size)")
    if cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed} must be >= 0")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"model.dropout={cfg.model.dropout} must be in [0, 1)")
    d = cfg.diagnostics
    if d.every < 0:
        raise ConfigError(f"diagnostics.every={d.every} must be >= 0 (0 turns diagnostics off)")
    for key in ("diagnostics.batch_size", "diagnostics.jacobian_times", "diagnostics.jacobian_batch",
                "diagnostics.power_iters"):
        _positive(cfg, key)
    if not 0.0 < d.horizon_threshold < 1.0:
        raise ConfigError(f"diagnostics.horizon_threshold={d.horizon_threshold} must be in (0, 1)")
    if not d.jacobian_spans or any(s < 1 for s in d.jacobian_spans):
        raise ConfigError(f"diagnostics.jacobian_spans={list(d.jacobian_spans)} must be positive step counts")
    if cfg.logger.init_timeout <= 0:
        raise ConfigError(f"logger.init_timeout={cfg.logger.init_timeout} must be > 0 seconds")


def _without_hydra(cfg: DictConfig) -> DictConfig:
    """The job's config (the ``hydra`` node is there only when composed with return_hydra_config)."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python (enums as strings): what W&B and config.yaml record."""
    return OmegaConf.to_container(_without_hydra(cfg), resolve=True, enum_to_str=True)


def one_line(e: BaseException) -> str:
    """An exception's message on one line (OmegaConf and Hydra messages span several)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("full_key:", "object_type", "reference_type"))]
    return "; ".join(keep or lines) or type(e).__name__

