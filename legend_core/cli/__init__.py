"""The ``legend`` command: batch work from the shell (``python -m legend_core`` works too)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from legend_core import config
from legend_core.review.policy import ACTIONS as REVIEW_ACTIONS

Handler = Callable[[argparse.Namespace], int]
REFUSAL_HELP = (
    "the harmless side of AdvBench-style sets: 'paper' (the paper's "
    f"{config.PAPER_REFUSAL!r}), 'varied' ({len(config.VARIED_REFUSALS)} refusals of ours, "
    "in turn: the best set in EVALUATION.md) or a refusal text"
)


class UserError(Exception):
    """An error whose message is for the user as it is: no traceback."""


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


def _load_model(args: argparse.Namespace, name: str | None = None):
    from legend_core.method.models import ModelLoadError, load_model

    try:
        return load_model(
            name or args.model,
            device=args.device,
            dtype=args.dtype,
            trust_remote_code=args.trust_remote_code,
            allow_download=args.allow_download or None,
        )
    except ModelLoadError as error:
        raise UserError(str(error)) from error


def _store(args: argparse.Namespace):
    from legend_core.data.store import Store

    return Store(args.db)


# --- build-direction ---------------------------------------------------------------------


def _read_contrast(args: argparse.Namespace):
    from legend_core.data.formats import read_contrast_set

    path = Path(args.contrast)
    refusal = config.refusals(args.refusal) if args.refusal else None
    return read_contrast_set(path, format=args.contrast_format, refusal=refusal), path.name


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
        for warning in report.warnings[:20]:
            print(f"warning: {warning}", file=sys.stderr)
        source = {"kind": "file", "name": Path(args.labelled).name, "format": report.format}
        return list(report.pairs), source
    from legend_core.data.store import PairText

    store = _store(args)
    info = store.get_dataset(args.labelled_dataset)
    frame = store.dataset_frame(args.labelled_dataset)
    pairs = [
        PairText(int(r.id), int(r.idx), r.prompt, r.chosen, r.rejected)
        for r in frame.itertuples(index=False)
    ]
    return pairs, {"kind": "dataset", "dataset_id": info.id, "name": info.name}


def cmd_build_direction(args: argparse.Namespace) -> int:
    from legend_core.method.directions import save_direction
    from legend_core.method.encode import EncodeSettings
    from legend_core.method.pipeline import build_direction

    items, source = _read_contrast(args)
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
    lm = _load_model(args)
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
            contrast_name=source,
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
        direction_id = _store(args).add_direction(direction)
        print(f"stored as direction {direction_id}")
    return 0


def _learn_from_labels(args, lm, settings, result, pairs, source):
    """``build-direction --labelled``: encode the labelled pairs at every layer, learn a
    direction from them (the contrastive direction as its prior), print the evidence."""
    from legend_core.method.labelled import ProbeSettings
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


# --- annotate ----------------------------------------------------------------------------


def cmd_annotate(args: argparse.Namespace) -> int:
    from legend_core.method.directions import load_direction
    from legend_core.method.margins import agreement

    if bool(args.pairs) == bool(args.dataset):
        raise UserError("give either --pairs FILE (with --out) or --dataset ID (stored data)")
    if args.pairs:
        if not args.out:
            raise UserError("--pairs needs --out FILE.jsonl")
        if not args.direction:
            raise UserError("--pairs needs --direction PATH")
        return _annotate_file(args, load_direction, agreement)
    return _annotate_stored(args, agreement)


def _annotate_file(args: argparse.Namespace, load_direction, agreement) -> int:
    from legend_core.data.formats import read_pairs
    from legend_core.method.pipeline import annotate_pairs

    report = read_pairs(args.pairs, format=args.format)  # a bad file fails before any model work
    direction = load_direction(args.direction)
    for warning in report.warnings[:20]:
        print(f"warning: {warning}", file=sys.stderr)
    pairs = report.pairs[: args.limit] if args.limit else report.pairs
    lm = _load_model(args, direction.model)
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
        f"positive margin (agrees with the human label): {agreement(values):.1%}"
    )
    _print_crossfit(direction, pairs)
    return 0


def _print_crossfit(direction, pairs) -> None:
    """Say so when some pairs were the direction's own training labels (cross-fitted)."""
    from legend_core.method.labelled import crossfit_note, fold_directions, pair_folds

    n = sum(f is not None for f in pair_folds(direction.labels, pairs))
    if n:
        print(crossfit_note(n, len(fold_directions(direction.labels))))


