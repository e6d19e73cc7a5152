"""The probe: a direction fitted from labelled pair differences, and its cross-validation.

An L2-penalised logistic probe on pair differences (safer minus less safe), optionally
pulled toward a contrastive direction (its *prior*), with the length of the responses
projected out of the features (:func:`fit_probe`). Layer and penalty are judged by k-fold
cross-validated agreement (:func:`cv_candidates`) and chosen by :func:`choose_candidate`;
:mod:`legend_core.method.learned_direction` runs the whole procedure. Pure numpy, scipy
and scikit-learn: no model, no torch, no store.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from legend_core.method.label_agreement import agreement_scores

#: Inverse L2 strengths tried by cross-validation (scikit-learn's ``C``: the penalty is
#: ``½‖β - β₀‖²`` against ``C ×`` the summed log-loss, on standardised differences). The
#: smallest keeps the prior as it is (a few labels may not be worth moving it); the
#: largest chosen on HH-RLHF harmless was 1e-2 (EVALUATION.md).
DEFAULT_CS: tuple[float, ...] = (1e-6, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
DEFAULT_FOLDS = 5

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


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, written with tanh so that it never overflows."""
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
        grad = -c * (x.T @ (weights * sigmoid(-z))) + step
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


#: ``fit(train_rows) -> ProbeFit``: what :func:`cross_fit` calls once per fold.
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


def probe_fitter(
    diffs: np.ndarray,
    settings: ProbeSettings,
    prior: np.ndarray | None,
    lengths: np.ndarray | None,
    longer: np.ndarray | None,
) -> Fitter:
    """``fit(rows) -> ProbeFit``: the probe fitted on those rows of ``diffs`` and of the
    per-pair side data (for :func:`cross_fit`)."""

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
            fit = probe_fitter(diffs, with_c(settings, c), prior, lengths, longer)
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


def with_c(settings: ProbeSettings, c: float) -> ProbeSettings:
    """``settings`` with another penalty ``c``."""
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
