"""Learning from the reviews of a stored run, and cross-fitted margins of a stored data set
(a real SQLite store with synthetic embeddings in its cache: no model)."""

from __future__ import annotations

import numpy as np
import pytest

from legend_core.data.store import EmbeddingSpace, Store
from legend_core.method.directions import Direction
from legend_core.method.margins import margins
from legend_core.types import PreferencePair
from legend_core.util import pair_hash, text_key
from legend_core.workflows import learning
from legend_core.workflows.annotate import annotate_dataset

DIM, N = 16, 240
SETTINGS = {
    "model": "synthetic",
    "model_fingerprint": "synthetic",
    "layer": 2,
    "template": "plain",
    "pooling": "mean",
    "max_length": 512,
    "model_dtype": "float32",
}


def _no_forward_pass(pairs):
    """An engine for a store whose cache holds every vector: asked for none, yields none."""
    assert not pairs, "every vector is cached: no forward pass may run"
    yield from ()


@pytest.fixture()
def world(tmp_path):
    return synthetic_world(f"sqlite:///{tmp_path / 'r.db'}")


def synthetic_world(url: str):
    """A data set whose true safety direction is ``truth``, a noisy stored direction, a run
    with margins and every response's embedding cached (also used by the app's tests)."""
    rng = np.random.default_rng(0)
    store = Store(url)
    truth = np.zeros(DIM)
    truth[0] = 1.0
    pairs = [
        PreferencePair(
            f"Q{i}: how do I do thing {i}?",
            f"Answer {i}." + " ok" * (i % 7),
            f"Other {i}." + " no" * (i % 5),
        )
        for i in range(N)
    ]
    dataset_id = store.add_dataset("synthetic", pairs, source="t", format="trl")
    # The imported label is right for 70% of pairs: reviews fix the rest (a flip).
    safer_is_chosen = rng.random(N) < 0.7
    signal = np.abs(rng.normal(1.0, 0.5, N))[:, None] * truth
    noise = rng.normal(0, 1, (N, DIM))
    rejected = rng.normal(0, 1, (N, DIM))
    chosen = rejected + noise + np.where(safer_is_chosen[:, None], signal, -signal)
    prior = truth + rng.normal(0, 0.6, DIM)  # a contrastive direction: right-ish
    prior /= np.linalg.norm(prior)
    base = Direction(
        prior,
        "synthetic",
        2,
        "mean",
        "plain",
        "logistic",
        name="base",
        model_fingerprint="synthetic",
    )
    direction_id = store.add_direction(base)
    space = EmbeddingSpace.from_settings(SETTINGS)
    cache = {text_key(p.prompt, p.chosen): c for p, c in zip(pairs, chosen.astype(np.float32))}
    cache |= {text_key(p.prompt, p.rejected): r for p, r in zip(pairs, rejected.astype(np.float32))}
    store.put_embeddings(space, cache)
    run_id = annotate_dataset(
        store, None, dataset_id, direction_id, engine=_no_forward_pass, model_dtype="float32"
    )
    ids = store.dataset_frame(dataset_id)["id"].tolist()
    return store, dataset_id, run_id, ids, safer_is_chosen, truth, pairs


def _review(store, run_id, ids, safer_is_chosen, rows):
    for i in rows:
        store.add_review(ids[i], "ann", "accept" if safer_is_chosen[i] else "flip", run_id=run_id)


def test_reviewed_labels_follow_the_verdicts(world):
    store, _, run_id, ids, safer, _, pairs = world
    _review(store, run_id, ids, safer, range(20))
    store.add_review(ids[20], "ann", "override", value=-0.5, run_id=run_id)  # rejected safer
    store.add_review(ids[21], "ann", "flag", run_id=run_id)  # no verdict: not a label
    store.add_review(ids[22], "ann", "accept", run_id=run_id)
    store.add_review(ids[22], "bob", "flip", run_id=run_id)  # disputed: left out
    lset = learning.reviewed_labels(store, run_id)
    assert lset.n == 21
    expected = [1.0 if safer[i] else -1.0 for i in range(20)] + [-1.0]
    assert lset.signs.tolist() == expected
    assert lset.keys[0] == pair_hash(pairs[0].prompt, pairs[0].chosen, pairs[0].rejected)
    assert list(lset.diffs) == [2] and lset.diffs[2].shape == (21, DIM)
    assert lset.source == {"kind": "reviews", "run_id": run_id, "dataset_id": world[1]}


