"""The tables and numbers the pages show about a margin run: filters, percentiles, the
headline summary, lengths and their correlation, one-line snippets and the table view.
No Streamlit here; every function is testable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from legend_core.method.label_agreement import agreement_scores

Sign = Literal["any", "positive", "negative"]
SIGNS: tuple[str, ...] = ("any", "positive", "negative")
TEXT_COLUMNS = ("prompt", "chosen", "rejected")


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
    """Counts, the agreement with the label (label agreement's one rule: a positive margin
    counts 1, a zero margin ½), negatives and the median."""
    values = frame[column].to_numpy(dtype=np.float64)
    finite = values[np.isfinite(values)]
    return MarginSummary(
        n=int(len(finite)),
        n_missing=int(len(values) - len(finite)),
        agree=float(agreement_scores(finite).mean()) if len(finite) else float("nan"),
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
