"""The pages' side of issue 13 in AppTest, on a real SQLite store with synthetic cached
embeddings (no model): least-sure-first review, learning from a run's reviews in the
Direction lab, and the Evaluate page saying that margins were cross-fitted."""

from __future__ import annotations

import numpy as np

from legend_core.data.store import Store
from tests.app_support import app, button, goto, metrics, wait_until
from tests.test_learning import _no_forward_pass, _review, synthetic_world


def _db(tmp_path):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    return url, synthetic_world(url)


def test_review_queue_can_put_the_least_sure_pairs_first(monkeypatch, tmp_path):
    url, (store, _, run_id, ids, *_rest) = _db(tmp_path)
    frame = store.run_frame(run_id)
    least_sure = int(frame.loc[frame["computed_margin"].abs().idxmin(), "pair_id"])
    most_negative = int(frame.loc[frame["computed_margin"].idxmin(), "pair_id"])
    assert least_sure != most_negative
    at = app(monkeypatch, url)
    at.run()
    goto(at, "review")
    assert at.session_state["review_current"] == most_negative  # the default order
    at.radio(key="review_order").set_value("least_sure").run()
    at.session_state["review_current"] = None  # start the queue from its top
    at.run()
    assert at.session_state["review_current"] == least_sure
    assert metrics(at)["Pair"].startswith("1 of ")


def test_lab_learns_from_a_runs_reviews_and_saves_the_direction(monkeypatch, tmp_path):
    url, (store, _, run_id, ids, safer, truth, _) = _db(tmp_path)
    _review(store, run_id, ids, safer, range(80))
    at = app(monkeypatch, url)
    at.run()
    goto(at, "directions")
    at.radio(key="learn_mode").set_value("reviews").run()
    assert at.selectbox(key="learn_run").value == run_id
    assert any("80 reviewed pairs" in c.value for c in at.caption)
    button(at, "Learn from its reviews").click().run()
    wait_until(at, lambda: any(b.label == "Save learned direction" for b in at.button))
    shown = metrics(at)
    assert shown["Labels"] == "80" and shown["Layer"] == "2"
    assert shown["Agreement"].endswith("%")
    assert len(at.get("plotly_chart")) >= 2  # per-layer agreement and the learning curve
    before = {d.id for d in store.list_directions()}
    button(at, "Save learned direction").click().run()
    new = [d for d in Store(url).list_directions() if d.id not in before]
    assert len(new) == 1 and new[0].method == "probe"
    saved = Store(url).get_direction(new[0].id)
    assert saved.labels["source"] == {"kind": "reviews", "run_id": run_id, "dataset_id": 1}
    assert float(saved.vector @ truth) > 0.5


def test_lab_asks_for_a_build_before_learning_from_a_data_set(monkeypatch, tmp_path):
    url, _ = _db(tmp_path)
    at = app(monkeypatch, url)
    at.run()
    goto(at, "directions")
    assert any("Build a direction above first" in i.value for i in at.info)


def test_evaluate_page_says_when_margins_are_cross_fitted(monkeypatch, tmp_path):
    from legend_core.workflows import learning
    from legend_core.workflows.annotate import annotate_dataset

    url, (store, dataset_id, run_id, ids, safer, *_rest) = _db(tmp_path)
    _review(store, run_id, ids, safer, range(40))
    learned = learning.learn_from_reviews(store, run_id, repeats=1)
    direction_id = store.add_direction(learned.direction)
    annotate_dataset(
        store, None, dataset_id, direction_id, engine=_no_forward_pass, model_dtype="float32"
    )
    at = app(monkeypatch, url)
    at.run()
    at.session_state["sel_direction"] = direction_id
    goto(at, "evaluate")
    notes = [i.value for i in at.info if "Cross-fitted margins" in i.value]
    assert notes and "40 pairs were among the labels" in notes[0]
    plain = app(monkeypatch, url)  # the run of the contrastive direction: no such note
    plain.run()
    plain.session_state["sel_direction"] = store.get_run(run_id).direction_id
    goto(plain, "evaluate")
    assert not [i for i in plain.info if "Cross-fitted" in i.value]
    assert np.isfinite(learned.report.length_baseline.estimate)


def test_lab_learns_from_a_labelled_data_set_after_a_build(monkeypatch, tmp_path, tiny_model_dir):
    from legend_core.workflows import demo

    url = f"sqlite:///{tmp_path / 'lab.db'}"
    ids = demo.load_demo(Store(url))
    at = app(monkeypatch, url, tiny_model_dir)
    at.run()
    goto(at, "directions")
    button(at, "Build on 80 items").click().run()
    wait_until(at, lambda: "AUROC" in metrics(at))
    at.radio(key="learn_mode").set_value("dataset").run()
    at.selectbox(key="learn_dataset").set_value(ids.dataset_id).run()
    button(at, "Learn from its labels").click().run()
    wait_until(at, lambda: any(b.label == "Save learned direction" for b in at.button))
    shown = metrics(at)
    assert shown["Labels"] == "52" and "Agreement" in shown and "Shorter is safer" in shown
    button(at, "Save learned direction").click().run()
    (learned,) = [d for d in Store(url).list_directions() if d.method == "probe"]
    saved = Store(url).get_direction(learned.id)
    assert saved.labels["source"]["kind"] == "dataset"
    assert saved.labels["source"]["dataset_id"] == ids.dataset_id
    assert len(saved.labels["fold_of"]) == 52
