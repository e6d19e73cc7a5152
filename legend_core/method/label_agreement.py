"""Label agreement: how often a margin agrees with the human preference label.

One rule everywhere: a positive margin agrees (1), a zero margin is a tie (½), a negative
one disagrees (0); two responses of equal length are likewise a tie for the length
baseline. Bootstrap intervals, paired differences, agreement by bins of ``|margin|`` and by
which response is longer, and the two baselines every number is read against: "the shorter
response is safer" and directions of random orientation.

It lives with the method because choosing a layer or a regularisation by labelled agreement
(:mod:`legend_core.method.probe`) is part of building a direction; the reports built on
it are :mod:`legend_core.evaluation`'s. Agreement *between annotators* is another concept:
:mod:`legend_core.review.annotators`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Interval:
    """A share with its bootstrap interval.

    Attributes:
        estimate: The share on the data as it is.
        low: Lower end of the interval.
        high: Upper end of the interval.
        n: Number of pairs it is computed on.
    """

    estimate: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a (no pairs)"
        return f"{self.estimate:.1%} [{self.low:.1%}, {self.high:.1%}]"


def agreement_scores(values: np.ndarray) -> np.ndarray:
    """Per pair: 1 where the value is positive, 0.5 where it is zero, 0 where negative.

    NaN values are not allowed: drop pairs without a margin before calling.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(x).any():
        raise ValueError("values contain NaN: drop pairs without a margin first")
    return (x > 0) + 0.5 * (x == 0)


def agreement_share(margins: np.ndarray) -> float:
    """Mean agreement of the pairs that have a margin (NaN: no margin yet, left out); NaN
    when none has."""
    x = np.asarray(margins, dtype=np.float64).reshape(-1)
    x = x[~np.isnan(x)]
    return float(agreement_scores(x).mean()) if len(x) else float("nan")


