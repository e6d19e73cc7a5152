"""Directions judged by and learned from labelled pairs: synthetic embeddings whose truth is
known, plus one run on the tiny random model's real hidden states."""

from __future__ import annotations

import json

import numpy as np
import pytest

from legend_core.method import labelled as lab
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
    assert lab.differences(chosen, rejected).tolist() == [[1.0, 0.0], [0.0, 2.0]]
    flipped = lab.differences(chosen, rejected, np.array([1, -1]))
    assert flipped.tolist() == [[1.0, 0.0], [0.0, -2.0]]
    with pytest.raises(ValueError, match="signs"):
        lab.differences(chosen, rejected, np.array([1, 0]))
    with pytest.raises(ValueError, match="shape"):
        lab.differences(chosen, rejected[:1])
    with pytest.raises(ValueError, match="NaN"):
        lab.differences(np.array([[np.nan, 0.0]]), np.zeros((1, 2)))


def test_safer_longer_uses_the_label():
    longer = lab.safer_longer(np.array([5, 1, 3]), np.array([1, 5, 3]))
    assert longer.tolist() == [1, -1, 0]
    assert lab.safer_longer(np.array([5, 1]), np.array([1, 5]), np.array([-1, 1])).tolist() == [
        -1,
        -1,
    ]


def test_quality_on_hand_made_margins():
    # Four pairs; the direction agrees on 3 (one tie counts half: 2.5 of 4 with the zero).
    values = np.array([1.0, -2.0, 0.5, 0.0])
    longer = np.array([1, 1, -1, -1])
    q = lab.layer_quality(7, values, longer, n_random=0, n_boot=200)
    assert q.layer == 7 and q.n == 4
    assert q.agreement.estimate == pytest.approx(2.5 / 4)
    assert q.safer_longer.estimate == pytest.approx(0.5)  # +1 and -2
    assert q.safer_shorter.estimate == pytest.approx(0.75)  # +0.5 and a tie
    base = lab.length_baseline(np.array([1, 9, 3]), np.array([5, 2, 3]), n_boot=100)
    assert base.estimate == pytest.approx((1 + 0 + 0.5) / 3)
    flipped = lab.length_baseline(
        np.array([1, 9, 3]), np.array([5, 2, 3]), signs=np.array([-1, -1, 1]), n_boot=100
    )
    assert flipped.estimate == pytest.approx((0 + 1 + 0.5) / 3)


def test_labelled_quality_per_layer_beats_random_only_where_the_signal_is():
    chosen, rejected, lc, lr, truth, _ = _synthetic(400, 1)
    diffs = lab.differences(chosen, rejected)
    by_layer = {3: diffs, 4: np.random.default_rng(2).normal(0, 1, diffs.shape)}
    rows = lab.labelled_quality(by_layer, {3: truth, 4: truth}, lab.safer_longer(lc, lr), 100)
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
    diffs = lab.differences(chosen, rejected)
    fit = lab.fit_probe(diffs[:400], lab.ProbeSettings(c=1.0, debias_length=False))
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
    fit = lab.fit_probe(lab.differences(c, r, signs), lab.ProbeSettings(debias_length=False))
    assert float(fit.vector @ truth) > 0.8


def test_length_debiasing_removes_the_length_signal_from_the_margin():
    chosen, rejected, lc, lr, truth, confound = _synthetic(
        2000, 5, length_weight=3.0, short_bias=True
    )
    diffs = lab.differences(chosen, rejected)
    feats = lab.length_features(lc, lr)
    # Plain probe on labels that are correlated with length: it leans on the confound too.
    plain = lab.fit_probe(diffs, lab.ProbeSettings(c=1.0, debias_length=False), lengths=feats)
    fair = lab.fit_probe(diffs, lab.ProbeSettings(c=1.0, debias_length=True), lengths=feats)
    m = diffs @ fair.vector.astype(np.float64)
    for column in feats.T:
        assert abs(np.corrcoef(m, column)[0, 1]) < 1e-6
    assert float(plain.vector @ confound) < -0.2  # "shorter is safer" learnt
    assert abs(float(fair.vector @ confound)) < 0.1
    assert float(fair.vector @ truth) > 0.8
    # Where the safer response is the longer one, the debiased direction agrees more.
    longer = lab.safer_longer(lc, lr) > 0
    assert _agree(diffs[longer], fair.vector) > _agree(diffs[longer], plain.vector)


def test_balance_weights_make_both_groups_weigh_the_same():
    w = lab._balance_weights(np.array([1, 1, 1, -1]))
    assert w[:3].sum() == pytest.approx(w[3:].sum())
    assert w.sum() == pytest.approx(4)
    assert lab._balance_weights(np.array([1, 1])).tolist() == [1, 1]


