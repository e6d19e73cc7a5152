"""Safety margins of preference pairs: the projection of (chosen - rejected) on a direction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from legend_core.config import DEFAULT_MARGIN_BINS

Scale = Literal["none", "rms", "std", "minmax", "bins"]
SCALES: tuple[str, ...] = get_args(Scale)

#: One line per scale, for manifests, help texts and the pages (exact maths: ``scale``).
SCALE_DEFINITIONS: dict[str, str] = {
    "none": "the projection as computed (reviews applied), unscaled",
    "rms": "m / RMS(m): root mean square 1, sign and zero kept",
    "std": "m / SD(m), not centred: population standard deviation 1 about the mean, "
    "sign and zero kept",
    "minmax": "m / max|m|: |m| onto [0, 1], sign and zero kept",
    "bins": "sign(m) * k, k = 0..bins-1 the quantile bin of |m| (the paper's discrete "
    "release): integer levels, the lowest bin 0, sign kept above it",
}


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


def vector_problem(vector: np.ndarray) -> str:
    """Why a hidden state cannot be right ("" when it can): empty, not finite, or all zeros
    (a pass that stopped early or pooled nothing). The embedding cache refuses such vectors
    and the pipeline checks fresh ones with it."""
    if vector.size == 0:
        return "it is empty"
    if not np.isfinite(vector).all():
        return "it has NaN or infinite values"
    if not vector.any():
        return "it is all zeros"
    return ""


@dataclass(frozen=True)
class Scaled:
    """Margins on a training scale, and what it took to put them there.

    Attributes:
        values: The scaled margins (float64), in input order.
        scale: The scale's name (one of ``SCALES``).
        parameters: Everything needed to redo or undo it (JSON-ready floats and ints),
            computed on the margins that were scaled; written into export manifests.
    """

    values: np.ndarray
    scale: str
    parameters: dict[str, Any] = field(default_factory=dict)


def scale(values: np.ndarray, how: str = "none", bins: int = DEFAULT_MARGIN_BINS) -> Scaled:
    """Put margins on a scale a trainer can use, keeping every margin's sign.

    A trainer subtracts the margin inside the loss, ``-log σ(r_c - r_r - m)`` (TRL's
    RewardTrainer), so its size is measured against reward gaps of a few units: a raw
    projection of 10 dominates the loss. Every scale here keeps the sign (which response
    the direction calls safer; ``bins`` sets its lowest level to 0) and zero (no opinion),
    so none shifts the margins: a shift would turn a small agreeing margin into a
    disagreeing one. The statistics are those of ``values`` themselves (for an export:
    the rows exported, after its filters).

    - ``none``: the projections as they are.
    - ``rms``: ``m / sqrt(mean(m²))``: the root mean square of the result is 1, so a
      typical margin asks for a reward gap of about 1. Parameter ``rms``.
    - ``std``: ``m / sd(m)`` with the population standard deviation about the mean, but
      **not centred**: the mean is not subtracted (that would flip the signs of margins
      below it). It differs from ``rms`` only by the factor ``rms / sd =
      sqrt(1 + mean² / sd²)``, larger when the margins lean one way. Parameters ``std``
      and ``mean`` (the mean is recorded, never subtracted).
    - ``minmax``: ``m / max |m|``: ``|m|`` mapped onto [0, 1] with the sign kept (the
      largest margin becomes ±1, zero stays 0); the sign-keeping form of min-max scaling,
      which would otherwise move zero. Parameter ``max_abs``.
    - ``bins``: the paper's discrete release: ``sign(m) · k`` with ``k`` in 0..bins-1 the
      quantile bin of ``|m|`` among the margins (0: the smallest ``|m|`` fifth for 5
      bins, bins-1: the largest), so levels run from -(bins-1) to bins-1 in steps of 1.
      The lowest bin is level 0 whatever its sign: a difference too small to call, as
      the "negligibly better" grade of a human scale; every other level keeps the sign.
      Parameters ``bins`` and ``edges`` (the bins-1 inner quantiles of ``|m|``). The
      paper ships discrete margins beside the continuous ones without (in what we could
      read) stating its edges; quantiles of ``|m|`` are our choice.

    When the divisor is 0 (all margins 0; for ``std``, all margins equal) the divisor is
    the RMS instead, or 1 if that is 0 too, so each margin becomes ±1 or 0; ``divisor`` in
    the parameters is always the number the margins were divided by.

    Args:
        values: Margins; NaN or infinite values are refused.
        how: One of ``SCALES``.
        bins: Number of levels of ``|m|`` for ``bins`` (at least 2; ignored otherwise).

    Raises:
        ValueError: Unknown scale, bad ``bins``, or margins that are not finite.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if how not in SCALES:
        raise ValueError(f"unknown margin scale {how!r}; use {', '.join(SCALES)}")
    if not np.isfinite(x).all():
        raise ValueError("margins contain NaN or infinite values")
    if how == "none":
        return Scaled(x.copy(), how, {})
    if how == "bins":
        if isinstance(bins, bool) or int(bins) != bins or bins < 2:
            raise ValueError(f"bins must be an integer of at least 2; got {bins!r}")
        level, edges = quantile_bins(np.abs(x), int(bins))
        return Scaled(
            np.sign(x) * level.astype(np.float64),
            how,
            {"bins": int(bins), "edges": [float(e) for e in edges]},
        )
    rms = float(np.sqrt(np.mean(x * x))) if len(x) else 0.0
    parameters: dict[str, Any]
    if how == "rms":
        divisor, parameters = rms, {"rms": rms}
    elif how == "std":
        mean = float(x.mean()) if len(x) else 0.0
        divisor = float(x.std()) if len(x) else 0.0
        parameters = {"std": divisor, "mean": mean}
    else:
        divisor = float(np.abs(x).max()) if len(x) else 0.0
        parameters = {"max_abs": divisor}
    if not divisor > 0:
        divisor = rms if rms > 0 else 1.0
    return Scaled(x / divisor, how, {**parameters, "divisor": divisor})


def quantile_bins(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index 0..bins-1 of each value by the values' own quantiles, and the bins-1
    inner edges (a value equal to an edge goes to the upper bin)."""
    if bins < 2:
        raise ValueError("bins must be at least 2")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(x) == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    edges = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, x, side="right").astype(np.int64), edges
