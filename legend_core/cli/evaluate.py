"""``legend evaluate``: does the margin agree with people (with baselines), and does it
help a reward model?"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, get_args

from legend_core import config
from legend_core.cli.common import (
    UserError,
    db_option,
    load_model,
    model_dtype,
    model_options,
    open_store,
    pair_format_choices,
    progress_bar,
)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Agreement with the human labels (with baselines) and the reward-model check."""
    from legend_core.evaluation.label_report import agreement_report
    from legend_core.evaluation.reports import agreement_text, load_run, reward_text
    from legend_core.evaluation.reward_check import RewardSettings, reward_model_check

    if bool(args.run) == bool(args.pairs):
        raise UserError("give either --run ID (a stored margin run) or --pairs FILE --direction")
    if args.run:
        data = load_run(open_store(args), args.run)
        if len(data.margins) == 0:
            raise UserError(f"margin run {args.run} has no margins yet: run legend annotate")
        values, chosen, rejected = data.margins, data.chosen, data.rejected
        lengths = (data.chosen_lengths, data.rejected_lengths)
        s = data.settings
        print(
            f"margin run {args.run}: {len(values)} pairs with a margin"
            + (f" ({data.n_missing} without, left out)" if data.n_missing else "")
            + f"; layer {s.get('layer')}, {s.get('pooling')} pooling, {s.get('template')} template"
        )
        if s.get("crossfit"):
            from legend_core.method.crossfit import crossfit_note

            print(crossfit_note(s["crossfit"]["pairs"], s["crossfit"]["k"]))
        if chosen is None:
            print(
                f"{data.n_missing_embeddings} pairs have no cached embeddings: no random-"
                "direction baseline or reward-model check (annotate the data set again)"
            )
    else:
        values, chosen, rejected, lengths = _evaluate_file(args)
    report = agreement_report(
        values,
        *lengths,
        chosen,
        rejected,
        bins=args.bins,
        n_boot=args.boot,
        n_directions=args.random_directions,
        seed=args.seed,
    )
    print("\nagreement with the human label (share of pairs with a positive margin, 95% CI):")
    print(agreement_text(report))
    check = None
    if chosen is not None and not args.no_reward_check:
        settings = RewardSettings(
            head=args.head,
            lam=args.lam,
            seeds=args.seeds,
            test_fraction=args.test_fraction,
            margin_scale=args.scale,
            margin_bins=args.bins_scale,
        )
        with progress_bar("training reward heads") as progress:
            check = reward_model_check(chosen, rejected, values, settings, progress)
        print("\nreward-model check (held-out accuracy against the human label):")
        print(reward_text(check))
    if args.json:
        out = {
            "agreement": report.rows(),
            "bins": report.bin_rows(),
            "reward_check": None if check is None else check.to_dict(),
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"\nwritten {args.json}")
    return 0


def _evaluate_file(args: argparse.Namespace):
    """Margins, embeddings and lengths of a preference file on a direction file.

    The pair embeddings go to the database's embedding cache (``--db``), as a margin
    run's do: a second run on the same pairs and encoder settings loads no model.
    """
    from legend_core.data.formats import read_pairs
    from legend_core.method.crossfit import crossfit_note, direction_margins, fold_directions
    from legend_core.method.directions import load_direction
    from legend_core.method.label_agreement import text_lengths
    from legend_core.workflows.embeddings import cached_pair_embeddings

    if not args.direction:
        raise UserError("--pairs needs --direction PATH (from legend build-direction)")
    if args.embeddings:
        print(
            "warning: --embeddings is deprecated and ignored: pair embeddings are cached "
            "in the database (--db) and reused from there",
            file=sys.stderr,
        )
    report = read_pairs(args.pairs, format=args.format)
    direction = load_direction(args.direction)
    pairs = report.pairs[: args.limit] if args.limit else report.pairs
    store = open_store(args)
    with progress_bar("encoding pairs") as progress:
        embedded = cached_pair_embeddings(
            store,
            pairs,
            direction,
            model_dtype(args),
            lambda: load_model(args, direction.model),
            progress=progress,
        )
    print(
        f"embeddings: {len(pairs) - embedded.encoded} pairs from the database's cache, "
        f"{embedded.encoded} encoded"
    )
    chosen, rejected = embedded.chosen, embedded.rejected
    values, n_crossfit = direction_margins(
        pairs, chosen, rejected, direction.vector, direction.labels
    )
    if n_crossfit:
        print(crossfit_note(n_crossfit, len(fold_directions(direction.labels))))
    lengths = (
        text_lengths([p.chosen for p in pairs]),
        text_lengths([p.rejected for p in pairs]),
    )
    print(
        f"{len(pairs)} pairs ({report.format}) on direction {direction.name or args.direction}: "
        f"layer {direction.layer}, {direction.pooling} pooling, {direction.template} template"
    )
    return values, chosen, rejected, lengths


def add_parser(commands: Any) -> None:
    """The ``evaluate`` command."""
    from legend_core.evaluation.reward_check import Head
    from legend_core.method.margins import SCALES

    evaluate = commands.add_parser(
        "evaluate", help="does the margin agree with people, and does it help a reward model?"
    )
    evaluate.add_argument("--run", type=int, help="a stored margin run id")
    evaluate.add_argument("--pairs", help="a preference file (with --direction)")
    evaluate.add_argument("--direction", help="a direction file (from build-direction)")
    evaluate.add_argument("--format", default="auto", choices=pair_format_choices())
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    evaluate.add_argument(
        "--embeddings",
        metavar="FILE",
        help="deprecated, ignored: pair embeddings are cached in the database (--db)",
    )
    evaluate.add_argument("--bins", type=int, default=5, help="bins of |margin|")
    evaluate.add_argument("--boot", type=int, default=2000, help="bootstrap replicates")
    evaluate.add_argument("--random-directions", type=int, default=200)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--no-reward-check", action="store_true")
    evaluate.add_argument("--head", choices=get_args(Head), default="linear")
    evaluate.add_argument("--lam", type=float, default=1.0, help="λ of the margin loss")
    evaluate.add_argument(
        "--scale",
        choices=SCALES,
        default=config.DEFAULT_MARGIN_SCALE,
        help="margin scale in the reward-model check, computed over the training pairs as "
        f"an export would (default {config.DEFAULT_MARGIN_SCALE}, the export's default)",
    )
    evaluate.add_argument(
        "--scale-bins",
        dest="bins_scale",
        type=int,
        default=config.DEFAULT_MARGIN_BINS,
        help="levels of |margin| for --scale bins",
    )
    evaluate.add_argument("--seeds", type=int, default=5)
    evaluate.add_argument("--test-fraction", type=float, default=0.3)
    evaluate.add_argument("--json", help="also write the tables to this JSON file")
    model_options(evaluate)
    db_option(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)
