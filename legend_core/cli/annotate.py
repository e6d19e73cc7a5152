"""``legend annotate``: margins of a preference file, or of a stored data set (resumable,
locally or on Ray)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from legend_core.cli.common import (
    UserError,
    db_option,
    load_model,
    model_options,
    open_store,
    pair_format_choices,
    print_warnings,
    progress_bar,
)
from legend_core.method.label_agreement import agreement_share


def cmd_annotate(args: argparse.Namespace) -> int:
    """Margins of ``--pairs FILE`` into ``--out``, or a margin run of ``--dataset ID``."""
    if bool(args.pairs) == bool(args.dataset):
        raise UserError("give either --pairs FILE (with --out) or --dataset ID (stored data)")
    if args.pairs:
        if not args.out:
            raise UserError("--pairs needs --out FILE.jsonl")
        if not args.direction:
            raise UserError("--pairs needs --direction PATH")
        return _annotate_file(args)
    return _annotate_stored(args)


def _annotate_file(args: argparse.Namespace) -> int:
    from legend_core.data.formats import read_pairs
    from legend_core.method.directions import load_direction
    from legend_core.method.pipeline import annotate_pairs

    report = read_pairs(args.pairs, format=args.format)  # a bad file fails before any model work
    direction = load_direction(args.direction)
    print_warnings(report.warnings)
    pairs = report.pairs[: args.limit] if args.limit else report.pairs
    lm = load_model(args, direction.model)
    with progress_bar("encoding pairs") as progress:
        values = annotate_pairs(lm, pairs, direction, progress=progress)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        for pair, margin in zip(pairs, values):
            row = {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
            row["margin"] = float(margin)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(
        f"{len(pairs)} pairs ({report.format}) -> {out}; "
        "agreement with the human label (positive margin; zero counts ½): "
        f"{agreement_share(values):.1%}"
    )
    _print_crossfit(direction, pairs)
    return 0


def _print_crossfit(direction, pairs) -> None:
    """Say so when some pairs were the direction's own training labels (cross-fitted)."""
    from legend_core.method.crossfit import crossfit_note, fold_directions, pair_folds

    n = sum(f is not None for f in pair_folds(direction.labels, pairs))
    if n:
        print(crossfit_note(n, len(fold_directions(direction.labels))))


def _annotate_stored(args: argparse.Namespace) -> int:
    from legend_core.workflows.annotate import annotate_dataset

    store = open_store(args)
    if args.direction_id is None:
        raise UserError("--dataset needs --direction-id ID (a stored direction)")
    direction = store.get_direction(args.direction_id)
    lm, engine, model_dtype = None, None, None
    if args.engine == "ray":
        from legend_core.method.distributed import actor_dtype, ray_engine

        device = "cpu" if args.device == "auto" else args.device
        # Resolved here, once: every actor runs in it and the cache records it.
        model_dtype = actor_dtype(args.dtype, device)
        engine = ray_engine(
            direction,
            address=args.ray_address,
            actors=args.actors,
            device=device,
            dtype=model_dtype,
            trust_remote_code=args.trust_remote_code,
        )
    else:
        lm = load_model(args, direction.model)
    with progress_bar("annotating") as progress:
        run_id = annotate_dataset(
            store,
            lm,
            args.dataset,
            args.direction_id,
            progress=progress,
            engine=engine,
            model_dtype=model_dtype,
        )
    frame = store.run_frame(run_id)
    print(
        f"run {run_id}: {len(frame)} pairs; agreement (positive margin; zero counts ½): "
        f"{agreement_share(frame['computed_margin'].to_numpy()):.1%}"
    )
    crossfit = store.get_run(run_id).settings.get("crossfit")
    if crossfit:
        from legend_core.method.crossfit import crossfit_note

        print(crossfit_note(crossfit["pairs"], crossfit["k"]))
    return 0


def add_parser(commands: Any) -> None:
    """The ``annotate`` command."""
    annotate = commands.add_parser("annotate", help="compute margins of preference pairs")
    annotate.add_argument("--pairs", help="a preference file")
    annotate.add_argument("--direction", help="a direction file (from build-direction)")
    annotate.add_argument("--out", help="output JSONL (with --pairs)")
    annotate.add_argument("--format", default="auto", choices=pair_format_choices())
    annotate.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    annotate.add_argument("--dataset", type=int, help="a stored data set id (resumable)")
    annotate.add_argument("--direction-id", type=int, help="a stored direction id")
    annotate.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="where forward passes run"
    )
    annotate.add_argument("--ray-address", default=None, help="a Ray cluster (with --engine ray)")
    annotate.add_argument("--actors", type=int, default=1, help="model replicas on Ray")
    model_options(annotate)
    db_option(annotate)
    annotate.set_defaults(handler=cmd_annotate)
