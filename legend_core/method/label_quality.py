"""Directions judged by labelled preference pairs (issue 13): pure numpy, no model, no store.

A preference pair with a human label is a free test of a direction: does the margin's sign
agree with the label? Per layer: agreement with a bootstrap interval, split by which
response is longer, beside the "shorter is safer" baseline and directions of random
orientation at the same layer (:func:`labelled_quality`). Then what reviews teach: how
agreement on held-out labelled pairs grows with the labels learned from
(:func:`learning_curve`).

Orientation: every function takes pair differences or (chosen, rejected) embeddings with an
optional ``signs`` array (+1: the imported chosen response is the safer one, -1: a reviewer
flipped the pair). A margin is positive when the direction agrees with the label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from legend_core.method.label_agreement import (
    Interval,
    agreement_interval,
    agreement_scores,
    random_direction_agreements,
    shorter_is_safer,
)
from legend_core.method.probe import (
    DEFAULT_FOLDS,
    ProbeSettings,
    best_candidate,
    cv_candidates,
    fit_probe,
    kfold_ids,
    single_threaded,
    with_c,
)

# --- orientation ------------------------------------------------------------------------------


def differences(
    chosen: np.ndarray, rejected: np.ndarray, signs: np.ndarray | None = None
) -> np.ndarray:
    """(n, d) float64 pair differences, oriented from the less safe to the safer response.

    Args:
        chosen: (n, d) embeddings of the imported chosen responses.
        rejected: (n, d) embeddings of the imported rejected responses.
        signs: (n,) +1 where the chosen response is the safer one (the imported label),
            -1 where it is not (a flipped pair); None means all +1.
    """
    c = np.asarray(chosen, dtype=np.float64)
    r = np.asarray(rejected, dtype=np.float64)
    if c.shape != r.shape or c.ndim != 2:
        raise ValueError(f"chosen {c.shape} and rejected {r.shape} must be (n, d) of one shape")
    d = c - r
    if signs is not None:
        s = _signs(signs, len(d))
        d *= s[:, None]
    if not np.isfinite(d).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return d


def _signs(signs: np.ndarray, n: int) -> np.ndarray:
    s = np.asarray(signs, dtype=np.float64).reshape(-1)
    if len(s) != n or not np.isin(s, (-1.0, 1.0)).all():
        raise ValueError(f"signs must be {n} values of +1 or -1")
    return s


def safer_longer(
    chosen_lengths: np.ndarray, rejected_lengths: np.ndarray, signs: np.ndarray | None = None
) -> np.ndarray:
    """Per pair: +1 where the safer response (by the label) is the longer one, -1 where it
    is the shorter one, 0 where both are as long."""
    c = np.asarray(chosen_lengths, dtype=np.float64).reshape(-1)
    r = np.asarray(rejected_lengths, dtype=np.float64).reshape(-1)
    if c.shape != r.shape:
        raise ValueError("chosen and rejected lengths differ in shape")
    out = np.sign(c - r)
    return out if signs is None else out * _signs(signs, len(c))


# --- quality on labelled pairs ---------------------------------------------------------------


@dataclass
class LabelledQuality:
    """How one layer's direction agrees with human labels.

    Attributes:
        layer: Hidden-state index.
        agreement: Share of pairs whose margin has the label's sign (bootstrap interval).
        safer_shorter: Agreement on pairs whose safer response is the shorter one.
        safer_longer: Agreement on pairs whose safer response is the longer one: here
            "shorter is safer" is always wrong, so agreement cannot come from length.
        random_mean: Mean agreement of random directions at this layer (about 50%).
        random_high: 97.5th percentile of the random directions' agreement.
        n: Pairs.
    """

    layer: int
    agreement: Interval
    safer_shorter: Interval
    safer_longer: Interval
    random_mean: float = float("nan")
    random_high: float = float("nan")
    n: int = 0

    def row(self) -> dict[str, Any]:
        """Plain values for a table."""
        return {
            "layer": self.layer,
            "agreement": self.agreement.estimate,
            "low": self.agreement.low,
            "high": self.agreement.high,
            "safer is shorter": self.safer_shorter.estimate,
            "safer is longer": self.safer_longer.estimate,
            "random (mean)": self.random_mean,
            "random (97.5%)": self.random_high,
            "n": self.n,
        }


def length_split(
    values: np.ndarray,
    longer: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[Interval, Interval]:
    """Agreement where the safer response is shorter, and where it is longer (ties left out).

    Args:
        values: Margins, oriented to the label.
        longer: :func:`safer_longer` of the same pairs.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    g = np.asarray(longer).reshape(-1)
    return (
        agreement_interval(x[g < 0], n_boot, seed=seed),
        agreement_interval(x[g > 0], n_boot, seed=seed + 1),
    )


