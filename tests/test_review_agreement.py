"""Agreement between annotators, from real reviews in a real database."""

from __future__ import annotations

import numpy as np
import pytest

from legend_core.agreement import cohens_kappa, pairwise_agreement
from legend_core.cli import main
from legend_core.store import Store
from tests.test_store import annotated, fresh_db_url


@pytest.fixture
def store(tmp_path):
    with fresh_db_url(tmp_path) as url, Store(url) as s:
        yield s


def test_agreement_on_flips_flags_and_overrides(store):
    dataset_id, run_id, ids = annotated(store, [0.1, -0.2, 0.3, 0.4, -0.5, 0.6])
    # ana and ben both review the first five pairs; cy only the last one.
    for i, pair in enumerate(ids[:5]):
        store.add_review(pair, "ana", "override", value=float(i), run_id=run_id)
        store.add_review(pair, "ben", "override", value=2.0 * i + 1, run_id=run_id)
    store.add_review(ids[0], "ana", "flip")
    store.add_review(ids[0], "ben", "flip")
    store.add_review(ids[1], "ana", "flip")  # ben does not flip pair 1
    store.add_review(ids[2], "ana", "flip")
    store.add_review(ids[2], "ana", "flip")  # ana undoes her flip: agrees with ben
    store.add_review(ids[3], "ben", "flag")
    store.add_review(ids[3], "ben", "unflag")  # ben's flag withdrawn: agrees with ana
    store.add_review(ids[4], "ana", "flag")
    store.add_review(ids[5], "cy", "flag")

    results = pairwise_agreement(store.reviews_frame(dataset_id))
    assert [(r.annotator_a, r.annotator_b) for r in results] == [("ana", "ben")]
    r = results[0]
    assert r.common_pairs == 5
    assert r.flip_agreement == pytest.approx(4 / 5)  # differ on pair 1 only
    assert r.flag_agreement == pytest.approx(4 / 5)  # differ on pair 4 only
    assert r.common_overrides == 5
    assert r.override_correlation == pytest.approx(1.0)  # ben = 2*ana + 1
    assert r.override_mad == pytest.approx(np.mean([i + 1 for i in range(5)]))


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
            store.add_review(pair, "ben", "flag", run_id=run_id)
    assert main(["review", "--agreement", "--dataset", str(dataset_id), "--db", db]) == 0
    out = capsys.readouterr().out
    assert "ana" in out and "ben" in out and "flag_agreement" in out
    assert "0.000" in out  # they never agree on flags
