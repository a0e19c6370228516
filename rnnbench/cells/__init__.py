"""Recurrent cells, one module per family; the Cell contract lives in ``base.py``.

A new cell is one module with a factory ``NAME(hidden_size, ...) -> Cell`` plus one
``configs/cell/NAME.yaml`` whose ``_target_`` names the factory; nothing else registers it.
"""

from rnnbench.cells.base import Cell

__all__ = ["Cell"]
