"""The store's commands: ``setup``, ``demo``, ``import``, ``list`` and ``export``."""

from __future__ import annotations

import argparse
from typing import Any

from legend_core import config
from legend_core.cli.common import (
    REFUSAL_HELP,
    admins,
    db_option,
    load_model,
    model_options,
    open_store,
    progress_bar,
)


def cmd_setup(args: argparse.Namespace) -> int:
    """Create or upgrade the database; load the model once (dequantizes the default)."""
    store = open_store(args)
    print(f"database ready: {store.url}")
    if not args.no_model:
        lm = load_model(args)
        print(f"model ready: {lm.label} ({lm.num_layers} layers, width {lm.hidden_size})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Load the demo data (and, with a model, its direction and margins)."""
    from legend_core.workflows.demo import load_demo

    store = open_store(args)
    lm = None if args.data_only else load_model(args)
    with progress_bar("demo") as progress:
        ids = load_demo(store, lm, progress=progress)
    print(
        f"demo ready: data set {ids.dataset_id}, contrastive set {ids.contrast_set_id}"
        + (f", direction {ids.direction_id}, margin run {ids.run_id}" if lm else "")
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import a preference data set (or, with ``--contrast``, a contrastive set)."""
    store = open_store(args)
    mapping = dict(item.split("=", 1) for item in args.map) if args.map else None
    if args.contrast:
        refusal = config.refusals(args.refusal) if args.refusal else None
        set_id = store.import_contrast_file(
            args.file, format=args.format, name=args.name, refusal=refusal, mapping=mapping
        )
        n_items = next(c.n_items for c in store.list_contrast_sets() if c.id == set_id)
        print(f"contrast set {set_id}: {n_items} items")
        return 0
    dataset_id, report = store.import_file(
        args.file, format=args.format, name=args.name, mapping=mapping
    )
    print(f"data set {dataset_id}: {len(report.pairs)} pairs ({report.format})")
    for warning in report.warnings:
        print(f"warning: {warning}")
    if report.duplicates:
        print(f"{len(report.duplicates)} duplicated pairs (first line, duplicate line):")
        for first, again in report.duplicates[:20]:
            print(f"  {first} = {again}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Stored data sets, directions and margin runs."""
    store = open_store(args)
    print("data sets:")
    for d in store.list_datasets():
        print(f"  {d.id:>4}  {d.name}  ({d.n_pairs} pairs)")
    print("directions:")
    for d in store.list_directions():
        print(f"  {d.id:>4}  {d.name}  {d.model} layer {d.layer} {d.pooling} {d.method}")
    print("margin runs:")
    for r in store.list_runs():
        print(f"  {r.id:>4}  data set {r.dataset_id}, direction {r.direction_id}, {r.status}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A margin run as a training file with its manifest."""
    from legend_core.data.exports import export_dataset

    store = open_store(args)
    margin_range = tuple(args.margin_range) if args.margin_range else None
    manifest = export_dataset(
        store,
        args.run,
        args.out,
        format=args.format,
        provenance=args.provenance,
        reviewed_only=args.reviewed_only,
        exclude_flagged=args.exclude_flagged,
        margin_range=margin_range,
        scale=args.scale,
        bins=args.bins,
        include_disputed=args.include_disputed,
        admins=admins(),
    )
    counts, margin = manifest["counts"], manifest["margin"]
    parameters = ", ".join(
        f"{k} {v:.4g}" for k, v in margin["parameters"].items() if isinstance(v, float)
    )
    left_out = counts.get("flagged_excluded", 0)
    print(
        f"{counts['rows']} rows -> {args.out} (manifest beside it); margins on the "
        f"{margin['scale']} scale"
        + (f" ({parameters})" if parameters else "")
        + (
            f"; {left_out} flagged pairs left out (--include-flagged keeps them)"
            if left_out
            else ""
        )
    )
    return 0


def add_setup_parsers(commands: Any) -> None:
    """The ``setup`` and ``demo`` commands."""
    setup = commands.add_parser("setup", help="create or upgrade the database; ready the model")
    setup.add_argument("--no-model", action="store_true", help="skip the model")
    model_options(setup)
    db_option(setup)
    setup.set_defaults(handler=cmd_setup)

    demo = commands.add_parser("demo", help="load the demo data (and its direction and margins)")
    demo.add_argument("--data-only", action="store_true", help="import data only, no model")
    model_options(demo)
    db_option(demo)
    demo.set_defaults(handler=cmd_demo)


def add_store_parsers(commands: Any) -> None:
    """The ``import`` and ``list`` commands."""
    import_parser(commands)
    lst = commands.add_parser("list", help="list stored data sets, directions and runs")
    db_option(lst)
    lst.set_defaults(handler=cmd_list)


def import_parser(commands: Any) -> None:
    """The ``import`` command."""
    from legend_core.data.formats import CONTRAST_FORMATS, PAIR_FORMATS

    imp = commands.add_parser("import", help="import a preference data set or contrastive set")
    imp.add_argument("file")
    imp.add_argument(
        "--format",
        default="auto",
        choices=["auto", *PAIR_FORMATS, *CONTRAST_FORMATS],
        help="a preference format, or with --contrast a contrastive one",
    )
    imp.add_argument("--name", default=None)
    imp.add_argument("--map", nargs="*", help="column mapping, e.g. prompt=question")
    imp.add_argument("--contrast", action="store_true", help="the file is a contrastive set")
    imp.add_argument("--refusal", default=None, help=REFUSAL_HELP)
    db_option(imp)
    imp.set_defaults(handler=cmd_import)


def export_parser(commands: Any) -> None:
    """The ``export`` command."""
    from legend_core.data.exports import EXPORT_FORMATS
    from legend_core.method.margins import SCALE_DEFINITIONS, SCALES

    export = commands.add_parser("export", help="export a margin run for reward-model training")
    export.add_argument("--run", type=int, required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--format", choices=EXPORT_FORMATS, default=None)
    export.add_argument("--provenance", action="store_true")
    export.add_argument("--reviewed-only", action="store_true")
    export.add_argument(
        "--include-disputed",
        action="store_true",
        help="keep disputed pairs (a tie between annotators), as imported, marked in the "
        "provenance column 'disputed' (left out by default)",
    )
    flagged = export.add_mutually_exclusive_group()
    flagged.add_argument(
        "--exclude-flagged",
        dest="exclude_flagged",
        action="store_true",
        help="leave out flagged pairs"
        + (" (the default)" if config.DEFAULT_EXCLUDE_FLAGGED else ""),
    )
    flagged.add_argument(
        "--include-flagged",
        dest="exclude_flagged",
        action="store_false",
        help="keep flagged pairs" + ("" if config.DEFAULT_EXCLUDE_FLAGGED else " (the default)"),
    )
    export.set_defaults(exclude_flagged=config.DEFAULT_EXCLUDE_FLAGGED)
    export.add_argument(
        "--margin-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="keep pairs whose margin (before scaling) lies in [LOW, HIGH]",
    )
    export.add_argument(
        "--scale",
        choices=SCALES,
        default=None,
        help=f"the margin column's scale, computed over the rows exported (default "
        f"{config.DEFAULT_MARGIN_SCALE}; see EVALUATION.md): "
        + "; ".join(f"{name}: {text}" for name, text in SCALE_DEFINITIONS.items()),
    )
    export.add_argument(
        "--bins",
        type=int,
        default=None,
        help=f"levels of |margin| for --scale bins (default {config.DEFAULT_MARGIN_BINS}); "
        "given alone it means --scale bins",
    )
    db_option(export)
    export.set_defaults(handler=cmd_export)
