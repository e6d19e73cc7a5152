"""Export a margin run as a reward-model training set, with a manifest beside it.

Rows are TRL-ready: ``prompt``, ``chosen``, ``rejected`` and a float ``margin`` on every
row (TRL's RewardTrainer subtracts it inside the loss ``-log σ(r_c - r_r - m)``). Reviews
are applied as :mod:`legend_core.review.policy` resolves them (admins' names given by the
caller): a pair whose label is flipped is exported with chosen and rejected swapped, and
the margin is always relative to the *exported* chosen response (so it is negated when
swapped; an override, typed as the pair was shown, as imported, is negated too). Disputed
pairs (a tie between annotators) are left out unless asked for. Pairs with no margin yet
(an unfinished run) are left out and counted in the manifest.

The margin column is put on a training scale (``margins.scale``: ``none``, ``rms``,
``std``, ``minmax`` or ``bins``; default ``config.DEFAULT_MARGIN_SCALE``) computed over the
rows exported, after every filter; the manifest records the scale and its parameters (the
RMS used, the bin edges, ...), so the file says how its margins relate to the projections.

Files are safe to open: each is written to a temporary file beside it, flushed, then renamed
(a crash never leaves half a file under its name), and in CSV a text cell that a spreadsheet
would run as a formula is neutralised (:func:`csv_safe`); JSONL and Parquet keep the text.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Collection
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pandas as pd

from legend_core import __version__, config
from legend_core.data.files import SUFFIXES, json_safe
from legend_core.method.margins import SCALE_DEFINITIONS, SCALES
from legend_core.method.margins import scale as rescale
from legend_core.review.policy import LABEL_SOURCES, POLICY_TEXT
from legend_core.util import file_sha256

if TYPE_CHECKING:
    from legend_core.data.store import Store

ExportFormat = Literal["jsonl", "csv", "parquet"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
#: The suffixes an export can be written as: a view of the one table, ``files.SUFFIXES``.
_SUFFIXES = {suffix: kind for suffix, kind in SUFFIXES.items() if kind in EXPORT_FORMATS}
#: How a CSV cell starts when a spreadsheet would run it as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_GUARD_RULE = (
    "In CSV only, a text cell beginning with =, +, -, @, a tab or a carriage return (which a "
    "spreadsheet would run as a formula), or with ', begins with one more ' so that it opens "
    "as text (OWASP). Numbers are written as they are. To get the exact text back, remove the "
    "first character of every text cell that begins with '. JSONL and Parquet keep the exact "
    "text."
)

TRL_COLUMNS = ["prompt", "chosen", "rejected", "margin"]
PROVENANCE_COLUMNS = [
    "pair_id",
    "direction_id",
    "model",
    "layer",
    "computed_margin",
    "reviewed_margin",
    "label_source",
    "decided_by",
    "n_verdicts",
    "disputed",
    "flagged",
    "flipped",
]


def _select(
    store: Store,
    run_id: int,
    provenance: bool,
    reviewed_only: bool,
    exclude_flagged: bool,
    margin_range: tuple[float, float] | None,
    scale: str | None,
    bins: int | None,
    include_disputed: bool = False,
    admins: Collection[str] = frozenset(),
) -> tuple[pd.DataFrame, dict[str, int], dict[str, Any]]:
    """The export table, what was left out and why, and the margin's scale (name and
    parameters, computed on the rows kept)."""
    scale, bins = resolve_scale(scale, bins)
    if margin_range is not None:
        lo, hi = (float(x) for x in margin_range)
        if not lo <= hi:
            raise ValueError(
                f"margin_range must be (low, high) with low <= high; got {margin_range}"
            )
    run = store.get_run(run_id)
    frame = store.run_frame(run_id, admins=frozenset(admins))
    counts = {"pairs_in_dataset": len(frame)}

    def keep(mask: pd.Series, reason: str) -> pd.DataFrame:
        counts[reason] = int((~mask).sum())
        return frame[mask]

    frame = keep(frame["effective_margin"].notna(), "missing_margin_excluded")
    if not include_disputed:
        frame = keep(~frame["disputed"], "disputed_excluded")
    if reviewed_only:
        frame = keep(frame["n_verdicts"] > 0, "unreviewed_excluded")
    if exclude_flagged:
        frame = keep(~frame["flagged"], "flagged_excluded")
    if margin_range is not None:
        frame = keep(frame["effective_margin"].between(lo, hi), "out_of_range_excluded")

    flipped = frame["flipped"].to_numpy(dtype=bool)
    chosen, rejected = frame["chosen"].to_numpy(), frame["rejected"].to_numpy()
    out = pd.DataFrame(
        {
            "prompt": frame["prompt"].to_numpy(),
            "chosen": np.where(flipped, rejected, chosen),
            "rejected": np.where(flipped, chosen, rejected),
            "margin": frame["effective_margin"].to_numpy(dtype=np.float64),
        }
    )
    for column in ("prompt", "chosen", "rejected"):
        out[column] = out[column].astype(str)

    # The scale's statistics come from the rows kept: the file describes itself.
    unscaled = out["margin"].to_numpy()
    scaled = rescale(unscaled, scale, bins)
    out["margin"] = scaled.values
    if provenance and scale != "none":
        out["margin_unscaled"] = unscaled

    if provenance:
        computed = frame["computed_margin"].to_numpy(dtype=np.float64)
        direction = store.get_direction(run.direction_id)
        out["pair_id"] = frame["pair_id"].to_numpy(dtype=np.int64)
        out["direction_id"] = np.int64(run.direction_id)
        out["model"] = direction.model
        out["layer"] = np.int64(direction.layer)
        out["computed_margin"] = np.where(flipped, -computed, computed)
        override = frame["override_margin"].to_numpy(dtype=np.float64)
        out["reviewed_margin"] = np.where(flipped, -override, override)
        out["label_source"] = frame["label_source"].astype(str).to_numpy()
        out["decided_by"] = frame["decided_by"].astype(str).to_numpy()
        out["n_verdicts"] = frame["n_verdicts"].to_numpy(dtype=np.int64)
        out["disputed"] = frame["disputed"].to_numpy(dtype=bool)
        out["flagged"] = frame["flagged"].to_numpy(dtype=bool)
        out["flipped"] = flipped

    counts["rows"] = len(out)
    counts["flipped"] = int(flipped.sum())
    counts["overridden"] = int(frame["override_margin"].notna().sum())
    counts["flagged"] = int(frame["flagged"].sum())
    counts["disputed"] = int(frame["disputed"].sum())
    for source in LABEL_SOURCES:
        counts[f"label_{source}"] = int((frame["label_source"] == source).sum())
    return out.reset_index(drop=True), counts, {"name": scale, "parameters": scaled.parameters}


def resolve_scale(scale: str | None, bins: int | None) -> tuple[str, int | None]:
    """The margin scale an export uses: ``scale`` if given; else ``bins`` when a number of
    bins is given (the older ``bins=N`` option); else ``config.DEFAULT_MARGIN_SCALE``.

    Returns:
        (scale, bins), bins being None unless the scale is ``bins``.

    Raises:
        ValueError: An unknown scale, a bad number of bins, or bins with another scale.
    """
    if scale is None:
        scale = "bins" if bins is not None else config.DEFAULT_MARGIN_SCALE
    if scale not in SCALES:
        raise ValueError(f"unknown margin scale {scale!r}; use {', '.join(SCALES)}")
    if scale != "bins":
        if bins is not None:
            raise ValueError(f"bins is for the 'bins' scale only, not {scale!r}")
        return scale, None
    bins = config.DEFAULT_MARGIN_BINS if bins is None else bins
    if isinstance(bins, bool) or not isinstance(bins, (int, float, np.number)):
        raise ValueError(f"bins must be an integer of at least 2; got {bins!r}")
    if int(bins) != bins or bins < 2:
        raise ValueError(f"bins must be an integer of at least 2; got {bins!r}")
    return scale, int(bins)


def export_frame(
    store: Store,
    run_id: int,
    provenance: bool = False,
    reviewed_only: bool = False,
    exclude_flagged: bool = config.DEFAULT_EXCLUDE_FLAGGED,
    margin_range: tuple[float, float] | None = None,
    scale: str | None = None,
    bins: int | None = None,
    include_disputed: bool = False,
    admins: Collection[str] = frozenset(),
) -> pd.DataFrame:
    """A margin run as a TRL-ready table, reviews applied.

    Args:
        store: The store holding the run.
        run_id: The margin run.
        provenance: Add pair_id, direction_id, model, layer, computed_margin and
            reviewed_margin (the override that set the margin, NaN if none; both relative
            to the exported chosen), label_source (``review_policy.LABEL_SOURCES``),
            decided_by (names joined by ", "), n_verdicts, disputed, flagged and flipped.
        reviewed_only: Keep only pairs someone holds a current verdict on (reviews made
            in any run of the pair count).
        exclude_flagged: Leave out flagged pairs (``config.DEFAULT_EXCLUDE_FLAGGED``).
        margin_range: Keep pairs whose effective margin (before scaling) lies in
            [low, high].
        scale: The margin's scale, one of ``margins.SCALES`` (see ``margins.scale``),
            computed over the rows kept; default ``config.DEFAULT_MARGIN_SCALE``, or
            ``bins`` when only ``bins`` is given. With ``provenance`` and a scale other
            than ``none``, the margin before scaling is kept as margin_unscaled.
        bins: Levels of ``|margin|`` for the ``bins`` scale (default
            ``config.DEFAULT_MARGIN_BINS``).
        include_disputed: Keep disputed pairs (a tie between annotators, no admin
            verdict), exported as imported with the computed margin; counted in the
            manifest and marked in the ``disputed`` provenance column.
        admins: Annotators whose verdicts adjudicate (from the users file, by the caller).

    Returns:
        Columns prompt, chosen, rejected (str), margin (float64, never NaN), then the
        provenance columns if asked for; rows in input order.
    """
    frame, _, _ = _select(
        store,
        run_id,
        provenance,
        reviewed_only,
        exclude_flagged,
        margin_range,
        scale,
        bins,
        include_disputed=include_disputed,
        admins=admins,
    )
    return frame


def _format_of(path: Path, format: ExportFormat | None) -> str:
    if format is None:
        format = _SUFFIXES.get(path.suffix.lower())  # type: ignore[assignment]
        if format is None:
            raise ValueError(f"cannot tell the format of {path.name}: use .jsonl, .csv or .parquet")
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; use {', '.join(EXPORT_FORMATS)}")
    return format


def csv_safe(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """``frame`` with its formula-like text cells neutralised, and how many per column.

    Text cells starting with one of ``FORMULA_STARTS`` get a leading ``'``; so do cells
    already starting with ``'``, so that removing one ``'`` always restores the text.
    Numeric and boolean columns are left alone (a negative margin stays a number).
    """
    out, changed = frame.copy(), {}
    for column in frame.columns:
        values = frame[column]
        if values.dtype != object and not pd.api.types.is_string_dtype(values):
            continue  # numbers and booleans; an object column may mix text in: checked
        is_text = values.map(lambda v: isinstance(v, str)).astype(bool)
        risky = is_text & values.where(is_text, "").str.startswith((*FORMULA_STARTS, "'"))
        if risky.any():
            out[column] = values.where(~risky, "'" + values.where(risky, ""))
            changed[str(column)] = int(risky.sum())
    return out, changed


def _write(frame: pd.DataFrame, path: Path, format: str) -> None:
    if format == "jsonl":
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for record in frame.to_dict("records"):
                f.write(json.dumps(json_safe(record), ensure_ascii=False) + "\n")
    elif format == "csv":
        # Every text cell quoted (OWASP): a carriage return inside a cell cannot split the
        # row; numbers stay bare, so a spreadsheet reads them as numbers.
        frame.to_csv(path, index=False, encoding="utf-8", quoting=csv.QUOTE_NONNUMERIC)
    else:
        frame.to_parquet(path, index=False)


def _write_atomic(path: Path, writer: Any) -> None:
    """Write through a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes reach the disk before the name points at them
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_dataset(
    store: Store,
    run_id: int,
    path: str | os.PathLike[str],
    format: ExportFormat | None = None,
    admins: Collection[str] = frozenset(),
    **filters: Any,
) -> dict[str, Any]:
    """Write :func:`export_frame` to ``path`` and a manifest to ``PATH.manifest.json``.

    Args:
        store: The store holding the run.
        run_id: The margin run.
        path: The output file; written atomically.
        format: ``jsonl``, ``csv`` or ``parquet``; by default from the file's suffix.
        admins: Annotators whose verdicts adjudicate, as in :func:`export_frame`.
        **filters: ``provenance``, ``reviewed_only``, ``exclude_flagged``, ``margin_range``,
            ``scale``, ``bins`` and ``include_disputed``, as in :func:`export_frame` (same
            defaults).

    Returns:
        The manifest: counts (rows, flipped, overridden, flagged, and what each filter
        left out), the margin's scale and its parameters, the run and its direction's
        metadata (no vector), the filters, the file's sha256 and size, the creation time
        and the Legend version; for CSV, ``csv_formula_guard``: the cells :func:`csv_safe`
        changed, per column, and the rule (``CSV_GUARD_RULE``).
    """
    allowed = {"provenance", "reviewed_only", "exclude_flagged", "margin_range", "scale", "bins"}
    allowed.add("include_disputed")
    unknown = set(filters) - allowed
    if unknown:
        raise TypeError(f"unknown export options: {', '.join(sorted(unknown))}")
    path = Path(path)
    fmt = _format_of(path, format)
    options = {
        "provenance": bool(filters.get("provenance", False)),
        "reviewed_only": bool(filters.get("reviewed_only", False)),
        "exclude_flagged": bool(filters.get("exclude_flagged", config.DEFAULT_EXCLUDE_FLAGGED)),
        "margin_range": filters.get("margin_range"),
        "include_disputed": bool(filters.get("include_disputed", False)),
    }
    options["scale"], options["bins"] = resolve_scale(filters.get("scale"), filters.get("bins"))
    admins = frozenset(admins)
    frame, counts, scale = _select(store, run_id, **options, admins=admins)
    written, guarded = csv_safe(frame) if fmt == "csv" else (frame, None)
    _write_atomic(path, lambda tmp: _write(written, tmp, fmt))

    run = store.get_run(run_id)
    dataset = store.get_dataset(run.dataset_id)
    direction = store.get_direction(run.direction_id)
    manifest: dict[str, Any] = {
        "legend_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "file": path.name,
        "format": fmt,
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "columns": list(frame.columns),
        "counts": counts,
        "filters": {
            **options,
            "margin_range": None
            if options["margin_range"] is None
            else list(options["margin_range"]),
        },
        "margin": {
            "meaning": "projection of (chosen - rejected) on the direction, or the reviewers' "
            "override, always relative to the exported chosen: pairs whose label is flipped "
            "are swapped and their margin negated; then put on the scale below, computed "
            "over the rows of this file",
            "scale": scale["name"],
            "definition": SCALE_DEFINITIONS[scale["name"]],
            "parameters": scale["parameters"],
        },
        "run": {
            "id": run.id,
            "status": run.status,
            "settings": run.settings,
            "n_margins": run.n_margins,
            "created_at": run.created_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        },
        "dataset": {
            "id": dataset.id,
            "name": dataset.name,
            "source": dataset.source,
            "format": dataset.format,
            "n_pairs": dataset.n_pairs,
        },
        "direction": {"id": run.direction_id, **direction.metadata(brief=True)},
        "reviews": {"policy": POLICY_TEXT, "admins": sorted(admins)},
    }
    if guarded is not None:
        cells = sum(guarded.values())
        manifest["csv_formula_guard"] = {
            "cells": cells,
            "by_column": guarded,
            "rule": CSV_GUARD_RULE,
        }
    manifest = json_safe(manifest)
    manifest_path = Path(f"{path}.manifest.json")
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    _write_atomic(manifest_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return manifest