def layer_quality(
    layer: int,
    values: np.ndarray,
    longer: np.ndarray,
    diffs: np.ndarray | None = None,
    n_random: int = 200,
    n_boot: int = 2000,
    seed: int = 0,
) -> LabelledQuality:
    """:class:`LabelledQuality` of margins already computed (``diffs`` for the random
    baseline: the oriented pair differences at this layer)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    shorter_iv, longer_iv = length_split(x, longer, n_boot, seed)
    random_mean = random_high = float("nan")
    if diffs is not None and n_random > 0 and len(x):
        shares = random_direction_agreements(diffs, np.zeros_like(diffs), n_random, seed)
        random_mean, random_high = float(shares.mean()), float(np.quantile(shares, 0.975))
    return LabelledQuality(
        layer=layer,
        agreement=agreement_interval(x, n_boot, seed=seed),
        safer_shorter=shorter_iv,
        safer_longer=longer_iv,
        random_mean=random_mean,
        random_high=random_high,
        n=len(x),
    )


def labelled_quality(
    diffs_by_layer: Mapping[int, np.ndarray],
    vectors: Mapping[int, np.ndarray],
    longer: np.ndarray,
    n_random: int = 200,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[LabelledQuality]:
    """Agreement of each layer's direction with the labels, with the length split and the
    random baseline. ``vectors[layer]`` is that layer's direction; layers without one are
    skipped."""
    out = []
    for layer in sorted(vectors):
        diffs = diffs_by_layer[layer]
        values = diffs @ np.asarray(vectors[layer], dtype=np.float64)
        out.append(layer_quality(layer, values, longer, diffs, n_random, n_boot, seed))
    return out


def length_baseline(
    chosen_lengths: np.ndarray,
    rejected_lengths: np.ndarray,
    signs: np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> Interval:
    """Agreement of "the shorter response is safer" with the labels."""
    values = shorter_is_safer(chosen_lengths, rejected_lengths)
    if signs is not None:
        values = values * _signs(signs, len(values))
    return agreement_interval(values, n_boot, seed=seed)


# --- reviews that teach ----------------------------------------------------------------------


@dataclass
class CurvePoint:
    """Agreement on held-out labelled pairs after learning from ``n_labels`` of them."""

    n_labels: int
    mean: float
    sd: float
    repeats: int
    n_held_out: int


@single_threaded
def learning_curve(
    diffs: np.ndarray,
    sizes: Sequence[int],
    settings: ProbeSettings | None = None,
    prior: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    longer: np.ndarray | None = None,
    held_out: float = 0.3,
    repeats: int = 5,
    seed: int = 0,
    test_diffs: np.ndarray | None = None,
    cs: Sequence[float] | None = None,
    k: int = DEFAULT_FOLDS,
) -> list[CurvePoint]:
    """Agreement on held-out pairs vs the number of labelled pairs learned from, at one layer.

    Each repeat splits the pairs into a pool and a held-out part (``held_out`` of them),
    unless ``test_diffs`` gives a fixed held-out set; each size learns from the first
    ``size`` pairs of a shuffled pool (nested pools: a larger size adds pairs). Size 0 is
    the prior alone (no label), when one is given. With ``cs``, each size of at least
    ``2 k`` pairs chooses its C by k-fold cross-validation among its own pairs, as
    :func:`learn_direction` does; smaller ones use ``settings.c``.
    """
    settings = settings or ProbeSettings()
    d = np.asarray(diffs, dtype=np.float64)
    points = []
    results: dict[int, list[float]] = {s: [] for s in sizes}
    n_test = 0
    for rep in range(repeats):
        rng = np.random.default_rng(seed + rep)
        order = rng.permutation(len(d))
        if test_diffs is None:
            cut = max(1, round(len(d) * held_out))
            test_rows, pool = order[:cut], order[cut:]
            test = d[test_rows]
        else:
            pool, test = order, np.asarray(test_diffs, dtype=np.float64)
        n_test = len(test)
        for size in sizes:
            if size == 0 and prior is not None:
                vector = np.asarray(prior, dtype=np.float64)
                results[size].append(float(agreement_scores(test @ vector).mean()))
                continue
            if size > len(pool) or size < 2:
                continue
            rows = pool[:size]
            side = (
                None if lengths is None else lengths[rows],
                None if longer is None else longer[rows],
            )
            chosen = settings
            if cs and size >= 2 * k:
                folds = kfold_ids(size, k, seed + rep)
                best = best_candidate(
                    cv_candidates(
                        {0: d[rows]},
                        folds,
                        settings,
                        cs,
                        None if prior is None else {0: prior},
                        *side,
                    )
                )
                chosen = with_c(settings, best.c)
            probe = fit_probe(d[rows], chosen, prior, *side)
            results[size].append(float(agreement_scores(test @ probe.vector).mean()))
    for size in sizes:
        vals = results[size]
        if vals:
            points.append(
                CurvePoint(size, float(np.mean(vals)), float(np.std(vals)), len(vals), n_test)
            )
    return points
