"""The ``legend`` command: batch work from the shell (``python -m legend_core`` works too).

Each command lives in the module of its concern (``directions``, ``annotate``, ``data``,
``review``, ``evaluate``), with its parser; ``common`` holds what they share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from legend_core.cli import annotate, data, directions, evaluate, review
from legend_core.cli.common import UserError


def build_parser() -> argparse.ArgumentParser:
    """The ``legend`` parser with every command (each sets its ``handler``)."""
    parser = argparse.ArgumentParser(prog="legend", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data.add_setup_parsers(commands)  # setup, demo
    directions.add_parser(commands)  # build-direction
    annotate.add_parser(commands)
    data.add_store_parsers(commands)  # import, list
    review.add_parsers(commands)  # review, user
    data.export_parser(commands)
    evaluate.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; user errors print one line and exit with status 2."""
    args: Any = build_parser().parse_args(argv)
    from legend_core.data.formats import FormatError
    from legend_core.method.distributed import EngineUnavailable

    try:
        return args.handler(args)
    except (UserError, FormatError, FileNotFoundError, ValueError, EngineUnavailable) as error:
        print(f"legend: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
