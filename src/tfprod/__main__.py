"""``python -m tfprod``: the same as the ``tfprod`` command."""

from tfprod.cli import main

main()
