"""Learning a direction from labelled pairs (issue 13): choose, fit, cross-fit.

Layer and penalty are chosen by k-fold cross-validated agreement of the probe
(:mod:`legend_core.method.probe`), and the number reported for the choice comes from an
outer fold that the choice never saw (nested cross-validation). The final direction is
fitted on every labelled pair, and k fold directions, each fitted without one fold, give
every labelled pair a margin from a direction that never saw it (cross-fitting); the
direction's provenance records them (:meth:`LearnedDirection.provenance`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from legend_core.method.crossfit import KEY_CHARS
from legend_core.method.label_agreement import agreement_scores
from legend_core.method.label_quality import LabelledQuality, layer_quality
from legend_core.method.probe import (
    DEFAULT_CS,
    DEFAULT_FOLDS,
    Candidate,
    ProbeSettings,
    best_per_layer,
    choose_candidate,
    cross_fit,
    cv_candidates,
    kfold_ids,
    probe_fitter,
    single_threaded,
    with_c,
)


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

        ``keys`` are the labelled pairs' :func:`~legend_core.util.pair_hash` in the order of
        ``folds``; with them the provenance says which pair was in which fold (cross-fitting
        needs it).
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
            probe = probe_fitter(
                diffs_by_layer[chosen.layer],
                with_c(settings, chosen.c),
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
    final_settings = with_c(settings, best.c)
    fit = probe_fitter(
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
