"""Directions judged by, and learned from, labelled preference pairs (issue 13).

A preference pair with a human label is a free test of a direction (does the margin's sign
agree with the label?) and a free training example (the safer response minus the other
one should project positively). This module does both, on embeddings only: pure numpy,
scipy and scikit-learn, no model, no torch, no store, so every piece is fast to test.

1. **Quality on labelled pairs** (:func:`labelled_quality`): per layer, agreement with a
   bootstrap interval, split by which response is longer, beside the "shorter is safer"
   baseline and directions of random orientation at the same layer.
2. **Learning a direction** (:func:`fit_probe`, :func:`learn_direction`): an L2-penalised
   logistic probe on pair differences (safer minus less safe), optionally pulled toward a
   contrastive direction (its *prior*), with the length of the responses projected out of
   the features. Layer and penalty are chosen by k-fold cross-validated agreement, and the
   number reported for the choice comes from an outer fold that the choice never saw
   (nested cross-validation).
3. **Cross-fitting** (:func:`cross_fit`, :func:`crossfit_margins`): k directions, each fitted
   without one fold, so every labelled pair's margin comes from a direction that never saw
   that pair. A learned direction carries them (and which pair was in which fold, by content
   hash), so annotating its own training pairs can use them automatically.
4. **Reviews that teach** (:func:`uncertainty`, :func:`least_sure_first`,
   :func:`learning_curve`): least-sure-first ordering for the review queue, and how
   agreement on held-out reviewed pairs grows with the number of reviews.

Orientation: every function takes pair differences or (chosen, rejected) embeddings with an
optional ``signs`` array (+1: the imported chosen response is the safer one, -1: a reviewer
flipped the pair). A margin is positive when the direction agrees with the label.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from legend_core.method.label_agreement import (
    Interval,
    agreement_interval,
    agreement_scores,
    random_direction_agreements,
    shorter_is_safer,
)
from legend_core.util import pair_hash

#: Inverse L2 strengths tried by cross-validation (scikit-learn's ``C``: the penalty is
#: ``½‖β - β₀‖²`` against ``C ×`` the summed log-loss, on standardised differences). The
#: smallest keeps the prior as it is (a few labels may not be worth moving it); the
#: largest chosen on HH-RLHF harmless was 1e-2 (EVALUATION.md).
DEFAULT_CS: tuple[float, ...] = (1e-6, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
DEFAULT_FOLDS = 5
#: Hex characters of a pair's key kept in a direction's provenance (64 bits: no collision
#: to expect below billions of pairs, and a quarter of the full key's size).
KEY_CHARS = 16

F = TypeVar("F", bound=Callable[..., Any])


def single_threaded(fn: F) -> F:
    """Run ``fn`` with one BLAS thread: its matrices are small (a few hundred pairs by a
    few hundred dimensions), where threads only add overhead; on two busy cores a probe fit
    took 0.5-1 s with two threads and 0.03-0.06 s with one."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --- pair identity and orientation -----------------------------------------------------------


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


# --- the probe -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSettings:
    """How a direction is fitted from labelled pair differences.

    Attributes:
        c: Inverse strength of the L2 penalty (scikit-learn's ``C``).
        prior_weight: 0 shrinks the probe toward zero (a plain probe); 1 shrinks it toward
            the contrastive direction, scaled to fit the labels best (a probe that only
            moves away from the prior as far as the labels ask).
        debias_length: Project the response-length directions out of the features (and the
            prior), so that the margin is uncorrelated with the length difference on the
            training pairs.
        balance_length: Weight pairs so that those whose safer response is longer weigh as
            much in total as those whose safer response is shorter.
    """

    c: float = 0.01
    prior_weight: float = 0.0
    debias_length: bool = True
    balance_length: bool = False

    def __post_init__(self) -> None:
        if not (self.c > 0 and math.isfinite(self.c)):
            raise ValueError("c must be a positive number")
        if not 0 <= self.prior_weight <= 1:
            raise ValueError("prior_weight must lie in [0, 1]")


@dataclass
class ProbeFit:
    """A fitted probe.

    Attributes:
        vector: (d,) unit direction in the raw embedding space (margin = difference · vector).
        logit_scale: Logit of "the label is right" per unit of margin (the probe's norm):
            ``σ(logit_scale · margin)`` is the probe's probability.
        prior_scale: The scale the prior was given (0 without a prior).
    """

    vector: np.ndarray
    logit_scale: float
    prior_scale: float = 0.0


