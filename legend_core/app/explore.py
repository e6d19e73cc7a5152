"""What the app's pages compute, as plain functions: filters, percentiles, the review queue's
steps, and the tables behind every chart. No Streamlit here; every function is testable.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from legend_core.app import maps
from legend_core.types import ContrastItem

if TYPE_CHECKING:
    from legend_core.data.store import RunInfo, Store
    from legend_core.method.directions import Direction
    from legend_core.method.pipeline import BuildResult

Sign = Literal["any", "positive", "negative"]
SIGNS: tuple[str, ...] = ("any", "positive", "negative")
TEXT_COLUMNS = ("prompt", "chosen", "rejected")
CONTRAST_COLUMNS = ["instruction", "harmful", "harmless"]


# --- filters and percentiles -----------------------------------------------------------------


def filter_pairs(
    frame: pd.DataFrame,
    margin_range: tuple[float, float] | None = None,
    sign: Sign | str = "any",
    text: str = "",
    column: str = "effective_margin",
) -> pd.DataFrame:
    """Rows of a run frame (``Store.run_frame``) that pass every filter.

    Args:
        frame: Pairs with text columns and a margin column.
        margin_range: Keep margins in [low, high] (inclusive).
        sign: ``positive`` (> 0), ``negative`` (< 0) or ``any``.
        text: Case-insensitive substring of the prompt, chosen or rejected text.
        column: The margin column to filter on.

    Rows without a margin are kept only when neither a range nor a sign is asked for.
    """
    if sign not in SIGNS:
        raise ValueError(f"unknown sign {sign!r}; use any, positive or negative")
    values = frame[column]
    mask = pd.Series(True, index=frame.index)
    if margin_range is not None:
        lo, hi = margin_range
        mask &= values.between(lo, hi)
    if sign == "positive":
        mask &= values > 0
    elif sign == "negative":
        mask &= values < 0
    needle = text.strip().lower()
    if needle:
        hit = pd.Series(False, index=frame.index)
        for name in TEXT_COLUMNS:
            hit |= frame[name].str.lower().str.contains(needle, regex=False, na=False)
        mask &= hit
    return frame[mask]


def percentile_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Each value's percentile (0-100): the share of the finite values at or below it.

    NaN stays NaN.
    """
    x = np.asarray(values, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    finite = np.isfinite(x)
    ref = np.sort(x[finite])
    if len(ref):
        out[finite] = np.searchsorted(ref, x[finite], side="right") / len(ref) * 100.0
    return out


def percentile_of(values: Sequence[float] | np.ndarray, value: float | None) -> float:
    """The percentile (0-100) of ``value`` among ``values`` (NaN if it is missing)."""
    if value is None or not math.isfinite(value):
        return float("nan")
    ref = np.sort(np.asarray(values, dtype=np.float64))
    ref = ref[np.isfinite(ref)]
    if not len(ref):
        return float("nan")
    return float(np.searchsorted(ref, value, side="right") / len(ref) * 100.0)


@dataclass
class MarginSummary:
    """Headline numbers of a run's margins."""

    n: int
    n_missing: int
    agree: float
    n_negative: int
    median: float


def summarize(frame: pd.DataFrame, column: str = "effective_margin") -> MarginSummary:
    """Counts, the share of positive margins, negatives and the median."""
    values = frame[column].to_numpy(dtype=np.float64)
    finite = values[np.isfinite(values)]
    return MarginSummary(
        n=int(len(finite)),
        n_missing=int(len(values) - len(finite)),
        agree=float((finite > 0).mean()) if len(finite) else float("nan"),
        n_negative=int((finite < 0).sum()),
        median=float(np.median(finite)) if len(finite) else float("nan"),
    )


def finite_range(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values, widened to a non-empty interval; (0, 0) if none."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return 0.0, 0.0
    lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        lo, hi = lo - 1.0, hi + 1.0
    return lo, hi


def slider_format(lo: float, hi: float) -> tuple[str, float]:
    """A printf format and a step for a slider over [lo, hi] that shows the span legibly
    (tiny models give margins of a few thousandths, large ones of several units)."""
    span = hi - lo
    if not math.isfinite(span) or span <= 0:
        return "%.2f", 0.01
    decimals = min(8, max(2, 2 - math.floor(math.log10(span))))
    return f"%.{decimals}f", span / 200


def with_lengths(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with chosen_chars, rejected_chars and length_diff (chosen minus rejected)."""
    out = frame.copy()
    out["chosen_chars"] = out["chosen"].str.len().astype(np.int64)
    out["rejected_chars"] = out["rejected"].str.len().astype(np.int64)
    out["length_diff"] = out["chosen_chars"] - out["rejected_chars"]
    return out


def correlation(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation over the rows where both are finite (NaN if undefined)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() == 0 or b[ok].std() == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


# --- plain text ------------------------------------------------------------------------------


def snippet(text: str, limit: int = 120) -> str:
    """The text on one line, cut to ``limit`` characters with an ellipsis. Not escaped."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: max(0, limit - 1)].rstrip() + "…"


def with_percentiles(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``percentile``: each computed margin's percentile within the whole run."""
    out = frame.copy()
    out["percentile"] = percentile_ranks(out["computed_margin"])
    return out


def table_view(frame: pd.DataFrame, limit: int = 80) -> pd.DataFrame:
    """The columns a reviewer scans in a table, texts cut to one line (percentile from
    :func:`with_percentiles` if present)."""
    out = pd.DataFrame(
        {
            "pair": frame["pair_id"].to_numpy(),
            "margin": frame["effective_margin"].to_numpy(),
            "percentile": frame["percentile"].to_numpy()
            if "percentile" in frame
            else np.full(len(frame), np.nan),
        }
    )
    for name in TEXT_COLUMNS:
        out[name] = [snippet(t, limit) for t in frame[name]]
    out["reviews"] = frame["n_reviews"].to_numpy()
    out["flagged"] = frame["flagged"].to_numpy()
    out["flipped"] = frame["flipped"].to_numpy()
    return out


# --- the review queue ------------------------------------------------------------------------


def queue_order(frame: pd.DataFrame) -> list[int]:
    """Pair ids in review order: lowest computed margin first (disagreement), then pair id."""
    ordered = frame.sort_values(["computed_margin", "pair_id"], na_position="last")
    return [int(p) for p in ordered["pair_id"]]


def queue_position(queue: Sequence[int], current: int | None) -> int | None:
    """Index of ``current`` in the queue, or None."""
    if current is None:
        return None
    try:
        return list(queue).index(current)
    except ValueError:
        return None


def step(queue: Sequence[int], current: int | None, delta: int) -> int | None:
    """The pair ``delta`` places from ``current`` (clamped to the ends).

    When ``current`` is not in the queue, the first pair (None for an empty queue).
    """
    if not queue:
        return None
    pos = queue_position(queue, current)
    if pos is None:
        return queue[0]
    return queue[min(len(queue) - 1, max(0, pos + delta))]


def next_unreviewed(
    queue: Sequence[int], current: int | None, unreviewed: set[int] | Sequence[int]
) -> int | None:
    """The first unreviewed pair after ``current``, wrapping around; None if there is none."""
    todo = set(unreviewed)
    if not queue or not todo:
        return None
    pos = queue_position(queue, current)
    start = 0 if pos is None else pos + 1
    ordered = list(queue[start:]) + list(queue[:start])
    return next((p for p in ordered if p in todo and p != current), None)


def selected_pairs(points: Sequence[dict[str, Any]]) -> list[int]:
    """Pair ids of selected chart points (their ``customdata[0]``), unique, in order."""
    out: dict[int, None] = {}
    for point in points:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)) and data:
            data = data[0]
        try:
            out[int(float(data))] = None
        except (TypeError, ValueError):
            continue
    return list(out)


# --- direction lab ---------------------------------------------------------------------------


def contrast_frame(items: Sequence[ContrastItem]) -> pd.DataFrame:
    """A contrastive set as an editable table (instruction, harmful, harmless)."""
    return pd.DataFrame(
        [(i.instruction, i.harmful, i.harmless) for i in items], columns=CONTRAST_COLUMNS
    )


def contrast_items(frame: pd.DataFrame) -> list[ContrastItem]:
    """The edited table back to items: blank rows are dropped, half-filled rows refused.

    Raises:
        ValueError: A row has some but not all of its three texts (the message names it).
    """
    missing = [c for c in CONTRAST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"the table has no column {missing[0]!r}")
    items = []
    for number, row in enumerate(frame[CONTRAST_COLUMNS].itertuples(index=False), start=1):
        texts = [
            "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in row
        ]
        filled = [bool(t.strip()) for t in texts]
        if not any(filled):
            continue
        if not all(filled):
            empty = CONTRAST_COLUMNS[filled.index(False)]
            raise ValueError(f"row {number}: {empty} is empty (fill it or delete the row)")
        items.append(ContrastItem(*texts))
    return items


def layer_frame(direction: Direction) -> pd.DataFrame:
    """Held-out quality per layer, one row per layer, with ``chosen`` marking the direction's;
    ``cv_auroc`` and ``cv_separation`` are what the layer was chosen on (cross-validated
    inside the fitting split, so the held-out columns stay honest)."""
    rows = [vars(q) for q in direction.quality]
    frame = pd.DataFrame(
        rows,
        columns=[
            "layer",
            "accuracy",
            "auroc",
            "separation",
            "stability",
            "length_r2",
            "paired_accuracy",
            "cv_auroc",
            "cv_separation",
        ],
    )
    frame["chosen"] = frame["layer"] == direction.layer
    return frame


def projection_frame(result: BuildResult) -> pd.DataFrame:
    """Held-out projections with their class (``harmless`` / ``harmful``)."""
    harmless, harmful = result.held_out_projections()
    return pd.DataFrame(
        {
            "projection": np.concatenate([harmless, harmful]).astype(np.float64),
            "class": ["harmless"] * len(harmless) + ["harmful"] * len(harmful),
        }
    )


def length_frame(result: BuildResult) -> pd.DataFrame:
    """Every contrastive response: projection, response tokens, class and split."""
    v = result.direction.vector
    n = len(result.harmless)
    split = np.array(["train"] * n, dtype=object)
    split[result.test] = "held out"
    return pd.DataFrame(
        {
            "projection": np.concatenate([result.harmless @ v, result.harmful @ v]),
            "tokens": np.concatenate([result.harmless_tokens, result.harmful_tokens]),
            "class": ["harmless"] * n + ["harmful"] * n,
            "split": np.concatenate([split, split]),
        }
    )


def contrast_map_frame(
    result: BuildResult, items: Sequence[ContrastItem] | None = None, seed: int = 0
) -> tuple[pd.DataFrame, str]:
    """A 2-D map of the contrastive embeddings (harmless and harmful), with a note."""
    x = np.concatenate([result.harmless, result.harmful])
    layout = maps.embed_2d(x, "umap", max_points=len(x), seed=seed, what="responses")
    n = len(result.harmless)
    kind = np.array(["harmless"] * n + ["harmful"] * n)
    texts = None
    if items is not None:
        texts = [i.harmless for i in items] + [i.harmful for i in items]
    frame = pd.DataFrame(
        {
            "x": layout.coords[:, 0],
            "y": layout.coords[:, 1],
            "class": kind[layout.index],
            "projection": (x @ result.direction.vector)[layout.index].astype(np.float64),
            "text": [snippet(texts[i]) for i in layout.index] if texts else "",
        }
    )
    return frame, layout.note


def direction_similarity(directions: Sequence[tuple[str, Direction]]) -> pd.DataFrame:
    """Cosine similarity between directions, NaN between different models or widths.

    Args:
        directions: (label, direction) pairs; labels become the index and columns.
    """
    labels = [label for label, _ in directions]
    n = len(directions)
    out = np.full((n, n), np.nan)
    for i, (_, a) in enumerate(directions):
        for j, (_, b) in enumerate(directions):
            same = a.model == b.model and a.vector.shape == b.vector.shape
            if a.model_fingerprint and b.model_fingerprint:
                same = same and a.model_fingerprint == b.model_fingerprint
            if same:
                va, vb = a.vector.astype(np.float64), b.vector.astype(np.float64)
                denom = np.linalg.norm(va) * np.linalg.norm(vb)
                out[i, j] = float(va @ vb / denom) if denom else np.nan
    return pd.DataFrame(out, index=labels, columns=labels)


# --- the response map ------------------------------------------------------------------------


@dataclass
class ResponseMap:
    """The response map's table and what the page should say about it.

    ``frame`` has one row per laid-out response: x, y, pair_id, side (chosen/rejected),
    projection (on the direction), margin (effective), and text (a plain snippet).
    """

    frame: pd.DataFrame
    note: str
    n_pairs: int
    n_missing: int


def response_map(
    store: Store,
    run: RunInfo,
    direction: Direction,
    frame: pd.DataFrame,
    method: maps.MapMethod = "umap",
    max_points: int = maps.DEFAULT_MAX_POINTS,
    seed: int = 0,
) -> ResponseMap:
    """Lay out the chosen and rejected responses of a run's pairs from the embedding cache.

    No forward pass: pairs whose embeddings are not cached are left out (and counted).
    UMAP runs on a random sample of pairs (both responses of each) so that at most
    ``max_points`` responses are laid out; PCA lays out all of them.

    Args:
        store: The store holding the cache.
        run: The margin run (its settings name the embedding space).
        direction: The run's direction (for each response's projection).
        frame: The run's pairs (``Store.run_frame``), those with margins are mapped.
        method: ``umap`` or ``pca``.
        max_points: Most responses UMAP lays out.
        seed: Seed of the sample and of UMAP.
    """
    from legend_core.data.store import EmbeddingSpace
    from legend_core.util import text_key

    pairs = frame[frame["computed_margin"].notna()]
    if method == "umap" and len(pairs) * 2 > max_points:
        keep = maps.sample_indices(len(pairs), max(1, max_points // 2), seed)
        pairs = pairs.iloc[keep]
    keys_c = [text_key(p, c) for p, c in zip(pairs["prompt"], pairs["chosen"])]
    keys_r = [text_key(p, r) for p, r in zip(pairs["prompt"], pairs["rejected"])]
    cached = store.get_embeddings(EmbeddingSpace.from_settings(run.settings), keys_c + keys_r)
    ok = np.array([c in cached and r in cached for c, r in zip(keys_c, keys_r)], dtype=bool)
    n_missing = int((~ok).sum())
    pairs = pairs[ok]
    columns = ["x", "y", "pair_id", "side", "projection", "margin", "text"]
    if pairs.empty:
        note = "No cached embeddings for this run: compute its margins to fill the cache."
        return ResponseMap(pd.DataFrame(columns=columns), note, 0, n_missing)
    keys_c = [k for k, good in zip(keys_c, ok) if good]
    keys_r = [k for k, good in zip(keys_r, ok) if good]
    x = np.stack([cached[k] for k in keys_c] + [cached[k] for k in keys_r])
    n = len(pairs)
    layout = maps.embed_2d(x, method, max_points=max(len(x), 1), seed=seed, what="responses")
    if method == "umap" and n < len(frame[frame["computed_margin"].notna()]):
        total = int(frame["computed_margin"].notna().sum())
        layout.note = (
            f"UMAP of the {2 * n:,} responses of a random sample of {n:,} of {total:,} pairs "
            f"(seed {seed}); choose PCA to see them all."
        )
    sides = np.array(["chosen"] * n + ["rejected"] * n)
    pair_ids = np.concatenate([pairs["pair_id"].to_numpy()] * 2)
    margins = np.concatenate([pairs["effective_margin"].to_numpy(dtype=np.float64)] * 2)
    texts = list(pairs["chosen"]) + list(pairs["rejected"])
    idx = layout.index
    out = pd.DataFrame(
        {
            "x": layout.coords[:, 0],
            "y": layout.coords[:, 1],
            "pair_id": pair_ids[idx].astype(np.int64),
            "side": sides[idx],
            "projection": (x @ direction.vector)[idx].astype(np.float64),
            "margin": margins[idx],
            "text": [snippet(texts[i]) for i in idx],
        }
    )
    return ResponseMap(out, layout.note, n, n_missing)


# --- export ----------------------------------------------------------------------------------


@dataclass
class ExportFile:
    """An export ready to download: the file's bytes, its name and its manifest."""

    data: bytes
    file_name: str
    mime: str
    manifest: dict[str, Any]

    @property
    def manifest_bytes(self) -> bytes:
        return (json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


MIMES = {"jsonl": "application/jsonl", "csv": "text/csv", "parquet": "application/octet-stream"}


def export_file(store: Store, run_id: int, fmt: str, stem: str, **filters: Any) -> ExportFile:
    """Write an export with ``exports.export_dataset`` to a temporary folder; return it.

    Args:
        store: The store.
        run_id: The margin run.
        fmt: ``jsonl``, ``csv`` or ``parquet``.
        stem: File name without suffix.
        **filters: As ``exports.export_dataset`` takes them.
    """
    from legend_core.data.exports import export_dataset

    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem).strip("._")
    name = f"{safe or 'legend-export'}.{fmt}"
    with tempfile.TemporaryDirectory(prefix="legend-export-") as folder:
        path = Path(folder) / name
        manifest = export_dataset(store, run_id, path, format=fmt, **filters)  # type: ignore[arg-type]
        data = path.read_bytes()
    return ExportFile(data, name, MIMES[fmt], manifest)
