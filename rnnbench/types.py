"""Notation key and type aliases shared by every module (the recurrentgemma habit).

Shapes are written in these letters throughout the docstrings:

    B  batch            T  time (sequence length)     D  input features
    H  hidden units     G  gate pre-activations (G = n_gates * H)
    K  seeds trained together in one program         O  output features (readout)

Arrays are batch-major, ``[B, T, D]``; ``scan.py`` moves time to the front for ``lax.scan`` and back.
A mask is ``[B, T]`` bool, True on real steps and False on padding after a sequence's end.
"""

from __future__ import annotations

from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a pytree of arrays
Carry = Any  # a pytree of [B, ...] arrays: h for RNN/GRU, (c, h) for LSTM
