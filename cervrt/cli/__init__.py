"""The ``cervrt`` command line: options become typed configs, the library does the work.

One module per command group (``data``: synth; ``train``: train, eval, pseudo-label; ``wsss``;
``export``; ``info``; ``infer``; ``bench``; ``demo``), each imported only when its command runs, so
that ``cervrt infer`` never imports torch. Every user-fixable problem (CervrtError) is printed as
one line ``error: ...`` with exit code 1; Ctrl-C prints ``interrupted`` and exits with 130.
"""

from __future__ import annotations

import click

from cervrt import __version__
from cervrt.cli._base import CONTEXT, CervrtGroup

__all__ = ["cli", "main"]

#: command -> ("module:attribute", the extra its imports need).
_COMMANDS = {
    "synth": ("cervrt.cli.data:synth", ""),
    "train": ("cervrt.cli.train:train", "train"),
    "eval": ("cervrt.cli.train:evaluate", "train"),
    "pseudo-label": ("cervrt.cli.train:pseudo_label_command", "train"),
    "wsss": ("cervrt.cli.wsss:wsss", "train"),
    "export": ("cervrt.cli.export:export_command", "train"),
    "info": ("cervrt.cli.info:info", "train"),
    "demo": ("cervrt.cli.demo:demo", "train"),
    "bench": ("cervrt.cli.bench:bench", "train"),
    "infer": ("cervrt.cli.infer:infer", ""),
    "adopt": ("cervrt.cli.adopt:adopt_command", ""),
    "serve": ("cervrt.cli.serve:serve_command", "serve"),
}


@click.group(cls=CervrtGroup, lazy=_COMMANDS, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="cervrt")
def cli() -> None:
    """cervrt: cervical precancer (normal, CIN 1-3) segmentation of H&E slides, from training to the scanner.

    \b
    Start with `cervrt demo`: it makes synthetic data, trains an HSP-Net for a
    couple of minutes, evaluates it and says where everything went.
    """


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="cervrt")
