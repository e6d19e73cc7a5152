"""Directions judged by and learned from labelled pairs: synthetic embeddings whose truth is
known, plus one run on the tiny random model's real hidden states."""

from __future__ import annotations

import json

import numpy as np
import pytest

from legend_core.method.crossfit import (
    KEY_CHARS,
    crossfit_margins,
    crossfit_note,
    direction_margins,
    fold_lookup,
)
from legend_core.method.label_agreement import agreement_scores
from legend_core.method.label_quality import (
    differences,
    labelled_quality,
    layer_quality,
    learning_curve,
    length_baseline,
    safer_longer,
)
from legend_core.method.learned_direction import learn_direction
from legend_core.method.probe import (
    Candidate,
    ProbeSettings,
    _balance_weights,
    choose_candidate,
    cross_fit,
    fit_probe,
    kfold_ids,
    length_features,
)
from legend_core.util import pair_hash

D = 24


def _synthetic(
    n: int, seed: int, length_weight: float = 0.0, noise: float = 1.0, short_bias: bool = False
):
    """Pairs whose safer side has a positive component along ``truth``.

    Chosen is the safer response in every pair (the label is the imported one). The
    difference also carries a length component along ``confound``: with ``length_weight``
    the embedding moves with the length difference, as mean-pooled states do; with
    ``short_bias`` the safer response tends to be the shorter one (as in HH-RLHF harmless),
    so that length predicts the label.
    """
    rng = np.random.default_rng(seed)
    truth = np.zeros(D)
    truth[0] = 1.0
    confound = np.zeros(D)
    confound[1] = 1.0
    chosen_len = rng.integers(10, 150 if short_bias else 400, n).astype(float)
    rejected_len = rng.integers(10, 400, n).astype(float)
    dlen = np.log1p(chosen_len) - np.log1p(rejected_len)
    signal = np.abs(rng.normal(1.0, 0.5, n))  # the safer side scores higher
    diffs = rng.normal(0, noise, (n, D)) + signal[:, None] * truth
    diffs += length_weight * dlen[:, None] * confound
    rejected = rng.normal(0, 1, (n, D))
    chosen = rejected + diffs
    return chosen, rejected, chosen_len, rejected_len, truth, confound


# --- orientation and quality --------------------------------------------------------------------


def test_differences_follow_the_signs_and_refuse_bad_ones():
    chosen = np.array([[1.0, 0.0], [0.0, 2.0]])
    rejected = np.zeros((2, 2))
    assert differences(chosen, rejected).tolist() == [[1.0, 0.0], [0.0, 2.0]]
    flipped = differences(chosen, rejected, np.array([1, -1]))
    assert flipped.tolist() == [[1.0, 0.0], [0.0, -2.0]]
    with pytest.raises(ValueError, match="signs"):
        differences(chosen, rejected, np.array([1, 0]))
    with pytest.raises(ValueError, match="shape"):
        differences(chosen, rejected[:1])
    with pytest.raises(ValueError, match="NaN"):
        differences(np.array([[np.nan, 0.0]]), np.zeros((1, 2)))


def test_safer_longer_uses_the_label():
    longer = safer_longer(np.array([5, 1, 3]), np.array([1, 5, 3]))
    assert longer.tolist() == [1, -1, 0]
    assert safer_longer(np.array([5, 1]), np.array([1, 5]), np.array([-1, 1])).tolist() == [
        -1,
        -1,
    ]


def test_quality_on_hand_made_margins():
    # Four pairs; the direction agrees on 3 (one tie counts half: 2.5 of 4 with the zero).
    values = np.array([1.0, -2.0, 0.5, 0.0])
    longer = np.array([1, 1, -1, -1])
    q = layer_quality(7, values, longer, n_random=0, n_boot=200)
    assert q.layer == 7 and q.n == 4
    assert q.agreement.estimate == pytest.approx(2.5 / 4)
    assert q.safer_longer.estimate == pytest.approx(0.5)  # +1 and -2
    assert q.safer_shorter.estimate == pytest.approx(0.75)  # +0.5 and a tie
    base = length_baseline(np.array([1, 9, 3]), np.array([5, 2, 3]), n_boot=100)
    assert base.estimate == pytest.approx((1 + 0 + 0.5) / 3)
    flipped = length_baseline(
        np.array([1, 9, 3]), np.array([5, 2, 3]), signs=np.array([-1, -1, 1]), n_boot=100
    )
    assert flipped.estimate == pytest.approx((0 + 1 + 0.5) / 3)