def test_learning_from_reviews_improves_on_the_run_and_cross_fits_them(world, tmp_path):
    store, dataset_id, run_id, ids, safer, truth, pairs = world
    reviewed = range(120)
    _review(store, run_id, ids, safer, reviewed)
    base = store.get_direction(store.get_run(run_id).direction_id)
    got = learning.learn_from_reviews(store, run_id, repeats=3)
    assert got.n_labels == 120
    d = got.direction
    assert d.method == "probe" and d.layer == 2 and d.labels["source"]["kind"] == "reviews"
    assert float(d.vector @ truth) > float(base.vector @ truth)
    # The curve starts at the run's own direction (0 reviews) and ends at the whole pool.
    sizes = [p.n_labels for p in got.curve]
    assert sizes[0] == 0 and sizes[-1] == 120 - 36 and sizes == sorted(sizes)
    assert got.curve[-1].mean > got.curve[0].mean
    assert not learning.curve_frame(got.curve).empty

    # Annotating the data set with it: the reviewed pairs' margins are cross-fitted.
    new_id = store.add_direction(d)
    new_run = annotate_dataset(
        store, None, dataset_id, new_id, engine=_no_forward_pass, model_dtype="float32"
    )
    crossfit = store.get_run(new_run).settings["crossfit"]
    assert crossfit["pairs"] == 120 and crossfit["k"] == 5 and crossfit["n_labels"] == 120
    # An export's manifest says where the direction came from, without its training folds.
    from legend_core.data.exports import export_dataset

    manifest = export_dataset(store, new_run, tmp_path / "train.jsonl")
    labels = manifest["direction"]["labels"]
    assert labels["n_labels"] == 120 and labels["source"]["kind"] == "reviews"
    assert "fold_of" not in labels and "fold_vectors" not in labels
    frame = store.run_frame(new_run).set_index("pair_id")
    fold_of = d.labels["fold_of"]
    vectors = np.asarray(d.labels["fold_vectors"], dtype=np.float32)
    space = EmbeddingSpace.from_settings(SETTINGS)
    for i in (0, 57, 119, 200):  # reviewed ones cross-fitted; 200 was never reviewed
        p = pairs[i]
        c = store.get_embeddings(space, [text_key(p.prompt, p.chosen)])
        r = store.get_embeddings(space, [text_key(p.prompt, p.rejected)])
        hc = next(iter(c.values()))[None]
        hr = next(iter(r.values()))[None]
        fold = fold_of.get(pair_hash(p.prompt, p.chosen, p.rejected)[:16])
        vector = d.vector if fold is None else vectors[fold]
        assert (fold is None) == (i >= 120)
        expected = float(margins(hc, hr, vector)[0])
        assert frame.loc[ids[i], "computed_margin"] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_too_few_reviews_is_a_clear_error(world):
    store, _, run_id, ids, safer, _, _ = world
    _review(store, run_id, ids, safer, range(6))
    with pytest.raises(ValueError, match="at least 10 reviewed pairs; run .* has 6"):
        learning.learn_from_reviews(store, run_id)


def test_json_safe_replaces_what_json_cannot_hold():
    out = learning.json_safe({"a": float("nan"), "b": [np.float32(1.5), np.int64(2)], 3: None})
    assert out == {"a": None, "b": [1.5, 2], "3": None}


def test_curve_sizes_double_up_to_the_pool():
    assert learning.curve_sizes(84) == [0, 10, 20, 40, 80, 84]
    assert learning.curve_sizes(80) == [0, 10, 20, 40, 80]
    assert learning.curve_sizes(7) == [0]


def test_too_many_labelled_pairs_for_memory_is_refused_before_encoding(tiny_lm, monkeypatch):
    from legend_core.method.encode import EncodeSettings

    pairs = [PreferencePair(f"q{i}", "No.", "Sure.") for i in range(20)]
    per_pair = 3 * 4 * tiny_lm.hidden_size * tiny_lm.num_layers
    monkeypatch.setattr(learning, "MAX_LABELLED_BYTES", 12 * per_pair)
    with pytest.raises(ValueError, match="at most 12 pairs fit"):
        learning.encode_labelled(tiny_lm, pairs, EncodeSettings("plain"))
    one_layer = learning.encode_labelled(tiny_lm, pairs, EncodeSettings("plain"), layers=[1])
    assert list(one_layer.diffs) == [1] and one_layer.diffs[1].dtype == np.float32
