"""Optimisers as optax chains: optional global-norm clipping, weight decay, then the update rule.

Each factory is the ``_target_`` of one ``configs/optim/NAME.yaml``; ``total_steps`` is filled in by
the trainer (``train.steps``) so that schedules know the run's length.

    clip_by_global_norm(clip_norm)            # skipped when clip_norm == 0
    -> decoupled weight decay on matrices     # AdamW-style; biases are not decayed
    -> adam | sgd(+momentum) | rmsprop, with learning rate schedule(step)

Schedules: ``constant`` (after optional linear warm-up) or ``cosine`` (warm-up, then cosine decay
to zero at ``total_steps``).
"""

from __future__ import annotations

import jax
import optax

SCHEDULES = ("constant", "cosine")


def _schedule(lr: float, schedule: str, warmup_steps: int, total_steps: int) -> optax.Schedule:
    if not lr > 0:
        raise ValueError(f"optim.lr={lr!r} must be > 0")
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={schedule!r} is not allowed; choose one of: {', '.join(SCHEDULES)}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"optim.warmup_steps={warmup_steps!r} must be in [0, train.steps={total_steps}]")
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(total_steps, 1), 0.0)
    if warmup_steps == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup_steps), optax.constant_schedule(lr)], [warmup_steps]
    )


def _chain(
    rule: optax.GradientTransformation, clip_norm: float, weight_decay: float, lr: optax.Schedule
) -> optax.GradientTransformation:
    if clip_norm < 0:
        raise ValueError(f"optim.clip_norm={clip_norm!r} must be >= 0 (0 disables clipping)")
    if weight_decay < 0:
        raise ValueError(f"optim.weight_decay={weight_decay!r} must be >= 0")
    parts = []
    if clip_norm > 0:
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(rule)
    if weight_decay > 0:
        # Decoupled (Loshchilov & Hutter): decay applied to the update, scaled by the schedule.
        def matrices(params):
            return jax.tree.map(lambda p: p.ndim > 1, params)

        parts.append(optax.add_decayed_weights(weight_decay, mask=matrices))
    parts.append(optax.scale_by_learning_rate(lr))
    return optax.chain(*parts)


def adam(
    total_steps: int,
    lr: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    clip_norm: float = 1.0,
    schedule: str = "constant",
    warmup_steps: int = 0,
) -> optax.GradientTransformation:
    """Adam (Kingma & Ba 2015); with ``weight_decay > 0`` it is AdamW."""
    lr_fn = _schedule(lr, schedule, warmup_steps, total_steps)
    return _chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), clip_norm, weight_decay, lr_fn)


def sgd(
    total_steps: int,
    lr: float = 0.1,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    clip_norm: float = 1.0,
    schedule: str = "constant",
    warmup_steps: int = 0,
) -> optax.GradientTransformation:
    """SGD with (heavy-ball or Nesterov) momentum; ``momentum=0`` is plain SGD."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"optim.momentum={momentum!r} must be in [0, 1)")
    lr_fn = _schedule(lr, schedule, warmup_steps, total_steps)
    rule = optax.trace(decay=momentum, nesterov=nesterov) if momentum > 0 else optax.identity()
    return _chain(rule, clip_norm, weight_decay, lr_fn)


def rmsprop(
    total_steps: int,
    lr: float = 1e-3,
    decay: float = 0.9,
    eps: float = 1e-8,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    clip_norm: float = 1.0,
    schedule: str = "constant",
    warmup_steps: int = 0,
) -> optax.GradientTransformation:
    """RMSProp (Tieleman & Hinton 2012), optionally with momentum."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"optim.momentum={momentum!r} must be in [0, 1)")
    lr_fn = _schedule(lr, schedule, warmup_steps, total_steps)
    rule = optax.scale_by_rms(decay=decay, eps=eps)
    if momentum > 0:
        rule = optax.chain(rule, optax.trace(decay=momentum))
    return _chain(rule, clip_norm, weight_decay, lr_fn)