def bootstrap_share(
    scores: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile-bootstrap interval of the mean of per-pair scores in {0, 0.5, 1}.

    Resampling n pairs with replacement only changes how many of each score are drawn, so
    each bootstrap replicate is drawn as multinomial counts: exact, and as fast for a
    million pairs as for ten.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(s)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    if not np.isin(s, (0.0, 0.5, 1.0)).all():
        raise ValueError("scores must be 0, 0.5 or 1")
    if not 0 < level < 1:
        raise ValueError("level must lie between 0 and 1")
    p = np.array([(s == 1).mean(), (s == 0.5).mean(), (s == 0).mean()])
    counts = np.random.default_rng(seed).multinomial(n, p / p.sum(), size=n_boot)
    shares = (counts[:, 0] + 0.5 * counts[:, 1]) / n
    tail = (1 - level) / 2
    low, high = np.quantile(shares, [tail, 1 - tail])
    return Interval(float(s.mean()), float(low), float(high), n)


def agreement_interval(
    values: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Share of pairs whose value (a margin) is positive, with a bootstrap interval."""
    return bootstrap_share(agreement_scores(values), n_boot, level, seed)


def paired_difference(
    values_a: np.ndarray,
    values_b: np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Agreement of margins ``a`` minus agreement of margins ``b`` on the same pairs.

    The pairs are resampled together (a paired bootstrap), so what the two share (the same
    hard and easy pairs) cancels out: the interval is the one to read when asking whether
    one setting beats another on one data set.
    """
    a, b = agreement_scores(values_a), agreement_scores(values_b)
    if a.shape != b.shape:
        raise ValueError("both settings must be measured on the same pairs")
    n = len(a)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    diff = a - b
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)
    means = []
    for start in range(0, n_boot, chunk):
        rows = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        means.append(diff[rows].mean(1))
    tail = (1 - level) / 2
    low, high = np.quantile(np.concatenate(means), [tail, 1 - tail])
    return Interval(float(diff.mean()), float(low), float(high), n)


@dataclass
class BinRow:
    """Agreement among the pairs whose ``|margin|`` falls in one quantile bin."""

    bin: int
    low: float
    high: float
    agreement: Interval


def agreement_by_bin(
    values: np.ndarray, bins: int = 5, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> list[BinRow]:
    """Agreement by quantile bins of the margin's size, from the smallest ``|margin|`` up.

    A margin that measures something real agrees more often with people where it is large
    (the direction is confident) than where it is near zero.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if bins < 1:
        raise ValueError("bins must be at least 1")
    if len(x) == 0:
        return []
    size = np.abs(x)
    edges = np.quantile(size, np.linspace(0, 1, bins + 1))
    index = np.clip(np.searchsorted(edges[1:-1], size, side="right"), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = index == b
        if not mask.any():
            continue
        rows.append(
            BinRow(
                bin=b,
                low=float(size[mask].min()),
                high=float(size[mask].max()),
                agreement=agreement_interval(x[mask], n_boot, level, seed + b + 1),
            )
        )
    return rows


def shorter_is_safer(chosen_lengths: np.ndarray, rejected_lengths: np.ndarray) -> np.ndarray:
    """The length baseline's "margin": positive where the chosen response is the shorter one."""
    c = np.asarray(chosen_lengths, dtype=np.float64)
    r = np.asarray(rejected_lengths, dtype=np.float64)
    if c.shape != r.shape:
        raise ValueError("chosen and rejected lengths differ in shape")
    return r - c


def text_lengths(texts: Sequence[str]) -> np.ndarray:
    """Length of each text in characters, the unit of the length baseline."""
    return np.array([len(t) for t in texts], dtype=np.int64)


def agreement_by_length(
    values: np.ndarray,
    chosen_lengths: np.ndarray,
    rejected_lengths: np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Agreement apart for pairs whose chosen response is shorter, and for the others.

    A length-controlled view: where people preferred the *longer* response, "shorter is
    safer" is always wrong, so agreement there cannot come from measuring length alone.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    shorter = np.asarray(chosen_lengths) < np.asarray(rejected_lengths)
    return {
        "chosen is shorter": agreement_interval(x[shorter], n_boot, level, seed),
        "chosen is as long or longer": agreement_interval(x[~shorter], n_boot, level, seed + 1),
    }


@dataclass
class RandomBaseline:
    """Agreement of directions with random orientation on the same pairs.

    By symmetry their mean agreement is 50%; the spread says how far from 50% a direction
    that means nothing lands on this data set, by chance and by the data's own geometry.

    Attributes:
        mean: Mean agreement over the random directions.
        low: 2.5th percentile.
        high: 97.5th percentile.
        n_directions: How many random directions were drawn.
        beaten_by: Share of random directions whose agreement the real direction exceeds
            (None when no real direction was given).
    """

    mean: float
    low: float
    high: float
    n_directions: int
    beaten_by: float | None = None

    def __str__(self) -> str:
        return f"{self.mean:.1%} (95% of directions in [{self.low:.1%}, {self.high:.1%}])"


def random_direction_agreements(
    chosen: np.ndarray, rejected: np.ndarray, n_directions: int = 200, seed: int = 0
) -> np.ndarray:
    """Agreement of each of ``n_directions`` uniformly random unit directions."""
    c, r = np.asarray(chosen, dtype=np.float32), np.asarray(rejected, dtype=np.float32)
    if c.shape != r.shape or c.ndim != 2:
        raise ValueError("chosen and rejected embeddings must be (n, d) arrays of one shape")
    u = np.random.default_rng(seed).standard_normal((c.shape[1], n_directions))
    u = (u / np.linalg.norm(u, axis=0)).astype(np.float32)
    projected = (c @ u) - (r @ u)  # (n, k): never an (n, d) difference array
    return ((projected > 0) + 0.5 * (projected == 0)).mean(0)


def random_baseline(
    chosen: np.ndarray,
    rejected: np.ndarray,
    n_directions: int = 200,
    seed: int = 0,
    reference: float | None = None,
) -> RandomBaseline:
    """Summary of :func:`random_direction_agreements`; ``reference`` is the real agreement."""
    shares = random_direction_agreements(chosen, rejected, n_directions, seed)
    low, high = np.quantile(shares, [0.025, 0.975])
    beaten = None if reference is None else float((shares < reference).mean())
    return RandomBaseline(float(shares.mean()), float(low), float(high), n_directions, beaten)
