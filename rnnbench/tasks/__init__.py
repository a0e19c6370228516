"""Synthetic long-dependency tasks, one module per task; the Task contract lives in ``base.py``.

A new task is one module with a factory returning a ``Task`` plus one ``configs/task/NAME.yaml``.
"""

from rnnbench.tasks.base import Batch, Task

__all__ = ["Batch", "Task"]