def _annotate_stored(args: argparse.Namespace, agreement) -> int:
    from legend_core.method.pipeline import annotate_dataset

    store = _store(args)
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
        lm = _load_model(args, direction.model)
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
        f"run {run_id}: {len(frame)} pairs; positive margin: "
        f"{agreement(frame['computed_margin'].to_numpy()):.1%}"
    )
    crossfit = store.get_run(run_id).settings.get("crossfit")
    if crossfit:
        from legend_core.method.labelled import crossfit_note

        print(crossfit_note(crossfit["pairs"], crossfit["k"]))
    return 0


# --- store commands ----------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    store = _store(args)
    mapping = dict(item.split("=", 1) for item in args.map) if args.map else None
    if args.contrast:
        from legend_core.data.formats import data_file_stem, read_contrast_set

        refusal = config.refusals(args.refusal) if args.refusal else None
        items = read_contrast_set(args.file, format=args.format, refusal=refusal)
        name = args.name or data_file_stem(args.file)
        set_id = store.add_contrast_set(name, items, source=args.file)
        print(f"contrast set {set_id}: {len(items)} items")
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
    store = _store(args)
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


def cmd_review(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.agreement:
        return _print_agreement(store, args.dataset)
    if args.pair is None:
        raise UserError("give --pair ID (or --agreement --dataset ID)")
    if args.action:
        if not args.annotator:
            raise UserError("--annotator NAME is required to add a review")
        store.add_review(
            args.pair,
            args.annotator,
            args.action,
            value=args.value,
            note=args.note or "",
            run_id=args.run,
        )
    for review in store.pair_history(args.pair):
        value = "" if review.value is None else f" {review.value:+.4f}"
        note = f"  ({review.note})" if review.note else ""
        run = f"  [run {review.run_id}]" if review.run_id is not None else ""
        print(f"{review.created_at}  {review.annotator}  {review.action}{value}{note}{run}")
    state = store.pair_state(args.pair, args.run, admins=_admins())
    label = "swapped" if state.flipped else "as imported"
    by = f", decided by {', '.join(state.decided_by)}" if state.decided_by else ""
    line = f"label: {label} ({state.label_source}{by}; {state.n_verdicts} verdicts)"
    if state.margin is not None:
        line += f"; margin {state.margin:+.4f} (relative to the exported chosen)"
    print(line + ("; flagged" if state.flagged else ""))
    return 0


def _admins() -> frozenset[str]:
    """Admins' names from the users file in login mode (their verdicts adjudicate)."""
    from legend_core.app.auth import admin_names, auth_file, load_config

    path = auth_file()
    if path is None:
        return frozenset()
    try:
        return admin_names(load_config(path))
    except ValueError as error:
        raise UserError(str(error)) from error


def _print_agreement(store, dataset_id: int | None) -> int:
    from legend_core.review.annotators import agreement_frame, pairwise_agreement

    if dataset_id is None:
        raise UserError("--agreement needs --dataset ID")
    frame = agreement_frame(pairwise_agreement(store.reviews_frame(dataset_id)))
    if frame.empty:
        print("no two annotators reviewed the same pairs yet")
    else:
        print(frame.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    import getpass

    from legend_core.app.auth import add_user, auth_file, set_blind_review

    path = Path(args.file) if args.file else auth_file()
    if path is None:
        raise UserError("give --file USERS.json (or set LEGEND_AUTH_FILE)")
    if args.user_command == "blind-review":
        set_blind_review(path, args.state == "on")
        print(f"blind review {args.state} in {path}")
        return 0
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
    add_user(path, args.username, password, args.role, name=args.name or "")
    print(f"user {args.username} ({args.role}) saved in {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from legend_core.data.exports import export_dataset

    store = _store(args)
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
        admins=_admins(),
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


def cmd_setup(args: argparse.Namespace) -> int:
    store = _store(args)
    print(f"database ready: {store.url}")
    if not args.no_model:
        lm = _load_model(args)
        print(f"model ready: {lm.label} ({lm.num_layers} layers, width {lm.hidden_size})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from legend_core.workflows.demo import load_demo

    store = _store(args)
    lm = None if args.data_only else _load_model(args)
    with progress_bar("demo") as progress:
        ids = load_demo(store, lm, progress=progress)
    print(
        f"demo ready: data set {ids.dataset_id}, contrastive set {ids.contrast_set_id}"
        + (f", direction {ids.direction_id}, margin run {ids.run_id}" if lm else "")
    )
    return 0


# --- evaluate ----------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Agreement with the human labels (with baselines) and the reward-model check."""
    from legend_core.evaluation import evaluate as ev

    if bool(args.run) == bool(args.pairs):
        raise UserError("give either --run ID (a stored margin run) or --pairs FILE --direction")
    if args.run:
        data = ev.load_run(_store(args), args.run)
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
            from legend_core.method.labelled import crossfit_note

            print(crossfit_note(s["crossfit"]["pairs"], s["crossfit"]["k"]))
        if chosen is None:
            print(
                f"{data.n_missing_embeddings} pairs have no cached embeddings: no random-"
                "direction baseline or reward-model check (annotate the data set again)"
            )
    else:
        values, chosen, rejected, lengths = _evaluate_file(args)
    report = ev.agreement_report(
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
    print(ev.agreement_text(report))
    check = None
    if chosen is not None and not args.no_reward_check:
        settings = ev.RewardSettings(
            head=args.head,
            lam=args.lam,
            seeds=args.seeds,
            test_fraction=args.test_fraction,
            margin_scale=args.scale,
            margin_bins=args.bins_scale,
        )
        with progress_bar("training reward heads") as progress:
            check = ev.reward_model_check(chosen, rejected, values, settings, progress)
        print("\nreward-model check (held-out accuracy against the human label):")
        print(ev.reward_text(check))
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

    With ``--embeddings FILE.npz`` the pair embeddings are kept in that file and reused
    while the pairs and the direction's encoder settings stay the same.
    """
    import hashlib

    import numpy as np

    from legend_core.data.formats import read_pairs
    from legend_core.evaluation import evaluate as ev
    from legend_core.method.directions import load_direction
    from legend_core.method.labelled import crossfit_note, direction_margins, fold_directions
    from legend_core.method.pipeline import check_compatible, pair_embeddings

    if not args.direction:
        raise UserError("--pairs needs --direction PATH (from legend build-direction)")
    report = read_pairs(args.pairs, format=args.format)
    direction = load_direction(args.direction)
    pairs = report.pairs[: args.limit] if args.limit else report.pairs
    digest = hashlib.sha256()
    for part in (
        direction.model_fingerprint,
        direction.layer,
        direction.template,
        direction.pooling,
        direction.max_length,
    ):
        digest.update(f"{part}\x1e".encode())
    for p in pairs:
        digest.update(f"{p.prompt}\x1f{p.chosen}\x1f{p.rejected}\x1e".encode())
    key = digest.hexdigest()
    cache = Path(args.embeddings) if args.embeddings else None
    chosen = rejected = None
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as saved:
            if str(saved["key"]) == key:
                chosen, rejected = saved["chosen"], saved["rejected"]
                print(f"embeddings from {cache}")
    if chosen is None:
        lm = _load_model(args, direction.model)
        check_compatible(lm, direction)
        with progress_bar("encoding pairs") as progress:
            chosen, rejected = pair_embeddings(lm, pairs, direction, progress=progress)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with open(cache, "wb") as handle:
                np.savez(handle, key=np.array(key), chosen=chosen, rejected=rejected)
    values, n_crossfit = direction_margins(
        pairs, chosen, rejected, direction.vector, direction.labels
    )
    if n_crossfit:
        print(crossfit_note(n_crossfit, len(fold_directions(direction.labels))))
    lengths = (
        ev.text_lengths([p.chosen for p in pairs]),
        ev.text_lengths([p.rejected for p in pairs]),
    )
    print(
        f"{len(pairs)} pairs ({report.format}) on direction {direction.name or args.direction}: "
        f"layer {direction.layer}, {direction.pooling} pooling, {direction.template} template"
    )
    return values, chosen, rejected, lengths


# --- parser ------------------------------------------------------------------------------


def _model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None, help="default, a local folder or a hub id")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    group.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"]
    )
    group.add_argument("--trust-remote-code", action="store_true", help="run the model's code")
    group.add_argument("--allow-download", action="store_true", help="fetch a hub model")


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", default=None, help=f"SQLAlchemy URL (default {config.database_url()})"
    )


def build_parser() -> argparse.ArgumentParser:
    from legend_core.method.directions import METHODS
    from legend_core.method.encode import POOLINGS, TEMPLATES

    parser = argparse.ArgumentParser(prog="legend", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    setup = commands.add_parser("setup", help="create or upgrade the database; ready the model")
    setup.add_argument("--no-model", action="store_true", help="skip the model")
    _model_options(setup)
    _db_option(setup)
    setup.set_defaults(handler=cmd_setup)

    demo = commands.add_parser("demo", help="load the demo data (and its direction and margins)")
    demo.add_argument("--data-only", action="store_true", help="import data only, no model")
    _model_options(demo)
    _db_option(demo)
    demo.set_defaults(handler=cmd_demo)

    build = commands.add_parser("build-direction", help="build a safety direction")
    build.add_argument("--out", required=True, help="path for DIRECTION.safetensors/.json")
    build.add_argument("--contrast", default=str(config.DEMO_CONTRAST), help="contrastive set")
    build.add_argument(
        "--contrast-format", default="auto", choices=["auto", "contrast", "advbench"]
    )
    build.add_argument(
        "--refusal",
        default=None,
        help=REFUSAL_HELP,
    )
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
    labels.add_argument(
        "--labelled-format",
        default="auto",
        choices=["auto", "hh-rlhf", "pku", "trl", "trl-conversational", "generic"],
    )
    labels.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    labels.add_argument(
        "--no-prior", action="store_true", help="learn from the labels alone (no contrastive prior)"
    )
    labels.add_argument(
        "--no-nested",
        action="store_true",
        help="skip the nested cross-validation (the number from pairs the choice never saw)",
    )
    _model_options(build)
    _db_option(build)
    build.set_defaults(handler=cmd_build_direction)

    annotate = commands.add_parser("annotate", help="compute margins of preference pairs")
    annotate.add_argument("--pairs", help="a preference file")
    annotate.add_argument("--direction", help="a direction file (from build-direction)")
    annotate.add_argument("--out", help="output JSONL (with --pairs)")
    annotate.add_argument(
        "--format",
        default="auto",
        choices=["auto", "hh-rlhf", "pku", "trl", "trl-conversational", "generic"],
    )
    annotate.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    annotate.add_argument("--dataset", type=int, help="a stored data set id (resumable)")
    annotate.add_argument("--direction-id", type=int, help="a stored direction id")
    annotate.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="where forward passes run"
    )
    annotate.add_argument("--ray-address", default=None, help="a Ray cluster (with --engine ray)")
    annotate.add_argument("--actors", type=int, default=1, help="model replicas on Ray")
    _model_options(annotate)
    _db_option(annotate)
    annotate.set_defaults(handler=cmd_annotate)

    imp = commands.add_parser("import", help="import a preference data set or contrastive set")
    imp.add_argument("file")
    imp.add_argument("--format", default="auto")
    imp.add_argument("--name", default=None)
    imp.add_argument("--map", nargs="*", help="column mapping, e.g. prompt=question")
    imp.add_argument("--contrast", action="store_true", help="the file is a contrastive set")
    imp.add_argument("--refusal", default=None, help=REFUSAL_HELP)
    _db_option(imp)
    imp.set_defaults(handler=cmd_import)

    lst = commands.add_parser("list", help="list stored data sets, directions and runs")
    _db_option(lst)
    lst.set_defaults(handler=cmd_list)

    review = commands.add_parser(
        "review",
        help="list or add reviews of a pair",
        description="Verdicts are about the pair as imported: accept (the imported chosen is "
        "safer), flip (the rejected is safer), override (a margin, its sign says which is "
        "safer), withdraw (take your verdict back); flag/unflag are apart. Your latest "
        "verdict replaces your earlier ones. Several annotators: see README, Reviews.",
    )
    review.add_argument("--pair", type=int)
    review.add_argument("--action", choices=list(REVIEW_ACTIONS))
    review.add_argument(
        "--value", type=float, help="the margin, for override (as imported; sign = safer side)"
    )
    review.add_argument(
        "--run",
        type=int,
        default=None,
        help="the margin run the pair was seen in: an override is read on its direction's "
        "scale (without it, on every run's); the summary uses its computed margin",
    )
    review.add_argument("--annotator")
    review.add_argument("--note")
    review.add_argument("--agreement", action="store_true", help="agreement between annotators")
    review.add_argument("--dataset", type=int, help="the data set, for --agreement")
    _db_option(review)
    review.set_defaults(handler=cmd_review)

    user = commands.add_parser("user", help="accounts for the app's login mode")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    add = user_commands.add_parser("add", help="add or replace a user")
    add.add_argument("username")
    add.add_argument("--role", choices=["admin", "annotator"], default="annotator")
    add.add_argument("--name", default="")
    add.add_argument("--file", default=None, help="users file (default $LEGEND_AUTH_FILE)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    blind = user_commands.add_parser("blind-review", help="hide others' margins until reviewed")
    blind.add_argument("state", choices=["on", "off"])
    blind.add_argument("--file", default=None)
    user.set_defaults(handler=cmd_user)

    export = commands.add_parser("export", help="export a margin run for reward-model training")
    export.add_argument("--run", type=int, required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--format", choices=["jsonl", "csv", "parquet"], default=None)
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
    from legend_core.method.margins import SCALE_DEFINITIONS, SCALES

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
    _db_option(export)
    export.set_defaults(handler=cmd_export)

    evaluate = commands.add_parser(
        "evaluate", help="does the margin agree with people, and does it help a reward model?"
    )
    evaluate.add_argument("--run", type=int, help="a stored margin run id")
    evaluate.add_argument("--pairs", help="a preference file (with --direction)")
    evaluate.add_argument("--direction", help="a direction file (from build-direction)")
    evaluate.add_argument(
        "--format",
        default="auto",
        choices=["auto", "hh-rlhf", "pku", "trl", "trl-conversational", "generic"],
    )
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    evaluate.add_argument("--embeddings", help="keep/reuse pair embeddings in this .npz file")
    evaluate.add_argument("--bins", type=int, default=5, help="bins of |margin|")
    evaluate.add_argument("--boot", type=int, default=2000, help="bootstrap replicates")
    evaluate.add_argument("--random-directions", type=int, default=200)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--no-reward-check", action="store_true")
    evaluate.add_argument("--head", choices=["linear", "mlp"], default="linear")
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
    _model_options(evaluate)
    _db_option(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)
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