def test_a_prior_helps_when_labels_are_few():
    chosen, rejected, *_, truth, _ = _synthetic(400, 6, noise=2.0)
    diffs = lab.differences(chosen, rejected)
    few = diffs[:12]
    prior = truth + np.random.default_rng(7).normal(0, 0.2, D)  # a decent contrastive guess
    settings = lab.ProbeSettings(c=0.01, debias_length=False)
    alone = lab.fit_probe(few, settings)
    pulled = lab.fit_probe(
        few, lab.ProbeSettings(c=0.01, prior_weight=1.0, debias_length=False), prior=prior
    )
    assert pulled.prior_scale > 0
    assert float(pulled.vector @ truth) > float(alone.vector @ truth)
    with pytest.raises(ValueError, match="width"):
        lab.fit_probe(few, lab.ProbeSettings(prior_weight=1.0), prior=np.ones(D + 1))


def test_probe_settings_are_checked():
    with pytest.raises(ValueError, match="c must"):
        lab.ProbeSettings(c=0)
    with pytest.raises(ValueError, match="prior_weight"):
        lab.ProbeSettings(prior_weight=2)
    with pytest.raises(ValueError, match="non-empty"):
        lab.fit_probe(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="zero"):
        lab.fit_probe(np.zeros((5, 3)), lab.ProbeSettings(debias_length=False))


# --- cross-validation and cross-fitting ---------------------------------------------------------


def test_kfold_ids_cover_every_item_once_in_balanced_folds():
    folds = lab.kfold_ids(23, 5, seed=1)
    assert sorted(np.bincount(folds).tolist()) == [4, 4, 5, 5, 5]
    assert not np.array_equal(folds, lab.kfold_ids(23, 5, seed=2))
    with pytest.raises(ValueError):
        lab.kfold_ids(3, 5)
    with pytest.raises(ValueError):
        lab.kfold_ids(10, 1)


def test_cross_fit_never_scores_a_pair_with_a_direction_that_saw_it():
    chosen, rejected, *_ = _synthetic(50, 8)
    diffs = lab.differences(chosen, rejected)
    folds = lab.kfold_ids(50, 5)
    seen: list[set[int]] = []

    def fit(rows):
        seen.append(set(rows.tolist()))
        return lab.fit_probe(diffs[rows], lab.ProbeSettings(debias_length=False))

    cf = lab.cross_fit(diffs, folds, fit)
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
    settings = lab.ProbeSettings(c=10.0, debias_length=False)
    in_sample = lab.fit_probe(diffs, settings)
    assert _agree(diffs, in_sample.vector) > 0.9
    cf = lab.cross_fit(
        diffs, lab.kfold_ids(120, 5), lambda rows: lab.fit_probe(diffs[rows], settings)
    )
    assert 0.35 < float((cf.margins > 0).mean()) < 0.65


