"""What every ``legend`` command shares: user errors, progress bars, the model and store
options and their loading."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, get_args

from legend_core import config

Handler = Callable[[argparse.Namespace], int]
REFUSAL_HELP = (
    "the harmless side of AdvBench-style sets: 'paper' (the paper's "
    f"{config.PAPER_REFUSAL!r}), 'varied' ({len(config.VARIED_REFUSALS)} refusals of ours, "
    "in turn: the best set in EVALUATION.md) or a refusal text"
)


class UserError(Exception):
    """An error whose message is for the user as it is: no traceback."""


def pair_format_choices() -> list[str]:
    """``--format`` choices of a preference file: ``auto`` and every format read."""
    from legend_core.data.formats import PAIR_FORMATS

    return ["auto", *PAIR_FORMATS]


@contextmanager
def progress_bar(description: str):
    """A tqdm bar on stderr, handed out as a ``progress(done, total)`` callback."""
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="text", file=sys.stderr, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def load_model(args: argparse.Namespace, name: str | None = None):
    """The model of the ``--model`` options (or ``name``, a direction's model)."""
    from legend_core.method.models import ModelLoadError
    from legend_core.method.models import load_model as load

    try:
        return load(
            name or args.model,
            device=args.device,
            dtype=args.dtype,
            trust_remote_code=args.trust_remote_code,
            allow_download=args.allow_download or None,
        )
    except ModelLoadError as error:
        raise UserError(str(error)) from error


def model_dtype(args: argparse.Namespace) -> str:
    """The dtype name ``load_model(args)`` will run in, known before loading it (an
    embedding cache's space records it, so a cached run needs no model at all)."""
    from legend_core.method.models import ModelLoadError, resolve_device, resolve_dtype

    try:
        return str(resolve_dtype(args.dtype, resolve_device(args.device))).removeprefix("torch.")
    except ModelLoadError as error:
        raise UserError(str(error)) from error


def open_store(args: argparse.Namespace):
    """The database of ``--db`` (created or upgraded on first use)."""
    from legend_core.data.store import Store

    return Store(args.db)


def admins() -> frozenset[str]:
    """Admins' names from the users file in login mode (their verdicts adjudicate)."""
    from legend_core.app.auth import admin_names, auth_file, load_config

    path = auth_file()
    if path is None:
        return frozenset()
    try:
        return admin_names(load_config(path))
    except ValueError as error:
        raise UserError(str(error)) from error


def model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--dtype`` and the two opt-ins of a command that loads one."""
    from legend_core.method.models import Device, DType

    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None, help="default, a local folder or a hub id")
    group.add_argument("--device", default="auto", choices=get_args(Device))
    group.add_argument("--dtype", default="auto", choices=get_args(DType))
    group.add_argument("--trust-remote-code", action="store_true", help="run the model's code")
    group.add_argument("--allow-download", action="store_true", help="fetch a hub model")


def db_option(parser: argparse.ArgumentParser) -> None:
    """``--db``: the database of a command that uses one."""
    parser.add_argument(
        "--db", default=None, help=f"SQLAlchemy URL (default {config.database_url()})"
    )


def print_warnings(warnings: Any, limit: int = 20) -> None:
    """A file's first ``limit`` warnings, on stderr."""
    for warning in list(warnings)[:limit]:
        print(f"warning: {warning}", file=sys.stderr)
