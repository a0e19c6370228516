"""Shared test set-up: strict JAX (equinox's habit), W&B off unless a test asks, the real Hydra config."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")

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
