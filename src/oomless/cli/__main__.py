"""``python -m oomless.cli``: the ``oomless`` command without its console script."""

from . import main

main(prog_name="oomless")
