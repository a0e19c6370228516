"""Shared test set-up: strict JAX (equinox's habit), W&B off unless a test asks, the real Hydra config."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
# Test programs are tiny and mostly run once: compiling them dominates the suite. XLA:CPU's backend
# optimisations (LLVM -O2, fusion emitters) make compiles ~3-5x slower and change results only by
# float rounding, which every comparison here tolerates (exact-equality tests compare runs of one
# program). RNNBENCH_TEST_XLA_FLAGS="" runs the suite with XLA's defaults.
os.environ["XLA_FLAGS"] = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), os.environ.get(
    "RNNBENCH_TEST_XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1")) if f)

from pathlib import Path

import jax
import pytest

from rnnbench.cli import config_dir
from rnnbench.config import register_schemas

jax.config.update("jax_numpy_rank_promotion", "raise")

CONFIG_DIR = Path(config_dir())


@pytest.fixture(autouse=True, scope="session")
def _compile_cache(tmp_path_factory):
    """A persistent compilation cache for this session only: tests that rebuild the same program
    (determinism, seeds alone vs together) compile it once, and nothing leaks between sessions."""
    path = tmp_path_factory.mktemp("jax-cache")
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    os.environ["RNNBENCH_COMPILE_CACHE"] = str(path)  # subprocesses (CLI tests) share it
    yield


def config_names(group: str) -> list[str]:
    """Every option of a config group, found by globbing (the tests pick up new plug-ins themselves)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.fixture(scope="session")
def compose():
    """Compose the real Hydra config, as the CLI does: ``compose(["cell=gru", ...])``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schemas()

    def _compose(overrides=()):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose("config", overrides=list(overrides), return_hydra_config=True)

    return _compose
