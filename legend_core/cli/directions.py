"""``legend build-direction``: a direction from a contrastive set, optionally learned
further from labelled preference pairs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from legend_core import config
from legend_core.cli.common import (
    REFUSAL_HELP,
    UserError,
    db_option,
    load_model,
    model_options,
    open_store,
    pair_format_choices,
    print_warnings,
    progress_bar,
)


def quality_table(direction, chosen: int | None = None) -> str:
    """The per-layer quality of a direction as a plain-text table; * marks the chosen layer.

    The held-out columns are measured on items no fit saw; the layer is chosen on the
    cross-validated ones (cv_auroc, cv_sep), measured inside the training split.
    """
    chosen = direction.layer if chosen is None else chosen
    rows = [
        "layer  accuracy  auroc  separation  stability  length_r2  paired_acc  cv_auroc  cv_sep"
    ]
    for q in direction.quality:
        mark = "*" if q.layer == chosen else " "
        cv = (
            f"{q.cv_auroc:8.3f}  {q.cv_separation:6.2f}"
            if q.cv_auroc is not None and q.cv_separation is not None
            else f"{'n/a':>8}  {'n/a':>6}"
        )
        rows.append(
            f"{q.layer:>4}{mark}  {q.accuracy:8.3f}  {q.auroc:5.3f}  {q.separation:10.2f}  "
            f"{q.stability:9.3f}  {q.length_r2:9.3f}  {q.paired_accuracy:10.3f}  {cv}"
        )
    return "\n".join(rows)


def _labelled_pairs(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    """The labelled pairs of ``--labelled FILE`` or ``--labelled-dataset ID``, and where
    they came from (for the direction's provenance). Read before any model work."""
    if args.labelled:
        from legend_core.data.formats import read_pairs

        report = read_pairs(args.labelled, format=args.labelled_format)
        print_warnings(report.warnings)
        source = {"kind": "file", "name": Path(args.labelled).name, "format": report.format}
        return list(report.pairs), source
    from legend_core.data.store import PairText

    store = open_store(args)
    info = store.get_dataset(args.labelled_dataset)
    frame = store.dataset_frame(args.labelled_dataset)
    pairs = [
        PairText(int(r.id), int(r.idx), r.prompt, r.chosen, r.rejected)
        for r in frame.itertuples(index=False)
    ]
    return pairs, {"kind": "dataset", "dataset_id": info.id, "name": info.name}


def cmd_build_direction(args: argparse.Namespace) -> int:
    """Build, print the per-layer quality, optionally learn from labels, save."""
    from legend_core.data.formats import read_contrast_set
    from legend_core.method.directions import save_direction
    from legend_core.method.encode import EncodeSettings
    from legend_core.method.pipeline import build_direction

    refusal = config.refusals(args.refusal) if args.refusal else None
    items = read_contrast_set(args.contrast, format=args.contrast_format, refusal=refusal)
    labelled, labels_source = (
        _labelled_pairs(args) if args.labelled or args.labelled_dataset is not None else ([], {})
    )
    if labels_source:
        if args.folds < 2:
            raise UserError("--folds: cross-validation needs at least 2 folds")
        if len(labelled) < 2 * args.folds:
            raise UserError(
                f"learning from labels needs at least {2 * args.folds} labelled pairs "
                f"({args.folds} folds); {labels_source.get('name')} has {len(labelled)}"
            )
    lm = load_model(args)
    layer: int | str = args.layer if args.layer == "best" else int(args.layer)
    settings = EncodeSettings(args.template, args.pooling, args.max_length)
    with progress_bar("encoding contrastive set") as progress:
        result = build_direction(
            lm,
            items,
            settings,
            method=args.method,
            layer=layer,
            test_fraction=args.test_fraction,
            seed=args.seed,
            name=args.name or Path(args.out).stem,
            contrast_name=Path(args.contrast).name,
            progress=progress,
        )
    direction = result.direction
    print(quality_table(direction))
    q = direction.layer_quality
    print(
        f"\ncontrastive direction: model {lm.label}, layer {direction.layer}, "
        f"{direction.pooling} pooling, {direction.template} template, {direction.method}; "
        f"trained on {direction.n_train}, held out {direction.n_test}; held-out AUROC "
        f"{q.auroc:.3f}, accuracy {q.accuracy:.3f}"
    )
    if labelled:
        direction = _learn_from_labels(args, lm, settings, result, labelled, labels_source)
    path = save_direction(direction, args.out)
    print(f"saved {path} and {path.with_suffix('.json')}")
    if args.db_save:
        direction_id = open_store(args).add_direction(direction)
        print(f"stored as direction {direction_id}")
    return 0


def _learn_from_labels(args, lm, settings, result, pairs, source):
    """``build-direction --labelled``: encode the labelled pairs at every layer, learn a
    direction from them (the contrastive direction as its prior), print the evidence."""
    from legend_core.method.probe import ProbeSettings
    from legend_core.workflows import learning

    base = result.direction
    probe = learning.DEFAULT_PROBE
    if args.no_prior:
        probe = ProbeSettings(probe.c, 0.0, probe.debias_length, probe.balance_length)
    layers = None if args.layer == "best" else [int(args.layer)]
    print(f"\nlearning from {len(pairs)} labelled pairs ({source.get('name', '')})")
    with progress_bar("encoding labelled pairs") as progress:
        lset = learning.encode_labelled(
            lm, pairs, settings, source=source, layers=layers, progress=progress
        )
    with progress_bar("fitting probes") as progress:
        report = learning.learn(
            lset,
            probe,
            contrastive=result.vectors,
            k=args.folds,
            seed=args.seed,
            nested=not args.no_nested,
            progress=progress,
            default_layer=base.layer if layers is None else layers[0],
        )
    print(report.text())
    direction = learning.learned_direction(report, lset, base, name=base.name)
    learned = report.learned
    print(
        f"\nlearned direction: layer {direction.layer}, C {learned.c:g}, "
        f"{'pulled toward the contrastive direction' if probe.prior_weight else 'no prior'}, "
        f"lengths {'projected out' if probe.debias_length else 'kept'}; "
        f"{learned.n} labels in {learned.fold_vectors.shape[0]} folds (kept for cross-fitting)"
    )
    return direction


def add_parser(commands: Any) -> None:
    """The ``build-direction`` command."""
    from legend_core.data.formats import CONTRAST_FORMATS
    from legend_core.method.directions import METHODS
    from legend_core.method.encode import POOLINGS, TEMPLATES

    build = commands.add_parser("build-direction", help="build a safety direction")
    build.add_argument("--out", required=True, help="path for DIRECTION.safetensors/.json")
    build.add_argument("--contrast", default=str(config.DEMO_CONTRAST), help="contrastive set")
    build.add_argument("--contrast-format", default="auto", choices=["auto", *CONTRAST_FORMATS])
    build.add_argument("--refusal", default=None, help=REFUSAL_HELP)
    build.add_argument("--layer", default=config.DEFAULT_LAYER, help="an index or 'best'")
    build.add_argument("--pooling", default=config.DEFAULT_POOLING, choices=POOLINGS)
    build.add_argument("--template", default=config.DEFAULT_TEMPLATE, choices=TEMPLATES)
    build.add_argument("--method", default=config.DEFAULT_METHOD, choices=METHODS)
    build.add_argument("--max-length", type=int, default=config.DEFAULT_MAX_LENGTH)
    build.add_argument("--test-fraction", type=float, default=0.25)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--name", default="")
    build.add_argument("--db-save", action="store_true", help="also store it in the database")
    labels = build.add_argument_group(
        "learning from labels",
        "Fit the direction from labelled preference pairs (chosen = the safer response), "
        "the contrastive direction as its prior; see EVALUATION.md, issue 13",
    )
    given = labels.add_mutually_exclusive_group()
    given.add_argument("--labelled", metavar="FILE", help="a preference file with labels")
    given.add_argument(
        "--labelled-dataset", metavar="ID", type=int, help="a stored data set, as imported"
    )
    labels.add_argument("--labelled-format", default="auto", choices=pair_format_choices())
    labels.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    labels.add_argument(
        "--no-prior", action="store_true", help="learn from the labels alone (no contrastive prior)"
    )
    labels.add_argument(
        "--no-nested",
        action="store_true",
        help="skip the nested cross-validation (the number from pairs the choice never saw)",
    )
    model_options(build)
    db_option(build)
    build.set_defaults(handler=cmd_build_direction)
