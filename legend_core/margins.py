"""Safety margins of preference pairs: the projection of (chosen - rejected) on a direction."""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

Scaling = Literal["none", "zscore", "minmax", "quantile"]
SCALINGS: tuple[str, ...] = get_args(Scaling)


def margins(chosen: np.ndarray, rejected: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The paper's margin ``(h_c - h_r) · v / ‖v‖`` for every row at once.

    Args:
        chosen: (n, d) embeddings of the chosen responses.
        rejected: (n, d) embeddings of the rejected responses.
        direction: (d,) direction; it need not be unit length.

    Returns:
        (n,) float64 margins, positive where the chosen response projects as safer.
    """
    if chosen.shape != rejected.shape:
        raise ValueError(f"shapes do not match: chosen {chosen.shape}, rejected {rejected.shape}")
    # Project each side first: two matrix-vector products, no (n, d) difference array.
    return projections(chosen, direction) - projections(rejected, direction)


def projections(vectors: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Each row's scalar projection ``h · v / ‖v‖`` (float64); a margin is the chosen
    response's projection minus the rejected one's.

    Raises:
        ValueError: The direction is zero or not finite, or the widths differ.
    """
    v = np.asarray(direction, dtype=np.float64).reshape(-1)
    norm = np.linalg.norm(v)
    if norm == 0 or not np.isfinite(norm):
        raise ValueError("the direction is zero or not finite")
    if vectors.ndim != 2 or vectors.shape[1] != v.shape[0]:
        raise ValueError(f"shapes do not match: vectors {vectors.shape}, direction {v.shape}")
    # einsum sums each row on its own, so a text's projection is the same bit for bit
    # whatever batch it is in (BLAS gemv may not be): a resumed run equals a fresh one.
    return np.einsum("ij,j->i", vectors, v / norm, dtype=np.float64)


def scale(
    values: np.ndarray,
    scaling: Scaling = "none",
    value_range: tuple[float, float] = (0.0, 1.0),
    bins: int = 5,
) -> np.ndarray:
    """Rescale margins for training.

    Args:
        values: Raw margins.
        scaling: ``none``; ``zscore`` (mean 0, sd 1); ``minmax`` (onto ``value_range``);
            ``quantile`` (bin index 0..bins-1 by quantiles, the paper's discrete release).
        value_range: Target interval for ``minmax``.
        bins: Number of quantile bins.
    """
    x = np.asarray(values, dtype=np.float64)
    if scaling == "none" or len(x) == 0:
        return x.copy()
    if scaling == "zscore":
        sd = x.std()
        return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)
    if scaling == "minmax":
        lo, hi = value_range
        span = x.max() - x.min()
        if span == 0:
            return np.full_like(x, (lo + hi) / 2)
        return lo + (x - x.min()) / span * (hi - lo)
    if scaling == "quantile":
        return quantile_bins(x, bins).astype(np.float64)
    raise ValueError(f"unknown scaling {scaling!r}; use {', '.join(SCALINGS)}")


def quantile_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin index 0..bins-1 of each value by the values' own quantiles."""
    if bins < 2:
        raise ValueError("bins must be at least 2")
    x = np.asarray(values, dtype=np.float64)
    edges = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, x, side="right").astype(np.int64)


def agreement(values: np.ndarray) -> float:
    """Share of pairs whose margin is positive: how often the direction agrees with people."""
    x = np.asarray(values)
    return float((x > 0).mean()) if len(x) else float("nan")
