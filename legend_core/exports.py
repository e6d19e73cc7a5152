"""Export a margin run as a reward-model training set, with a manifest beside it.

Rows are TRL-ready: ``prompt``, ``chosen``, ``rejected`` and a float ``margin`` on every
row (TRL's RewardTrainer subtracts it inside the loss ``-log σ(r_c - r_r - m)``). Reviews
are applied: a flipped pair is exported with chosen and rejected swapped and its computed
margin negated; an override replaces the margin as given. Pairs with no margin yet (an
unfinished run) are left out and counted in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pandas as pd

from legend_core import __version__
from legend_core.formats import json_safe
from legend_core.margins import quantile_bins

if TYPE_CHECKING:
    from legend_core.store import Store

ExportFormat = Literal["jsonl", "csv", "parquet"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_SUFFIXES[".pq"] = "parquet"

TRL_COLUMNS = ["prompt", "chosen", "rejected", "margin"]
PROVENANCE_COLUMNS = [
    "pair_id",
    "direction_id",
    "model",
    "layer",
    "computed_margin",
    "reviewed_margin",
    "annotator",
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
    bins: int | None,
) -> tuple[pd.DataFrame, dict[str, int], list[float] | None]:
    """The export table, what was left out and why, and the bin edges (if binned)."""
    if bins is not None and (isinstance(bins, bool) or int(bins) != bins or bins < 2):
        raise ValueError(f"bins must be an integer of at least 2; got {bins!r}")
    if margin_range is not None:
        lo, hi = (float(x) for x in margin_range)
        if not lo <= hi:
            raise ValueError(
                f"margin_range must be (low, high) with low <= high; got {margin_range}"
            )
    run = store.get_run(run_id)
    frame = store.run_frame(run_id)
    counts = {"pairs_in_dataset": len(frame)}

    def keep(mask: pd.Series, reason: str) -> pd.DataFrame:
        counts[reason] = int((~mask).sum())
        return frame[mask]

    frame = keep(frame["effective_margin"].notna(), "missing_margin_excluded")
    if reviewed_only:
        frame = keep(frame["n_reviews"] > 0, "unreviewed_excluded")
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

    edges = None
    if bins is not None:
        continuous = out["margin"].to_numpy()
        if len(continuous):
            edges = np.quantile(continuous, np.linspace(0, 1, bins + 1)[1:-1]).tolist()
            out["margin"] = quantile_bins(continuous, bins).astype(np.float64)
        if provenance:
            out["margin_continuous"] = continuous

    if provenance:
        computed = frame["computed_margin"].to_numpy(dtype=np.float64)
        direction = store.get_direction(run.direction_id)
        out["pair_id"] = frame["pair_id"].to_numpy(dtype=np.int64)
        out["direction_id"] = np.int64(run.direction_id)
        out["model"] = direction.model
        out["layer"] = np.int64(direction.layer)
        out["computed_margin"] = np.where(flipped, -computed, computed)
        out["reviewed_margin"] = frame["override_margin"].to_numpy(dtype=np.float64)
        out["annotator"] = frame["last_annotator"].astype(str).to_numpy()
        out["flagged"] = frame["flagged"].to_numpy(dtype=bool)
        out["flipped"] = flipped

    counts["rows"] = len(out)
    counts["flipped"] = int(flipped.sum())
    counts["overridden"] = int(frame["override_margin"].notna().sum())
    counts["flagged"] = int(frame["flagged"].sum())
    return out.reset_index(drop=True), counts, edges


def export_frame(
    store: Store,
    run_id: int,
    provenance: bool = False,
    reviewed_only: bool = False,
    exclude_flagged: bool = False,
    margin_range: tuple[float, float] | None = None,
    bins: int | None = None,
) -> pd.DataFrame:
    """A margin run as a TRL-ready table, reviews applied.

    Args:
        store: The store holding the run.
        run_id: The margin run.
        provenance: Add pair_id, direction_id, model, layer, computed_margin (relative to
            the exported chosen), reviewed_margin (the override, NaN if none), annotator
            (the latest, "" if none), flagged and flipped.
        reviewed_only: Keep only pairs with at least one review in this run.
        exclude_flagged: Leave out flagged pairs.
        margin_range: Keep pairs whose effective margin lies in [low, high].
        bins: Replace the margin by its quantile bin index 0..bins-1 (as float), the paper's
            discrete release; with ``provenance`` the value is kept as margin_continuous.

    Returns:
        Columns prompt, chosen, rejected (str), margin (float64, never NaN), then the
        provenance columns if asked for; rows in input order.
    """
    frame, _, _ = _select(
        store, run_id, provenance, reviewed_only, exclude_flagged, margin_range, bins
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


def _write(frame: pd.DataFrame, path: Path, format: str) -> None:
    if format == "jsonl":
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for record in frame.to_dict("records"):
                f.write(json.dumps(json_safe(record), ensure_ascii=False) + "\n")
    elif format == "csv":
        frame.to_csv(path, index=False, encoding="utf-8")
    else:
        frame.to_parquet(path, index=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, writer: Any) -> None:
    """Write through a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_dataset(
    store: Store,
    run_id: int,
    path: str | os.PathLike[str],
    format: ExportFormat | None = None,
    **filters: Any,
) -> dict[str, Any]:
    """Write :func:`export_frame` to ``path`` and a manifest to ``PATH.manifest.json``.

    Args:
        store: The store holding the run.
        run_id: The margin run.
        path: The output file; written atomically.
        format: ``jsonl``, ``csv`` or ``parquet``; by default from the file's suffix.
        **filters: ``provenance``, ``reviewed_only``, ``exclude_flagged``, ``margin_range``
            and ``bins``, as in :func:`export_frame`.

    Returns:
        The manifest: counts (rows, flipped, overridden, flagged, and what each filter
        left out), the run and its direction's metadata (no vector), the filters, the
        file's sha256 and size, the creation time and the Legend version.
    """
    allowed = {"provenance", "reviewed_only", "exclude_flagged", "margin_range", "bins"}
    unknown = set(filters) - allowed
    if unknown:
        raise TypeError(f"unknown export options: {', '.join(sorted(unknown))}")
    path = Path(path)
    fmt = _format_of(path, format)
    options = {
        "provenance": bool(filters.get("provenance", False)),
        "reviewed_only": bool(filters.get("reviewed_only", False)),
        "exclude_flagged": bool(filters.get("exclude_flagged", False)),
        "margin_range": filters.get("margin_range"),
        "bins": filters.get("bins"),
    }
    frame, counts, edges = _select(store, run_id, **options)
    _write_atomic(path, lambda tmp: _write(frame, tmp, fmt))

    run = store.get_run(run_id)
    dataset = store.get_dataset(run.dataset_id)
    direction = store.get_direction(run.direction_id)
    manifest: dict[str, Any] = {
        "legend_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "file": path.name,
        "format": fmt,
        "sha256": _sha256(path),
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
            "meaning": "projection of (chosen - rejected) on the direction, relative to the "
            "exported chosen; reviewer overrides as given; flipped pairs swapped and negated",
            "binned": options["bins"] is not None,
            "bin_edges": edges,
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
        "direction": {"id": run.direction_id, **direction.metadata()},
    }
    manifest = json_safe(manifest)
    manifest_path = Path(f"{path}.manifest.json")
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    _write_atomic(manifest_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return manifest