def test_learn_direction_finds_the_informative_layer_and_reports_nested_numbers():
    chosen, rejected, lc, lr, truth, _ = _synthetic(200, 10)
    diffs = lab.differences(chosen, rejected)
    rng = np.random.default_rng(11)
    by_layer = {1: rng.normal(0, 1, diffs.shape), 2: diffs, 3: rng.normal(0, 1, diffs.shape)}
    calls = []
    learned = lab.learn_direction(
        by_layer,
        lab.ProbeSettings(),
        cs=(0.01, 1.0),
        lengths=lab.length_features(lc, lr),
        longer=lab.safer_longer(lc, lr),
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
    assert lab.fold_lookup(meta, keys[:3] + ["unknown"]) == [*learned.folds[:3].tolist(), None]
    with pytest.raises(ValueError, match="keys"):
        learned.provenance(keys[:5])


def test_crossfit_margins_use_fold_directions_for_training_pairs_only():
    rng = np.random.default_rng(12)
    chosen, rejected = rng.normal(0, 1, (6, 4)), rng.normal(0, 1, (6, 4))
    vector = np.array([1.0, 0, 0, 0])
    folds = np.eye(4)[1:3]  # fold 0 -> axis 1, fold 1 -> axis 2
    out = lab.crossfit_margins(chosen, rejected, vector, folds, [0, None, 1, None, 0, 1])
    diff = chosen - rejected
    np.testing.assert_allclose(
        out, [diff[0, 1], diff[1, 0], diff[2, 2], diff[3, 0], diff[4, 1], diff[5, 2]], rtol=1e-6
    )
    with pytest.raises(ValueError, match="fold entries"):
        lab.crossfit_margins(chosen, rejected, vector, folds, [0])


# --- reviews that teach -------------------------------------------------------------------------


def test_uncertainty_and_least_sure_first():
    m = np.array([3.0, -0.1, 0.5, -2.0, 0.0])
    u = lab.uncertainty(m)
    assert u.argmax() == 4 and u[4] == pytest.approx(1.0)
    assert ((u >= 0) & (u <= 1)).all()
    assert lab.least_sure_first(m).tolist() == [4, 1, 2, 3, 0]
    # A second direction that disagrees on pair 0 puts it first.
    other = np.array([-1.0, -0.2, 0.4, -1.0, 0.0])
    assert lab.least_sure_first(m, [other]).tolist()[0] == 0
    with pytest.raises(ValueError, match="same pairs"):
        lab.least_sure_first(m, [other[:2]])


def test_learning_curve_rises_with_more_labels():
    chosen, rejected, *_ = _synthetic(500, 13, noise=2.5)
    diffs = lab.differences(chosen, rejected)
    points = lab.learning_curve(
        diffs, [10, 40, 300], lab.ProbeSettings(c=0.1, debias_length=False), repeats=3
    )
    assert [p.n_labels for p in points] == [10, 40, 300]
    assert points[-1].mean > points[0].mean
    assert all(p.n_held_out == 150 and p.repeats == 3 for p in points)
    fixed = lab.learning_curve(diffs[:300], [20], test_diffs=diffs[300:], repeats=2)
    assert fixed[0].n_held_out == 200


# --- real hidden states -------------------------------------------------------------------------


def test_learning_from_the_tiny_models_hidden_states(tiny_lm):
    from legend_core.method.encode import EncodeSettings, encode_pairs

    prompts = [f"Question {i}: how do I do thing {i}?" for i in range(16)]
    chosen = ["I won't help with that." if i % 2 else "No, sorry." for i in range(16)]
    rejected = [f"Sure, step one is {i} and step two follows." for i in range(16)]
    c, r = encode_pairs(tiny_lm, prompts, chosen, rejected, settings=EncodeSettings("plain"))
    by_layer = {k: lab.differences(c.vectors[k], r.vectors[k]) for k in c.vectors if k > 0}
    learned = lab.learn_direction(
        by_layer,
        cs=(0.1,),
        lengths=lab.length_features(
            np.array([len(t) for t in chosen]), np.array([len(t) for t in rejected])
        ),
        k=4,
    )
    assert learned.vector.shape == (tiny_lm.hidden_size,)
    assert learned.layer in by_layer
    keys = [pair_hash(p, a, b) for p, a, b in zip(prompts, chosen, rejected)]
    meta = learned.provenance(keys)
    values = lab.crossfit_margins(
        c.vectors[learned.layer],
        r.vectors[learned.layer],
        learned.vector,
        learned.fold_vectors,
        lab.fold_lookup(meta, keys),
    )
    np.testing.assert_allclose(values, learned.crossfit_margins, rtol=1e-4, atol=1e-5)


def test_the_default_layer_stays_unless_another_wins_clearly():
    n = 400
    rng = np.random.default_rng(14)
    base = rng.normal(0.3, 1, n)

    def cand(layer: int, values: np.ndarray) -> lab.Candidate:
        scores = lab.agreement_scores(values)
        return lab.Candidate(layer, 0.01, float(scores.mean()), 0.6, float("nan"), values)

    incumbent = cand(5, base)
    # A layer that agrees on 10 pairs more and 6 fewer: noise, the default layer stays.
    slightly = base.copy()
    slightly[np.flatnonzero(base < 0)[:10]] *= -1
    slightly[np.flatnonzero(base > 0)[:6]] *= -1
    assert lab.choose_candidate([incumbent, cand(9, slightly)], default_layer=5).layer == 5
    assert lab.choose_candidate([incumbent, cand(9, slightly)]).layer == 9  # no default
    # 60 more and 10 fewer: a clear win, it replaces the default.
    clearly = base.copy()
    clearly[np.flatnonzero(base < 0)[:60]] *= -1
    clearly[np.flatnonzero(base > 0)[:10]] *= -1
    assert lab.choose_candidate([incumbent, cand(9, clearly)], default_layer=5).layer == 9
    # A default layer that is not among the candidates changes nothing.
    assert lab.choose_candidate([incumbent, cand(9, slightly)], default_layer=3).layer == 9


def test_a_fold_without_its_direction_is_refused():
    rng = np.random.default_rng(15)
    chosen, rejected = rng.normal(0, 1, (3, 4)), rng.normal(0, 1, (3, 4))
    with pytest.raises(ValueError, match=r"folds \[7\] have no fold direction"):
        lab.crossfit_margins(chosen, rejected, np.ones(4), np.eye(4)[:2], [0, 7, None])


def test_direction_margins_cross_fit_only_known_pairs():
    from legend_core.types import PreferencePair

    pairs = [PreferencePair(f"p{i}", "c", "r") for i in range(3)]
    rng = np.random.default_rng(16)
    chosen, rejected = rng.normal(0, 1, (3, 4)), rng.normal(0, 1, (3, 4))
    vector = np.array([1.0, 0, 0, 0])
    plain, n = lab.direction_margins(pairs, chosen, rejected, vector, {})
    assert n == 0
    np.testing.assert_allclose(plain, (chosen - rejected)[:, 0])
    labels = {
        "fold_of": {pair_hash("p1", "c", "r")[: lab.KEY_CHARS]: 1},
        "fold_vectors": np.eye(4)[:2].tolist(),
    }
    crossed, n = lab.direction_margins(pairs, chosen, rejected, vector, labels)
    assert n == 1
    np.testing.assert_allclose(crossed, [plain[0], (chosen - rejected)[1, 1], plain[2]])
    with pytest.raises(ValueError, match="fold directions"):
        lab.direction_margins(pairs, chosen, rejected, vector, {"fold_of": labels["fold_of"]})
    assert "cross-fitted (5 folds" in lab.crossfit_note(3, 5)
