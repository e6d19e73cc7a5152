"""scikit-learn replaced two hand-written formulas (issue 14): the numbers did not change.

The formulas as they were are copied here as the reference, and both the old and the new
function run on a few hundred random cases with many ties (scores drawn from a handful of
values, label vectors dominated by one label), small and large, float32 and float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from legend_core.method.directions import auroc
from legend_core.review.annotators import cohens_kappa

CASES = 300


def reference_auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """``directions.auroc`` before scikit-learn: the Mann-Whitney statistic, average ranks."""
    scores = np.concatenate([positive, negative])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = np.bincount(inverse, weights=ranks)[inverse] / counts[inverse]
    n_pos, n_neg = len(positive), len(negative)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reference_kappa(a: np.ndarray, b: np.ndarray) -> float | None:
    """``annotators.cohens_kappa`` before scikit-learn."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if len(a) == 0:
        return None
    observed = float((a == b).mean())
    p_a, p_b = a.mean(), b.mean()
    expected = float(p_a * p_b + (1 - p_a) * (1 - p_b))
    if expected >= 1.0:
        return None
    return (observed - expected) / (1 - expected)


def _scores(rng: np.random.Generator, n: int) -> np.ndarray:
    """Scores with many ties: a few distinct values, sometimes continuous, sometimes inf."""
    kind = rng.integers(4)
    if kind == 0:
        x = rng.integers(0, rng.integers(1, 4), n).astype(np.float64)
    elif kind == 1:
        x = np.round(rng.normal(size=n), 1)
    elif kind == 2:
        x = rng.normal(size=n).astype(np.float32)
    else:
        x = rng.choice([-np.inf, -1.0, 0.0, 0.5, np.inf], n)
    return x


def test_auroc_equals_the_average_rank_formula_on_tie_heavy_cases():
    rng = np.random.default_rng(14)
    worst, tied = 0.0, 0
    for _ in range(CASES):
        n_pos, n_neg = rng.integers(1, 60, 2)
        pos, neg = _scores(rng, n_pos), _scores(rng, n_neg)
        pos = pos.astype(neg.dtype)  # one dtype per case, as the projections are
        want, got = reference_auroc(pos, neg), auroc(pos, neg)
        assert np.isfinite(got)
        worst = max(worst, abs(got - want))
        tied += len(np.unique(np.concatenate([pos, neg]))) < n_pos + n_neg
    assert worst < 1e-12, worst
    assert tied > CASES // 2, "the cases must be tie-heavy"


def test_auroc_edge_cases_keep_their_meaning():
    assert np.isnan(auroc(np.array([]), np.array([1.0])))
    assert np.isnan(auroc(np.array([1.0]), np.array([])))
    assert auroc(np.array([2.0]), np.array([1.0])) == 1.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    assert auroc(np.array([np.inf]), np.array([np.finfo(np.float32).max])) == 1.0
    # A NaN score has no order: the area is undefined (the rank formula ranked it highest).
    assert np.isnan(auroc(np.array([1.0, np.nan]), np.array([0.0])))


@pytest.mark.parametrize("n_max", [3, 40, 400])
def test_kappa_equals_the_old_formula_and_keeps_none(n_max):
    rng = np.random.default_rng(n_max)
    worst, nones = 0.0, 0
    for _ in range(CASES):
        n = int(rng.integers(0, n_max + 1))
        # Tie-heavy: often one label dominates, sometimes it is all there is.
        p_a, p_b = rng.choice([0.0, 0.05, 0.5, 0.95, 1.0], 2)
        a, b = rng.random(n) < p_a, rng.random(n) < p_b
        if rng.random() < 0.3:
            b = a ^ (rng.random(n) < 0.1)  # mostly agreeing annotators
        want, got = reference_kappa(a, b), cohens_kappa(a, b)
        assert (want is None) == (got is None), (a, b)
        if want is None:
            nones += 1
            continue
        worst = max(worst, abs(got - want))
    assert worst < 1e-12, worst
    assert 0 < nones < CASES
