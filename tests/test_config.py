"""Every YAML in configs/ composes and builds; bad values are one-line ConfigErrors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from conftest import config_names
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from rnnbench.config import ConfigError, build_cell, build_optimizer, build_task, validate
from rnnbench.model import make_model


def test_config_groups_hold_the_fixed_names():
    assert {"rnn", "lstm", "gru", "bilstm", "bigru", "birnn"} <= set(config_names("cell"))
    assert {"adding", "copy"} <= set(config_names("task"))
    assert {"adam", "sgd", "rmsprop"} <= set(config_names("optim"))
    assert {"wandb", "none"} <= set(config_names("logger"))


@pytest.mark.parametrize("cell", config_names("cell"))
def test_every_cell_config_builds_and_runs(compose, cell):
    cfg = compose([f"cell={cell}", "task.seq_len=5", "model.hidden_size=3"])
    validate(cfg)
    factory, bidirectional = build_cell(cfg.cell)
    assert bidirectional == cell.startswith("bi")
    task = build_task(cfg.task)
    model = make_model(factory, hidden_size=3, output_dim=task.output_dim, readout=task.readout,
                       bidirectional=bidirectional)
    batch = task.sample(jax.random.key(0), 2)
    pred = model.apply(model.init(jax.random.key(1), task.input_dim), batch.x, batch.mask)
    assert pred.shape == (2, task.output_dim)
    assert bool(jnp.all(jnp.isfinite(pred)))


@pytest.mark.parametrize("task", config_names("task"))
def test_every_task_config_builds(compose, task):
    cfg = compose([f"task={task}"])
    default = build_task(cfg.task)
    # (tasks whose lengths vary by default, as Hochreiter & Schmidhuber's, range from seq_len upwards)
    assert (default.length_range or (default.seq_len,))[0] == cfg.task.seq_len
    assert 0 < default.solved_threshold < default.baseline_loss
    if default.generalises:  # rebuilt at another length, with the same widths
        longer = cfg.task.seq_len + 3
        t = build_task(compose([f"task={task}", f"task.seq_len={longer}"]).task)
        assert (t.length_range or (t.seq_len,))[0] == longer
        assert (t.input_dim, t.output_dim) == (default.input_dim, default.output_dim)
        assert 0 < t.solved_threshold < t.baseline_loss


@pytest.mark.parametrize("optim", config_names("optim"))
def test_every_optim_config_builds_and_updates(compose, optim):
    cfg = compose([f"optim={optim}"])
    opt = build_optimizer(cfg.optim, total_steps=10)
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    grads = {"w": jnp.full((2, 2), 0.5), "b": jnp.full(2, 0.5)}
    updates, _ = opt.update(grads, opt.init(params), params)
    # Every rule moves against the gradient on its first step.
    assert all(bool(jnp.all(u < 0)) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("group", ["logger", "sweep", "experiment"])
def test_every_other_config_composes(compose, group):
    for name in config_names(group):
        cfg = compose([f"{group}={name}"])
        validate(cfg)


def test_clip_norm_zero_disables_clipping(compose):
    big = {"w": jnp.full((3,), 100.0)}
    for clip, expect_clipped in [(1.0, True), (0.0, False)]:
        cfg = compose(["optim=sgd", "optim.momentum=0.0", "optim.lr=1.0", f"optim.clip_norm={clip}"])
        opt = build_optimizer(cfg.optim, total_steps=10)
        updates, _ = opt.update(big, opt.init(big), big)
        norm = float(jnp.linalg.norm(updates["w"]))
        assert norm == pytest.approx(1.0 if expect_clipped else float(jnp.linalg.norm(big["w"])), rel=1e-5)


def test_wandb_mode_follows_the_environment_then_the_command_line(compose, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert compose([]).logger.mode.value == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert compose([]).logger.mode.value == "disabled"
    assert compose(["logger.mode=online"]).logger.mode.value == "online"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["task.seq_len=-5"], "task.seq_len=-5"),
        (["task.seq_len=1"], "task.seq_len=1"),
        (["model.hidden_size=0"], "model.hidden_size=0"),
        (["train.steps=0"], "train.steps=0"),
        (["train.num_seeds=0"], "train.num_seeds=0"),
        (["model.dropout=1.0"], "model.dropout=1.0"),
        (["optim.lr=-1"], "optim.lr=-1"),
        (["optim.clip_norm=-1"], "optim.clip_norm=-1"),
        (["cell.kernel_init=zeroes"], "zeroes"),
        (["cell.forget_bias=abc"], "cell.forget_bias='abc'"),
        (["optim.schedule=linear"], "optim.schedule='linear'"),
        (["task=copy", "task.num_symbols=1"], "task.num_symbols=1"),
        (["cell=rnn", "cell.activation=sigmoid"], "activation='sigmoid'"),
    ],
)
def test_bad_values_are_one_line_config_errors(compose, overrides, needle):
    cfg = compose(overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
        build_task(cfg.task)
        build_cell(cfg.cell)
        build_optimizer(cfg.optim, total_steps=cfg.train.steps)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


@pytest.mark.parametrize("override", ["model.hiden_size=3", "seed=1.5", "logger.mode=ofline", "cell=foo",
                                      "train.steps=abc", "cell.forgt_bias=2", "train.seed_parallelism=pmap",
                                      "train.seed_parallel=map", "train.shard_seeds=maybe"])
def test_typos_and_wrong_types_fail_at_composition(compose, override):
    with pytest.raises((HydraException, OmegaConfBaseException)):
        compose([override])


def test_plugin_setting_falls_back_to_the_factory_default(compose):
    from omegaconf import OmegaConf

    from rnnbench.config import plugin_setting

    cfg = compose(["optim.clip_norm=0.5"])
    assert plugin_setting(cfg.optim, "optim", "clip_norm") == 0.5
    bare = OmegaConf.create({"_target_": "rnnbench.optim.adam"})  # a YAML that leaves clip_norm out
    assert plugin_setting(bare, "optim", "clip_norm") == 1.0
    assert plugin_setting(bare, "optim", "no_such_key", missing=0.0) == 0.0


def test_every_task_runs_with_every_cell_under_tracing(compose):
    """Every task x every cell config, as the CLI builds them: the model's loss on a task batch traced to
    shapes (jax.eval_shape: nothing is compiled or run), a float32 scalar. The training path of each cell
    and each task runs for real in test_cell_zoo, test_peephole and the task tests."""
    tasks = {}
    for name in config_names("task"):
        cfg = compose([f"task={name}"])
        task = build_task(cfg.task)
        if task.generalises and task.length_range is None:  # short, to keep the tracing cheap
            task = build_task(cfg.task, seq_len=max(24, cfg.task.seq_len // 8))
        tasks[name] = task
    for cell in config_names("cell"):
        factory, bidirectional = build_cell(compose([f"cell={cell}"]).cell)
        for name, task in tasks.items():
            model = make_model(factory, hidden_size=4, output_dim=task.output_dim, readout=task.readout,
                               bidirectional=bidirectional)

            def loss(key, model=model, task=task):
                batch = task.sample(key, 2)
                return task.loss(model.apply(model.init(key, task.input_dim), batch.x, batch.mask), batch)

            out = jax.eval_shape(loss, jax.random.key(0))
            assert out.shape == () and out.dtype == jnp.float32, (cell, name)
