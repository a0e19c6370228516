"""rnnbench: LSTM, GRU, bidirectional LSTM and their variants, compared with measurements.

Pure functional recurrent cells scanned with ``jax.lax.scan``, synthetic long-dependency tasks
generated on device, Hydra configs and W&B logging. Heavy libraries are imported by the submodules
that need them, so ``import rnnbench`` (and ``rnnbench --help``) stays fast.
"""

__version__ = "0.1.0"