def length_features(chosen_lengths: np.ndarray, rejected_lengths: np.ndarray) -> np.ndarray:
    """(n, 2) length differences of a pair: in characters and in log characters. Oriented
    like the pair (chosen minus rejected); the projection is sign-blind."""
    c = np.asarray(chosen_lengths, dtype=np.float64).reshape(-1)
    r = np.asarray(rejected_lengths, dtype=np.float64).reshape(-1)
    return np.stack([c - r, np.log1p(c) - np.log1p(r)], 1)


def length_basis(diffs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Orthonormal (d, q) basis of the directions along which pair differences covary with
    the length differences (one per length feature): ``cov(diffs · w, length) = 0`` exactly
    for every ``w`` orthogonal to it."""
    x = np.asarray(lengths, dtype=np.float64)
    x = x.reshape(len(diffs), -1)
    x = x - x.mean(0)
    keep = x.std(0) > 0
    if not keep.any():
        return np.zeros((diffs.shape[1], 0))
    c = (diffs - diffs.mean(0)).T @ x[:, keep]  # (d, q) covariances
    q, r = np.linalg.qr(c)
    good = np.abs(np.diag(r)) > 1e-10 * max(1.0, float(np.abs(r).max()))
    return q[:, good]


def _project_out(x: np.ndarray, basis: np.ndarray) -> np.ndarray:
    if basis.shape[1] == 0:
        return x
    return x - (x @ basis) @ basis.T


def _balance_weights(longer: np.ndarray) -> np.ndarray:
    g = np.asarray(longer).reshape(-1) > 0
    n, n_long = len(g), int(g.sum())
    if n_long == 0 or n_long == n:
        return np.ones(n)
    return np.where(g, n / (2 * n_long), n / (2 * (n - n_long)))


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _fit_scale(m: np.ndarray, weights: np.ndarray) -> float:
    """Non-negative α minimising the weighted log-loss of ``α · m`` (a 1-D logistic fit)."""
    from scipy.optimize import minimize_scalar

    if not np.any(m):
        return 0.0
    top = 50.0 / (float(np.abs(m).max()) + 1e-12)
    res = minimize_scalar(
        lambda a: float(weights @ _softplus(-a * m)), bounds=(0.0, top), method="bounded"
    )
    return float(max(res.x, 0.0))


@single_threaded
def fit_probe(
    diffs: np.ndarray,
    settings: ProbeSettings | None = None,
    prior: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    longer: np.ndarray | None = None,
) -> ProbeFit:
    """An L2-penalised logistic probe on oriented pair differences, without intercept.

    Each difference ``x`` (safer minus less safe) should score ``x · β > 0``; the objective
    is ``C · Σ wᵢ log(1 + exp(-xᵢ · β)) + ½ ‖β - β₀‖²`` on standardised differences (each
    dimension divided by its root mean square: the differences are symmetric, so no
    centring). ``β₀`` is 0, or the prior direction scaled to fit the labels best.

    Args:
        diffs: (n, d) oriented pair differences (:func:`differences`).
        settings: Penalty, prior weight and length handling.
        prior: (d,) a direction the probe is pulled toward (a contrastive direction).
        lengths: (n, q) length differences (:func:`length_features`), for ``debias_length``.
        longer: (n,) :func:`safer_longer`, for ``balance_length``.
    """
    from scipy.optimize import minimize

    settings = settings or ProbeSettings()
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 2 or len(d) == 0:
        raise ValueError("diffs must be a non-empty (n, d) array")
    n = len(d)
    basis = np.zeros((d.shape[1], 0))
    if settings.debias_length and lengths is not None and n > 2:
        basis = length_basis(d, lengths)
        d = _project_out(d, basis)
    weights = np.ones(n)
    if settings.balance_length and longer is not None:
        weights = _balance_weights(longer)
    scale = np.sqrt((d * d).mean(0)) + 1e-8
    x = d / scale

    beta0 = np.zeros(d.shape[1])
    alpha = 0.0
    if prior is not None and settings.prior_weight > 0:
        p = np.asarray(prior, dtype=np.float64).reshape(-1)
        if p.shape[0] != d.shape[1]:
            raise ValueError(f"prior has width {p.shape[0]}, the differences {d.shape[1]}")
        p = _project_out(p[None, :], basis)[0]
        b0 = p * scale  # the prior's coefficients on the standardised features
        alpha = _fit_scale(x @ b0, weights)
        beta0 = settings.prior_weight * alpha * b0
    c = settings.c

    def objective(beta: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ beta
        loss = c * float(weights @ _softplus(-z))
        step = beta - beta0
        grad = -c * (x.T @ (weights * _sigmoid(-z))) + step
        return loss + 0.5 * float(step @ step), grad

    res = minimize(objective, beta0.copy(), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    w = _project_out((res.x / scale)[None, :], basis)[0]
    norm = float(np.linalg.norm(w))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("the probe is zero: the labelled pairs carry no signal at this layer")
    return ProbeFit(vector=(w / norm).astype(np.float32), logit_scale=norm, prior_scale=alpha)


# --- cross-validation and cross-fitting ------------------------------------------------------


def kfold_ids(n: int, k: int = DEFAULT_FOLDS, seed: int = 0) -> np.ndarray:
    """Fold of each of ``n`` items: a seeded permutation cut into ``k`` near-equal folds."""
    if k < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    if n < k:
        raise ValueError(f"{n} labelled pairs cannot fill {k} folds")
    folds = np.empty(n, dtype=np.int64)
    folds[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return folds


Fitter = Callable[[np.ndarray], ProbeFit]


@dataclass
class CrossFit:
    """Out-of-fold margins and the directions that made them.

    Attributes:
        margins: (n,) each pair's margin on the direction fitted without its fold.
        logits: (n,) the same in logit units (margin × that direction's ``logit_scale``).
        folds: (n,) fold of each pair.
        vectors: (k, d) the fold directions; row j never saw fold j.
    """

    margins: np.ndarray
    logits: np.ndarray
    folds: np.ndarray
    vectors: np.ndarray


def cross_fit(diffs: np.ndarray, folds: np.ndarray, fit: Callable[..., ProbeFit]) -> CrossFit:
    """Fit one direction per fold on the other folds; score the fold on it.

    Args:
        diffs: (n, d) oriented pair differences.
        folds: (n,) fold ids 0..k-1 (:func:`kfold_ids`).
        fit: ``fit(train_rows) -> ProbeFit``; it is given the row indices to train on, so
            that it can slice any per-pair side data (lengths, prior) itself.
    """
    folds = np.asarray(folds).reshape(-1)
    k = int(folds.max()) + 1
    margins = np.zeros(len(diffs))
    logits = np.zeros(len(diffs))
    vectors = np.zeros((k, diffs.shape[1]), dtype=np.float32)
    for j in range(k):
        test = folds == j
        probe = fit(np.flatnonzero(~test))
        vectors[j] = probe.vector
        margins[test] = diffs[test] @ probe.vector.astype(np.float64)
        logits[test] = margins[test] * probe.logit_scale
    return CrossFit(margins, logits, folds, vectors)


def log_loss(logits: np.ndarray) -> float:
    """Mean ``log(1 + exp(-logit))``: the probe's log-loss on labelled pairs."""
    return float(_softplus(-np.asarray(logits, dtype=np.float64)).mean())


@dataclass
class Candidate:
    """One (layer, C) setting judged by cross-validation."""

    layer: int
    c: float
    agreement: float
    log_loss: float
    safer_longer: float
    margins: np.ndarray | None = field(default=None, repr=False, compare=False)

    def key(self) -> tuple[float, float]:
        """Sort key: agreement first; ties (equal to 1e-9) to the lower log-loss."""
        return (round(self.agreement, 9), -self.log_loss)

    def row(self) -> dict[str, Any]:
        """Plain values for a table or JSON (without the out-of-fold margins)."""
        return {
            "layer": self.layer,
            "c": self.c,
            "agreement": self.agreement,
            "log_loss": self.log_loss,
            "safer_longer": self.safer_longer,
        }


def _probe_fitter(
    diffs: np.ndarray,
    settings: ProbeSettings,
    prior: np.ndarray | None,
    lengths: np.ndarray | None,
    longer: np.ndarray | None,
) -> Callable[[np.ndarray], ProbeFit]:
    def fit(rows: np.ndarray) -> ProbeFit:
        return fit_probe(
            diffs[rows],
            settings,
            prior,
            None if lengths is None else lengths[rows],
            None if longer is None else longer[rows],
        )

    return fit


@single_threaded
def cv_candidates(
    diffs_by_layer: Mapping[int, np.ndarray],
    folds: np.ndarray,
    settings: ProbeSettings,
    cs: Sequence[float] = DEFAULT_CS,
    priors: Mapping[int, np.ndarray] | None = None,
    lengths: np.ndarray | None = None,
    longer: np.ndarray | None = None,
) -> list[Candidate]:
    """Cross-validated agreement of every (layer, C): one :func:`cross_fit` each."""
    out = []
    for layer in sorted(diffs_by_layer):
        diffs = diffs_by_layer[layer]
        prior = None if priors is None else priors.get(layer)
        for c in cs:
            fit = _probe_fitter(diffs, _with_c(settings, c), prior, lengths, longer)
            cf = cross_fit(diffs, folds, fit)
            scores = agreement_scores(cf.margins)
            long_rows = np.asarray(longer) > 0 if longer is not None else None
            out.append(
                Candidate(
                    layer=layer,
                    c=c,
                    agreement=float(scores.mean()),
                    log_loss=log_loss(cf.logits),
                    safer_longer=(
                        float(scores[long_rows].mean())
                        if long_rows is not None and long_rows.any()
                        else float("nan")
                    ),
                    margins=cf.margins,
                )
            )
    return out


def best_per_layer(candidates: Sequence[Candidate]) -> dict[int, Candidate]:
    """Each layer's best candidate (its best C), by :func:`best_candidate`'s rule."""
    layers: dict[int, list[Candidate]] = {}
    for c in candidates:
        layers.setdefault(c.layer, []).append(c)
    return {layer: best_candidate(group) for layer, group in sorted(layers.items())}


def _with_c(settings: ProbeSettings, c: float) -> ProbeSettings:
    return ProbeSettings(c, settings.prior_weight, settings.debias_length, settings.balance_length)


def best_candidate(candidates: Sequence[Candidate]) -> Candidate:
    """The candidate of highest cross-validated agreement (ties: lower log-loss, then the
    stronger penalty, then the shallower layer: the simpler choice)."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    return max(candidates, key=lambda c: (*c.key(), -c.c, -c.layer))


#: How many standard errors of the paired cross-validated difference another layer must
#: beat the default layer by to replace it (EVALUATION.md: with up to ~600 labels, choosing
#: the layer freely by CV agreement lost 1-3 points against keeping the contrastive layer).
SWITCH_SE = 2.0


def choose_candidate(
    candidates: Sequence[Candidate], default_layer: int | None = None
) -> Candidate:
    """The (layer, C) to use: by cross-validated agreement, leaning on ``default_layer``.

    Without a default layer, :func:`best_candidate`. With one (the layer the contrastive
    set chose without labels), its best C stays unless the overall best candidate agrees
    more by over ``SWITCH_SE`` standard errors of the paired difference of the two
    candidates' out-of-fold scores (same pairs, so their shared difficulty cancels).
    """
    best = best_candidate(candidates)
    own = [c for c in candidates if c.layer == default_layer]
    if default_layer is None or not own or best.layer == default_layer:
        return best
    incumbent = best_candidate(own)
    if best.margins is None or incumbent.margins is None:
        return best
    diff = agreement_scores(best.margins) - agreement_scores(incumbent.margins)
    se = float(diff.std(ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
    return best if float(diff.mean()) > SWITCH_SE * se else incumbent


# --- learning a direction --------------------------------------------------------------------


@dataclass
class LearnedDirection:
    """A direction learned from labelled pairs, with the evidence and what cross-fitting needs.

    Attributes:
        vector: (d,) unit direction at ``layer``, fitted on every labelled pair.
        layer: The chosen layer.
        c: The chosen inverse penalty.
        settings: Prior weight and length handling.
        logit_scale: Logit per unit of margin of the final probe.
        folds: (n,) the fold of each labelled pair (for cross-fitting).
        fold_vectors: (k, d) directions at ``layer`` fitted without one fold each.
        crossfit_margins: (n,) each labelled pair's margin on the direction that never saw it.
        candidates: Cross-validated agreement of every (layer, C) on all labelled pairs.
        nested_margins: (n,) each pair's margin from an outer fold whose layer and C were
            chosen on the other folds only: the honest estimate of the whole procedure.
        nested_choices: The (layer, C) each outer fold chose.
        seconds: Wall time of the whole fit.
        n: Labelled pairs.
    """

    vector: np.ndarray
    layer: int
    c: float
    settings: ProbeSettings
    logit_scale: float
    folds: np.ndarray
    fold_vectors: np.ndarray
    crossfit_margins: np.ndarray
    candidates: list[Candidate]
    nested_margins: np.ndarray | None = None
    nested_choices: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    n: int = 0

    def layer_quality(
        self,
        diffs_by_layer: Mapping[int, np.ndarray] | None,
        longer: np.ndarray,
        n_random: int = 200,
        n_boot: int = 2000,
        seed: int = 0,
    ) -> list[LabelledQuality]:
        """Per layer, the cross-validated agreement of its best C: each pair scored by a
        probe that never saw it, with the length split and random directions at the layer.
        (Choosing the best layer among these is itself a choice: the number from pairs the
        choice never saw is ``nested_margins``.)"""
        out = []
        for layer, cand in best_per_layer(self.candidates).items():
            if cand.margins is None:
                continue
            diffs = None if diffs_by_layer is None else diffs_by_layer.get(layer)
            out.append(layer_quality(layer, cand.margins, longer, diffs, n_random, n_boot, seed))
        return out

    def provenance(self, keys: Sequence[str] | None = None, source: str = "") -> dict[str, Any]:
        """JSON-ready provenance: which labels, how many, which folds, which choice.

        ``keys`` are the labelled pairs' :func:`pair_key` in the order of ``folds``; with
        them the provenance says which pair was in which fold (cross-fitting needs it).
        """
        out: dict[str, Any] = {
            "source": source,
            "n_labels": int(self.n),
            "k_folds": int(self.fold_vectors.shape[0]),
            "c": self.c,
            "settings": asdict(self.settings),
            "logit_scale": self.logit_scale,
            "cv_agreement": _candidate_of(self.candidates, self.layer, self.c).agreement,
            "crossfit_agreement": float(agreement_scores(self.crossfit_margins).mean()),
            "fold_vectors": self.fold_vectors.astype(np.float32).tolist(),
        }
        if self.nested_margins is not None:
            out["nested_agreement"] = float(agreement_scores(self.nested_margins).mean())
            out["nested_choices"] = [[int(a), float(b)] for a, b in self.nested_choices]
        if keys is not None:
            if len(keys) != len(self.folds):
                raise ValueError(f"{len(keys)} keys for {len(self.folds)} labelled pairs")
            out["fold_of"] = {str(k)[:KEY_CHARS]: int(f) for k, f in zip(keys, self.folds)}
        return out


def _candidate_of(candidates: Sequence[Candidate], layer: int, c: float) -> Candidate:
    return next(x for x in candidates if x.layer == layer and x.c == c)


@single_threaded
def learn_direction(
    diffs_by_layer: Mapping[int, np.ndarray],
    settings: ProbeSettings | None = None,
    cs: Sequence[float] = DEFAULT_CS,
    priors: Mapping[int, np.ndarray] | None = None,
    lengths: np.ndarray | None = None,
    longer: np.ndarray | None = None,
    k: int = DEFAULT_FOLDS,
    seed: int = 0,
    nested: bool = True,
    progress: Callable[[int, int], None] | None = None,
    default_layer: int | None = None,
) -> LearnedDirection:
    """Choose a layer and a penalty by cross-validated agreement, fit, and cross-fit.

    Args:
        diffs_by_layer: Layer -> (n, d) oriented pair differences of the labelled pairs.
        settings: Prior weight and length handling (its ``c`` is replaced by the choice).
        cs: Penalties to try.
        priors: Layer -> contrastive direction (with ``settings.prior_weight`` > 0).
        lengths: (n, q) length differences (:func:`length_features`).
        longer: (n,) :func:`safer_longer` (for the length split and ``balance_length``).
        k: Folds, for the choice, for cross-fitting and for the nested estimate.
        seed: Seed of the folds.
        nested: Also run the nested cross-validation (k times the work of the choice) for
            an estimate of agreement from pairs the choice never saw.
        progress: ``progress(done, total)`` over candidate fits.
        default_layer: The layer chosen without labels (the contrastive direction's); kept
            unless another layer wins clearly (:func:`choose_candidate`).
    """
    start = time.perf_counter()
    settings = settings or ProbeSettings()
    if not diffs_by_layer:
        raise ValueError("no layers to learn from")
    n = len(next(iter(diffs_by_layer.values())))
    if any(len(v) != n for v in diffs_by_layer.values()):
        raise ValueError("every layer must hold the same labelled pairs")
    folds = kfold_ids(n, k, seed)
    rounds = (k + 1) if nested else 1
    total, done = rounds * len(diffs_by_layer) * len(cs), 0

    def tick(step: int) -> None:
        nonlocal done
        done += step
        if progress:
            progress(done, total)

    nested_margins = None
    choices: list[tuple[int, float]] = []
    if nested:
        nested_margins = np.zeros(n)
        for j in range(k):
            train = np.flatnonzero(folds != j)
            test = folds == j
            inner = kfold_ids(len(train), k, seed + 1 + j)
            sub = {layer: v[train] for layer, v in diffs_by_layer.items()}
            chosen = choose_candidate(
                cv_candidates(
                    sub,
                    inner,
                    settings,
                    cs,
                    priors,
                    None if lengths is None else lengths[train],
                    None if longer is None else longer[train],
                ),
                default_layer,
            )
            choices.append((chosen.layer, chosen.c))
            probe = _probe_fitter(
                diffs_by_layer[chosen.layer],
                _with_c(settings, chosen.c),
                None if priors is None else priors.get(chosen.layer),
                lengths,
                longer,
            )(train)
            nested_margins[test] = diffs_by_layer[chosen.layer][test] @ probe.vector.astype(
                np.float64
            )
            tick(len(diffs_by_layer) * len(cs))

    candidates = cv_candidates(diffs_by_layer, folds, settings, cs, priors, lengths, longer)
    tick(len(diffs_by_layer) * len(cs))
    best = choose_candidate(candidates, default_layer)
    final_settings = _with_c(settings, best.c)
    fit = _probe_fitter(
        diffs_by_layer[best.layer],
        final_settings,
        None if priors is None else priors.get(best.layer),
        lengths,
        longer,
    )
    final = fit(np.arange(n))
    cf = cross_fit(diffs_by_layer[best.layer], folds, fit)
    return LearnedDirection(
        vector=final.vector,
        layer=best.layer,
        c=best.c,
        settings=final_settings,
        logit_scale=final.logit_scale,
        folds=folds,
        fold_vectors=cf.vectors,
        crossfit_margins=cf.margins,
        candidates=candidates,
        nested_margins=nested_margins,
        nested_choices=choices,
        seconds=time.perf_counter() - start,
        n=n,
    )


def crossfit_margins(
    chosen: np.ndarray,
    rejected: np.ndarray,
    vector: np.ndarray,
    fold_vectors: np.ndarray,
    pair_folds: Sequence[int | None],
) -> np.ndarray:
    """Margins where each pair the direction was trained on is scored by the fold direction
    that never saw it; other pairs by the direction itself.

    Args:
        chosen: (n, d) embeddings of the chosen responses (as imported).
        rejected: (n, d) embeddings of the rejected responses.
        vector: (d,) the direction fitted on every labelled pair.
        fold_vectors: (k, d) the fold directions.
        pair_folds: Per pair its fold in the training labels, or None if it was not one.
    """
    from legend_core.method.margins import margins as project

    folds = list(pair_folds)
    if len(folds) != len(chosen):
        raise ValueError(f"{len(folds)} fold entries for {len(chosen)} pairs")
    fv = np.asarray(fold_vectors, dtype=np.float32)
    bad = {f for f in folds if f is not None and not 0 <= f < len(fv)}
    if bad:  # a pair of the training labels must never fall back to the final vector
        raise ValueError(f"folds {sorted(bad)} have no fold direction ({len(fv)} given)")
    out = project(chosen, rejected, vector)
    for j in range(len(fv)):
        rows = np.array([f == j for f in folds], dtype=bool)
        if rows.any():
            out[rows] = project(chosen[rows], rejected[rows], fv[j])
    return out


def fold_lookup(provenance: Mapping[str, Any], keys: Sequence[str]) -> list[int | None]:
    """Per pair key, its fold in a learned direction's training labels (None if absent)."""
    table = provenance.get("fold_of") or {}
    return [None if (f := table.get(k[:KEY_CHARS])) is None else int(f) for k in keys]


def pair_folds(labels: Mapping[str, Any], texts: Sequence[Any]) -> list[int | None]:
    """Per pair (anything with ``prompt``, ``chosen``, ``rejected``), its fold in a learned
    direction's training labels; all None for a direction not learned from labels."""
    if not labels.get("fold_of"):
        return [None] * len(texts)
    return fold_lookup(labels, [pair_hash(p.prompt, p.chosen, p.rejected) for p in texts])


def fold_directions(labels: Mapping[str, Any]) -> np.ndarray:
    """(k, d) float32 fold directions of a learned direction (0 rows if it has none)."""
    rows = labels.get("fold_vectors") or []
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)


def direction_margins(
    texts: Sequence[Any],
    chosen: np.ndarray,
    rejected: np.ndarray,
    vector: np.ndarray,
    labels: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, int]:
    """Margins of pairs on a direction, cross-fitted for the pairs it was learned from.

    Returns:
        The margins, and how many pairs were cross-fitted (0 for a contrastive direction or
        pairs it never saw).
    """
    from legend_core.method.margins import margins as project

    folds = pair_folds(labels or {}, texts)
    n_crossfit = sum(f is not None for f in folds)
    if n_crossfit == 0:
        return project(chosen, rejected, vector), 0
    fold_vectors = fold_directions(labels or {})
    if len(fold_vectors) == 0:
        raise ValueError("the direction lists its training pairs but not its fold directions")
    return crossfit_margins(chosen, rejected, vector, fold_vectors, folds), n_crossfit


def crossfit_note(n_crossfit: int, k: int) -> str:
    """How the command line and the pages say that margins were cross-fitted."""
    return (
        f"{n_crossfit} pairs were among the labels this direction learned from: their "
        f"margins are cross-fitted ({k} folds: each from a direction that never saw the pair)"
    )


# --- reviews that teach ----------------------------------------------------------------------


def uncertainty(values: np.ndarray, logit_scale: float | None = None) -> np.ndarray:
    """How unsure a direction is about each pair, in [0, 1] (1: a coin toss).

    ``1 - |2σ(s·m) - 1|`` with ``s`` the probe's logit scale; without one, margins are put
    on a common scale by their root mean square (the order is the same: smallest ``|m|``
    is least sure).
    """
    m = np.asarray(values, dtype=np.float64).reshape(-1)
    if logit_scale is None:
        rms = float(np.sqrt(np.mean(m * m))) if len(m) else 0.0
        logit_scale = 1.0 / rms if rms > 0 else 1.0
    return 1.0 - np.abs(2.0 * _sigmoid(logit_scale * m) - 1.0)


def least_sure_first(values: np.ndarray, others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Indices in review order, least sure first.

    Pairs on which candidate directions (``values`` and each of ``others``) disagree in sign
    come first; within each group, by ``|margin|`` ascending (ties by position).
    """
    m = np.asarray(values, dtype=np.float64).reshape(-1)
    sign = np.sign(m)
    disagree = np.zeros(len(m), dtype=bool)
    for other in others:
        o = np.asarray(other, dtype=np.float64).reshape(-1)
        if o.shape != m.shape:
            raise ValueError("candidate margins must cover the same pairs")
        disagree |= np.sign(o) != sign
    return np.lexsort((np.arange(len(m)), np.abs(m), ~disagree))


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
                chosen = _with_c(settings, best.c)
            probe = fit_probe(d[rows], chosen, prior, *side)
            results[size].append(float(agreement_scores(test @ probe.vector).mean()))
    for size in sizes:
        vals = results[size]
        if vals:
            points.append(
                CurvePoint(size, float(np.mean(vals)), float(np.std(vals)), len(vals), n_test)
            )
    return points