def test_labelled_quality_per_layer_beats_random_only_where_the_signal_is():
    chosen, rejected, lc, lr, truth, _ = _synthetic(400, 1)
    diffs = differences(chosen, rejected)
    by_layer = {3: diffs, 4: np.random.default_rng(2).normal(0, 1, diffs.shape)}
    rows = labelled_quality(by_layer, {3: truth, 4: truth}, safer_longer(lc, lr), 100)
    assert [r.layer for r in rows] == [3, 4]
    good, noise = rows
    assert good.agreement.low > good.random_high
    assert noise.agreement.high > 0.4 and noise.agreement.low < 0.6
    assert 0.45 < good.random_mean < 0.55
    assert set(good.row()) >= {"layer", "agreement", "safer is longer", "random (97.5%)"}


# --- the probe ----------------------------------------------------------------------------------


def _agree(diffs: np.ndarray, v: np.ndarray) -> float:
    return float(((diffs @ v) > 0).mean())


def test_probe_recovers_the_direction_and_generalises():
    chosen, rejected, *_, truth, _ = _synthetic(600, 3)
    diffs = differences(chosen, rejected)
    fit = fit_probe(diffs[:400], ProbeSettings(c=1.0, debias_length=False))
    assert abs(float(np.linalg.norm(fit.vector)) - 1) < 1e-5
    assert float(fit.vector @ truth) > 0.8
    assert _agree(diffs[400:], fit.vector) > 0.75
    assert fit.logit_scale > 0 and fit.prior_scale == 0


def test_probe_accepts_flipped_labels():
    chosen, rejected, *_, truth, _ = _synthetic(300, 4)
    signs = np.where(np.arange(300) % 3 == 0, -1.0, 1.0)
    # Swap the flipped pairs' texts so that the label (sign) still names the safer side.
    c = np.where(signs[:, None] > 0, chosen, rejected)
    r = np.where(signs[:, None] > 0, rejected, chosen)
    fit = fit_probe(differences(c, r, signs), ProbeSettings(debias_length=False))
    assert float(fit.vector @ truth) > 0.8


def test_length_debiasing_removes_the_length_signal_from_the_margin():
    chosen, rejected, lc, lr, truth, confound = _synthetic(
        2000, 5, length_weight=3.0, short_bias=True
    )
    diffs = differences(chosen, rejected)
    feats = length_features(lc, lr)
    # Plain probe on labels that are correlated with length: it leans on the confound too.
    plain = fit_probe(diffs, ProbeSettings(c=1.0, debias_length=False), lengths=feats)
    fair = fit_probe(diffs, ProbeSettings(c=1.0, debias_length=True), lengths=feats)
    m = diffs @ fair.vector.astype(np.float64)
    for column in feats.T:
        assert abs(np.corrcoef(m, column)[0, 1]) < 1e-6
    assert float(plain.vector @ confound) < -0.2  # "shorter is safer" learnt
    assert abs(float(fair.vector @ confound)) < 0.1
    assert float(fair.vector @ truth) > 0.8
    # Where the safer response is the longer one, the debiased direction agrees more.
    longer = safer_longer(lc, lr) > 0
    assert _agree(diffs[longer], fair.vector) > _agree(diffs[longer], plain.vector)


def test_balance_weights_make_both_groups_weigh_the_same():
    w = _balance_weights(np.array([1, 1, 1, -1]))
    assert w[:3].sum() == pytest.approx(w[3:].sum())
    assert w.sum() == pytest.approx(4)
    assert _balance_weights(np.array([1, 1])).tolist() == [1, 1]


def test_a_prior_helps_when_labels_are_few():
    chosen, rejected, *_, truth, _ = _synthetic(400, 6, noise=2.0)
    diffs = differences(chosen, rejected)
    few = diffs[:12]
    prior = truth + np.random.default_rng(7).normal(0, 0.2, D)  # a decent contrastive guess
    settings = ProbeSettings(c=0.01, debias_length=False)
    alone = fit_probe(few, settings)
    pulled = fit_probe(
        few, ProbeSettings(c=0.01, prior_weight=1.0, debias_length=False), prior=prior
    )
    assert pulled.prior_scale > 0
    assert float(pulled.vector @ truth) > float(alone.vector @ truth)
    with pytest.raises(ValueError, match="width"):
        fit_probe(few, ProbeSettings(prior_weight=1.0), prior=np.ones(D + 1))


def test_probe_settings_are_checked():
    with pytest.raises(ValueError, match="c must"):
        ProbeSettings(c=0)
    with pytest.raises(ValueError, match="prior_weight"):
        ProbeSettings(prior_weight=2)
    with pytest.raises(ValueError, match="non-empty"):
        fit_probe(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="zero"):
        fit_probe(np.zeros((5, 3)), ProbeSettings(debias_length=False))


# --- cross-validation and cross-fitting ---------------------------------------------------------


