"""Agreement between annotators, from real reviews in a real database."""

from __future__ import annotations

import numpy as np
import pytest

from legend_core.cli import main
from legend_core.data.store import Store
from legend_core.review.annotators import cohens_kappa, pairwise_agreement
from tests.test_store import annotated, fresh_db_url, make_direction


@pytest.fixture
def store(tmp_path):
    with fresh_db_url(tmp_path) as url, Store(url) as s:
        yield s


def test_agreement_on_verdicts_flags_and_overrides(store):
    dataset_id, run_id, ids = annotated(store, [0.1, -0.2, 0.3, 0.4, -0.5, 0.6])
    # ana and ben both give a verdict on the first five pairs; cy only flags the last one.
    for i, pair in enumerate(ids[:5]):
        store.add_review(pair, "ana", "override", value=float(i + 1), run_id=run_id)
        store.add_review(pair, "ben", "override", value=2.0 * i + 3, run_id=run_id)
    store.add_review(ids[0], "ana", "flip")
    store.add_review(ids[0], "ben", "flip")  # both say swapped: they agree
    store.add_review(ids[1], "ana", "flip")  # ben keeps his override: they differ
    store.add_review(ids[2], "ana", "flip")
    store.add_review(ids[2], "ana", "flip")  # still flipped (no toggle): they differ
    store.add_review(ids[3], "ben", "flag")
    store.add_review(ids[3], "ben", "unflag")  # ben's flag taken back: agrees with ana
    store.add_review(ids[4], "ana", "flag")
    store.add_review(ids[5], "cy", "flag")
    store.add_review(ids[5], "ana", "accept")

    results = pairwise_agreement(store.reviews_frame(dataset_id))
    assert [(r.annotator_a, r.annotator_b) for r in results] == [("ana", "ben"), ("ana", "cy")]
    r = results[0]
    assert (r.common_pairs, r.common_verdicts) == (5, 5)
    assert r.verdict_agreement == pytest.approx(3 / 5)  # differ on pairs 1 and 2
    assert r.flag_agreement == pytest.approx(4 / 5)  # differ on pair 4 only
    # Overrides still held by both: pairs 3 and 4 (the others were replaced by flips).
    assert r.common_overrides == 2
    assert r.override_mad == pytest.approx(np.mean([(2 * 3 + 3) - 4, (2 * 4 + 3) - 5]))
    # cy gave no verdict: no verdicts to compare, flags still are.
    cy = results[1]
    assert (cy.common_pairs, cy.common_verdicts, cy.verdict_agreement) == (1, 0, None)
    assert cy.flag_agreement == 0.0


def test_overrides_on_different_scales_are_not_compared(store):
    dataset_id, run_a, ids = annotated(store, [0.1, 0.2, 0.3])
    run_b = store.start_run(dataset_id, store.add_direction(make_direction(seed=5)), {})
    store.add_margins(run_b, ids, [1.0, 2.0, 3.0])
    for i, pair in enumerate(ids):
        store.add_review(pair, "ana", "override", value=float(i + 1), run_id=run_a)
        store.add_review(pair, "ben", "override", value=float(i + 2), run_id=run_b)
    (r,) = pairwise_agreement(store.reviews_frame(dataset_id))
    assert r.common_verdicts == 3 and r.verdict_agreement == 1.0
    assert r.common_overrides == 0 and r.override_mad is None


def test_kappa():
    assert cohens_kappa([True, False, True, False], [True, False, True, False]) == 1.0
    assert cohens_kappa([True, True], [True, True]) is None
    assert cohens_kappa([True, False, True, False], [False, True, False, True]) == -1.0


def test_review_agreement_command(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'a.db'}"
    with Store(db) as store:
        dataset_id, run_id, ids = annotated(store, [0.1, 0.2, 0.3])
        for pair in ids:
            store.add_review(pair, "ana", "accept", run_id=run_id)
            store.add_review(pair, "ben", "flip", run_id=run_id)
            store.add_review(pair, "ben", "flag", run_id=run_id)
    assert main(["review", "--agreement", "--dataset", str(dataset_id), "--db", db]) == 0
    out = capsys.readouterr().out
    assert "ana" in out and "ben" in out and "flag_agreement" in out
    assert "verdict_agreement" in out
    assert "0.000" in out  # they never agree
