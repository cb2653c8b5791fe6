"""``python -m cervrt`` is the ``cervrt`` command."""

from cervrt.cli import main

main()