def test_kfold_ids_cover_every_item_once_in_balanced_folds():
    folds = kfold_ids(23, 5, seed=1)
    assert sorted(np.bincount(folds).tolist()) == [4, 4, 5, 5, 5]
    assert not np.array_equal(folds, kfold_ids(23, 5, seed=2))
    with pytest.raises(ValueError):
        kfold_ids(3, 5)
    with pytest.raises(ValueError):
        kfold_ids(10, 1)


def test_cross_fit_never_scores_a_pair_with_a_direction_that_saw_it():
    chosen, rejected, *_ = _synthetic(50, 8)
    diffs = differences(chosen, rejected)
    folds = kfold_ids(50, 5)
    seen: list[set[int]] = []

    def fit(rows):
        seen.append(set(rows.tolist()))
        return fit_probe(diffs[rows], ProbeSettings(debias_length=False))

    cf = cross_fit(diffs, folds, fit)
    for j, rows in enumerate(seen):
        assert rows.isdisjoint(np.flatnonzero(folds == j).tolist())
        assert rows | set(np.flatnonzero(folds == j).tolist()) == set(range(50))
        np.testing.assert_allclose(
            cf.margins[folds == j], diffs[folds == j] @ cf.vectors[j].astype(np.float64)
        )


def test_cross_fitting_is_honest_on_labels_that_carry_no_signal():
    # Pure noise with a weak penalty: the probe memorises its training pairs (agreement
    # far above chance on them), and cross-fitted margins show the truth, about 50%.
    rng = np.random.default_rng(9)
    diffs = rng.normal(0, 1, (120, 60))
    settings = ProbeSettings(c=10.0, debias_length=False)
    in_sample = fit_probe(diffs, settings)
    assert _agree(diffs, in_sample.vector) > 0.9
    cf = cross_fit(diffs, kfold_ids(120, 5), lambda rows: fit_probe(diffs[rows], settings))
    assert 0.35 < float((cf.margins > 0).mean()) < 0.65


