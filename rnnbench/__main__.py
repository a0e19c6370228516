"""``python -m rnnbench`` is the ``rnnbench`` command."""

from rnnbench.cli import main

main()