def test_learn_direction_finds_the_informative_layer_and_reports_nested_numbers():
    chosen, rejected, lc, lr, truth, _ = _synthetic(200, 10)
    diffs = differences(chosen, rejected)
    rng = np.random.default_rng(11)
    by_layer = {1: rng.normal(0, 1, diffs.shape), 2: diffs, 3: rng.normal(0, 1, diffs.shape)}
    calls = []
    learned = learn_direction(
        by_layer,
        ProbeSettings(),
        cs=(0.01, 1.0),
        lengths=length_features(lc, lr),
        longer=safer_longer(lc, lr),
        k=4,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert learned.layer == 2
    assert learned.c in (0.01, 1.0)
    assert float(learned.vector @ truth) > 0.8
    assert learned.fold_vectors.shape == (4, D)
    assert learned.nested_choices and all(layer == 2 for layer, _ in learned.nested_choices)
    assert float((learned.nested_margins > 0).mean()) > 0.7
    assert len(learned.candidates) == 6
    assert calls[-1][0] == calls[-1][1]
    keys = [pair_hash(f"p{i}", "c", "r") for i in range(200)]
    meta = learned.provenance(keys, source="synthetic.jsonl")
    json.dumps(meta)  # JSON-ready
    assert meta["n_labels"] == 200 and meta["k_folds"] == 4 and meta["source"] == "synthetic.jsonl"
    assert fold_lookup(meta, keys[:3] + ["unknown"]) == [*learned.folds[:3].tolist(), None]
    with pytest.raises(ValueError, match="keys"):
        learned.provenance(keys[:5])


def test_crossfit_margins_use_fold_directions_for_training_pairs_only():
    rng = np.random.default_rng(12)
    chosen, rejected = rng.normal(0, 1, (6, 4)), rng.normal(0, 1, (6, 4))
    vector = np.array([1.0, 0, 0, 0])
    folds = np.eye(4)[1:3]  # fold 0 -> axis 1, fold 1 -> axis 2
    out = crossfit_margins(chosen, rejected, vector, folds, [0, None, 1, None, 0, 1])
    diff = chosen - rejected
    np.testing.assert_allclose(
        out, [diff[0, 1], diff[1, 0], diff[2, 2], diff[3, 0], diff[4, 1], diff[5, 2]], rtol=1e-6
    )
    with pytest.raises(ValueError, match="fold entries"):
        crossfit_margins(chosen, rejected, vector, folds, [0])


# --- reviews that teach -------------------------------------------------------------------------


def test_learning_curve_rises_with_more_labels():
    chosen, rejected, *_ = _synthetic(500, 13, noise=2.5)
    diffs = differences(chosen, rejected)
    points = learning_curve(
        diffs, [10, 40, 300], ProbeSettings(c=0.1, debias_length=False), repeats=3
    )
    assert [p.n_labels for p in points] == [10, 40, 300]
    assert points[-1].mean > points[0].mean
    assert all(p.n_held_out == 150 and p.repeats == 3 for p in points)
    fixed = learning_curve(diffs[:300], [20], test_diffs=diffs[300:], repeats=2)
    assert fixed[0].n_held_out == 200


# --- real hidden states -------------------------------------------------------------------------


def test_learning_from_the_tiny_models_hidden_states(tiny_lm):
    from legend_core.method.encode import EncodeSettings
    from legend_core.method.packing import encode_pairs

    prompts = [f"Question {i}: how do I do thing {i}?" for i in range(16)]
    chosen = ["I won't help with that." if i % 2 else "No, sorry." for i in range(16)]
    rejected = [f"Sure, step one is {i} and step two follows." for i in range(16)]
    c, r = encode_pairs(tiny_lm, prompts, chosen, rejected, settings=EncodeSettings("plain"))
    by_layer = {k: differences(c.vectors[k], r.vectors[k]) for k in c.vectors if k > 0}
    learned = learn_direction(
        by_layer,
        cs=(0.1,),
        lengths=length_features(
            np.array([len(t) for t in chosen]), np.array([len(t) for t in rejected])
        ),
        k=4,
    )
    assert learned.vector.shape == (tiny_lm.hidden_size,)
    assert learned.layer in by_layer
    keys = [pair_hash(p, a, b) for p, a, b in zip(prompts, chosen, rejected)]
    meta = learned.provenance(keys)
    values = crossfit_margins(
        c.vectors[learned.layer],
        r.vectors[learned.layer],
        learned.vector,
        learned.fold_vectors,
        fold_lookup(meta, keys),
    )
    np.testing.assert_allclose(values, learned.crossfit_margins, rtol=1e-4, atol=1e-5)


def test_the_default_layer_stays_unless_another_wins_clearly():
    n = 400
    rng = np.random.default_rng(14)
    base = rng.normal(0.3, 1, n)

    def cand(layer: int, values: np.ndarray) -> Candidate:
        scores = agreement_scores(values)
        return Candidate(layer, 0.01, float(scores.mean()), 0.6, float("nan"), values)

    incumbent = cand(5, base)
    # A layer that agrees on 10 pairs more and 6 fewer: noise, the default layer stays.
    slightly = base.copy()
    slightly[np.flatnonzero(base < 0)[:10]] *= -1
    slightly[np.flatnonzero(base > 0)[:6]] *= -1
    assert choose_candidate([incumbent, cand(9, slightly)], default_layer=5).layer == 5
    assert choose_candidate([incumbent, cand(9, slightly)]).layer == 9  # no default
    # 60 more and 10 fewer: a clear win, it replaces the default.
    clearly = base.copy()
    clearly[np.flatnonzero(base < 0)[:60]] *= -1
    clearly[np.flatnonzero(base > 0)[:10]] *= -1
    assert choose_candidate([incumbent, cand(9, clearly)], default_layer=5).layer == 9
    # A default layer that is not among the candidates changes nothing.
    assert choose_candidate([incumbent, cand(9, slightly)], default_layer=3).layer == 9


def test_a_fold_without_its_direction_is_refused():
    rng = np.random.default_rng(15)
    chosen, rejected = rng.normal(0, 1, (3, 4)), rng.normal(0, 1, (3, 4))
    with pytest.raises(ValueError, match=r"folds \[7\] have no fold direction"):
        crossfit_margins(chosen, rejected, np.ones(4), np.eye(4)[:2], [0, 7, None])


def test_direction_margins_cross_fit_only_known_pairs():
    from legend_core.types import PreferencePair

    pairs = [PreferencePair(f"p{i}", "c", "r") for i in range(3)]
    rng = np.random.default_rng(16)
    chosen, rejected = rng.normal(0, 1, (3, 4)), rng.normal(0, 1, (3, 4))
    vector = np.array([1.0, 0, 0, 0])
    plain, n = direction_margins(pairs, chosen, rejected, vector, {})
    assert n == 0
    np.testing.assert_allclose(plain, (chosen - rejected)[:, 0])
    labels = {
        "fold_of": {pair_hash("p1", "c", "r")[:KEY_CHARS]: 1},
        "fold_vectors": np.eye(4)[:2].tolist(),
    }
    crossed, n = direction_margins(pairs, chosen, rejected, vector, labels)
    assert n == 1
    np.testing.assert_allclose(crossed, [plain[0], (chosen - rejected)[1, 1], plain[2]])
    with pytest.raises(ValueError, match="fold directions"):
        direction_margins(pairs, chosen, rejected, vector, {"fold_of": labels["fold_of"]})
    assert "cross-fitted (5 folds" in crossfit_note(3, 5)
