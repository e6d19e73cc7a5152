"""The app's main path on the tiny model: demo -> direction -> margins -> review -> export,
checking what each page shows and what it writes to the database."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import plotly.io
import pytest

from legend_core import config
from legend_core.data.store import Store
from legend_core.types import PreferencePair
from legend_core.workflows import demo
from tests.app_support import app, button, goto, metrics, problems, wait_until


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """A database where the app built and saved a direction and computed margins."""
    url = f"sqlite:///{tmp_path_factory.mktemp('flow') / 'legend.db'}"
    demo.load_demo(Store(url))
    monkeypatch = pytest.MonkeyPatch()
    at = app(monkeypatch, url, tiny_model_dir).run()

    goto(at, "directions")
    button(at, "Build on 80 items").click().run()
    wait_until(at, lambda: "AUROC" in metrics(at))
    assert not problems(at)
    shown = metrics(at)
    assert set(shown) >= {"Layer", "AUROC", "Accuracy", "Separation", "Stability", "Length R²"}
    charts = at.get("plotly_chart")
    assert len(charts) >= 4  # per layer, held-out histogram, length (two), map
    at.text_input(key=next(t.key for t in at.text_input if t.key.startswith("lab_name_"))).input(
        "lab direction"
    ).run()
    button(at, "Save direction").click().run()
    assert not problems(at)
    (direction,) = Store(url).list_directions()
    assert direction.name == "lab direction"

    goto(at, "explore")
    button(at, "Compute margins").click().run()
    wait_until(at, lambda: "Agreement" in metrics(at))
    wait_until(at, lambda: "UMAP of all" in " ".join(c.value for c in at.caption))
    assert not problems(at)
    yield url, at, direction
    monkeypatch.undo()


def test_build_save_and_annotate_write_the_database(flow):
    url, at, direction = flow
    store = Store(url)
    (run,) = store.list_runs()
    assert run.direction_id == direction.id and run.n_margins == 52 == run.n_pairs
    assert run.status == "finished"
    assert metrics(at)["Pairs with a margin"] == "52"
    captions = " ".join(c.value for c in at.caption)
    assert "UMAP of all 104 responses" in captions
    assert "Compute margins" not in [b.label for b in at.button]


def test_explore_filters_and_sends_pairs_to_review(flow):
    url, at, _ = flow
    goto(at, "explore")
    at.selectbox(key="explore_sign").select("negative").run()
    negatives = Store(url).run_frame(Store(url).list_runs()[0].id)
    n_neg = int((negatives["effective_margin"] < 0).sum())
    assert f"{n_neg:,} of 52 pairs pass the filter." in [c.value for c in at.caption]
    button(at, "Review the", startswith=True)  # the selection button exists (disabled)
    send = [b for b in at.button if b.label.endswith("filtered pairs")][0]
    send.click().run()
    assert not problems(at)
    queued = at.session_state["review_selection"]["pair_ids"]
    assert len(queued) == n_neg
    goto(at, "review")
    assert metrics(at)["Pair"] == f"1 of {n_neg}"
    at.session_state["review_source"] = "all"
    at.run()
    assert metrics(at)["Pair"] == "1 of 52"


def test_review_actions_are_stored_with_the_annotator(flow):
    url, at, _ = flow
    store = Store(url)
    run_id = store.list_runs()[0].id
    queue = store.review_queue(run_id)
    goto(at, "review")
    at.session_state["review_source"] = "all"
    at.run()
    # Without a name, every action is disabled.
    at.session_state["annotator"] = ""
    at.session_state["_w_annotator"] = ""
    at.run()
    labels = ("Accept", "Flip", "Flag", "Override", "Withdraw")
    assert all(button(at, label).disabled for label in labels)
    assert any("Enter your name" in w.value for w in at.warning)

    at.session_state["annotator"] = "alice"
    at.session_state["_w_annotator"] = "alice"
    at.session_state["review_current"] = queue[0]
    at.run()
    first = queue[0]
    assert metrics(at)["Pair"] == "1 of 52"
    at.text_input(key=f"note_{first}").input("looks wrong").run()
    button(at, "Accept").click().run()
    assert metrics(at)["Pair"] == "2 of 52"  # moved on
    at.number_input(key=f"override_{queue[1]}").set_value(2.5).run()
    button(at, "Override").click().run()
    button(at, "Flip").click().run()
    button(at, "Flag").click().run()
    assert not problems(at)
    history = [(r.pair_id, r.annotator, r.action, r.value, r.note) for r in _reviews(store, queue)]
    assert history == [
        (queue[0], "alice", "accept", None, "looks wrong"),
        (queue[1], "alice", "override", 2.5, ""),
        (queue[2], "alice", "flip", None, ""),
        (queue[3], "alice", "flag", None, ""),
    ]
    assert metrics(at)["Pair"] == "5 of 52"
    assert "3 reviewed · 49 remaining" in _progress_text(at)  # a flag is not a verdict

    # Previous goes back; the pair shows its label, your verdict and its history.
    button(at, "Previous").click().run()
    assert metrics(at)["Label"] == "flagged" and metrics(at)["Your verdict"] == "none"
    assert button(at, "Unflag") is not None and button(at, "Withdraw").disabled
    table = at.dataframe[-1].value
    assert table["annotator"].tolist() == ["alice"] and table["action"].tolist() == ["flag"]
    button(at, "Previous").click().run()
    assert metrics(at)["Label"] == "flipped" and metrics(at)["Your verdict"] == "flip"
    # Flip again: still flipped (a verdict, not a toggle); then withdraw it.
    at.toggle(key="review_advance").set_value(False).run()
    button(at, "Flip").click().run()
    assert metrics(at)["Label"] == "flipped"
    button(at, "Withdraw").click().run()
    assert metrics(at)["Label"] == "original" and metrics(at)["Your verdict"] == "none"
    assert store.pair_state(queue[2], run_id).n_verdicts == 0
    button(at, "Previous").click().run()
    assert metrics(at)["Your verdict"] == "override +2.500"
    assert metrics(at)["Reviewed margin"] == "2.500"


def test_two_annotators_see_each_others_reviews(flow, tiny_model_dir):
    url, _, _ = flow
    store = Store(url)
    run_id = store.list_runs()[0].id
    pair = store.review_queue(run_id)[10]
    monkeypatch = pytest.MonkeyPatch()
    bob = app(monkeypatch, url, tiny_model_dir)
    bob.session_state["annotator"] = "bob"
    bob.session_state["review_current"] = pair
    bob.run()
    goto(bob, "review")
    assert bob.dataframe == [] or "alice" not in bob.dataframe[-1].value.to_string()
    store.add_review(pair, "carol", "override", value=-1.0, note="other tab", run_id=run_id)
    bob.run()  # any rerun re-reads the database
    history = bob.dataframe[-1].value
    assert history["annotator"].tolist() == ["carol"]
    assert metrics(bob)["Reviewed margin"] == "-1.000"  # as shown: as imported
    assert metrics(bob)["Label"] == "flipped"
    monkeypatch.undo()


def test_an_annotator_can_choose_blind_review(flow, tiny_model_dir):
    """Without login mode, blind review is each annotator's own choice in the sidebar."""
    url, _, _ = flow
    store = Store(url)
    run_id = store.list_runs()[0].id
    pair = store.review_queue(run_id)[20]
    store.add_review(pair, "erin", "override", value=4.5, run_id=run_id)
    monkeypatch = pytest.MonkeyPatch()
    dan = app(monkeypatch, url, tiny_model_dir)
    dan.session_state["annotator"] = "dan"
    dan.session_state["review_current"] = pair
    dan.run()
    dan.sidebar.toggle(key="_w_blind_self").set_value(True).run()
    goto(dan, "review")
    assert metrics(dan)["Reviewed margin"] == "hidden"
    reviewed, remaining = store.review_counts(run_id, annotator="dan")
    assert f"{reviewed} reviewed by you · {remaining:,} remaining" in _progress_text(dan)
    assert "erin" not in " ".join(d.value.to_string() for d in dan.dataframe)
    button(dan, "Accept").click().run()
    dan.session_state["review_current"] = pair
    dan.run()
    assert metrics(dan)["Reviewed margin"] == "4.500"  # reviewed: others' verdicts show
    monkeypatch.undo()


def test_next_unreviewed_is_found_when_clicked(flow, tiny_model_dir):
    """Two annotators at once: "Next unreviewed" skips the pair another annotator reviewed
    after the page was drawn, and a step never repeats a pair."""
    url, _, _ = flow
    store = Store(url)
    run_id = store.list_runs()[0].id
    queue = store.review_queue(run_id)
    todo = store.review_queue(run_id, unreviewed_only=True)
    assert len(todo) >= 3
    monkeypatch = pytest.MonkeyPatch()
    eve = app(monkeypatch, url, tiny_model_dir)
    eve.session_state["annotator"] = "eve"
    eve.session_state["review_current"] = todo[0]
    eve.run()
    goto(eve, "review")
    assert metrics(eve)["Pair"] == f"{queue.index(todo[0]) + 1} of 52"
    assert not button(eve, "Next unreviewed").disabled
    store.add_review(todo[1], "frank", "accept", run_id=run_id)  # while eve looks
    button(eve, "Next unreviewed").click().run()
    assert eve.session_state["review_current"] == todo[2]
    assert metrics(eve)["Pair"] == f"{queue.index(todo[2]) + 1} of 52"
    reviewed, remaining = store.review_counts(run_id)
    assert f"{reviewed} reviewed · {remaining} remaining" in _progress_text(eve)
    # Previous and Next step through every pair, reviewed or not, one at a time.
    button(eve, "Previous").click().run()
    assert eve.session_state["review_current"] == queue[queue.index(todo[2]) - 1]
    button(eve, "Next").click().run()
    assert eve.session_state["review_current"] == todo[2]
    monkeypatch.undo()


def test_export_downloads_reviewed_margins_and_manifest(flow):
    url, at, _ = flow
    store = Store(url)
    run_id = store.list_runs()[0].id
    goto(at, "export")
    assert at.dataframe[0].value.columns.tolist()[:4] == ["prompt", "chosen", "rejected", "margin"]
    at.checkbox(key="export_provenance").check().run()
    at.checkbox(key="export_reviewed").check().run()
    button(at, "Export", startswith=True).click().run()
    assert not problems(at)
    downloads = at.get("download_button")
    assert len(downloads) == 2
    manifest = json.loads(at.get("json")[0].proto.body)
    assert manifest["format"] == "jsonl" and manifest["filters"]["reviewed_only"] is True
    assert manifest["run"]["id"] == run_id
    rows = store.run_frame(run_id)
    kept = (rows["n_verdicts"] > 0) & ~rows["disputed"]
    if config.DEFAULT_EXCLUDE_FLAGGED:
        kept &= ~rows["flagged"]
    assert manifest["counts"]["rows"] == int(kept.sum())


def test_export_page_scale_defaults_and_choice(flow):
    url, at, _ = flow
    goto(at, "export")
    # One default each, shared with the command line (legend_core.config).
    assert at.selectbox(key="export_scale").value == config.DEFAULT_MARGIN_SCALE
    assert at.checkbox(key="export_flagged").value is config.DEFAULT_EXCLUDE_FLAGGED
    at.selectbox(key="export_scale").select("bins").run()
    at.number_input(key="export_bins").set_value(3).run()
    button(at, "Export", startswith=True).click().run()
    assert not problems(at)
    manifest = json.loads(at.get("json")[0].proto.body)
    assert manifest["margin"]["scale"] == "bins"
    assert manifest["margin"]["parameters"]["bins"] == 3
    assert manifest["filters"]["exclude_flagged"] is config.DEFAULT_EXCLUDE_FLAGGED
    assert any("bins scale" in c.value for c in at.caption)
    at.selectbox(key="export_scale").select("none").run()
    assert "export_bins" not in [n.key for n in at.number_input]


def _reviews(store: Store, pair_ids):
    out = []
    for pair in pair_ids[:4]:
        out += store.pair_history(pair)
    return sorted(out, key=lambda r: r.id)


def _progress_text(at) -> str:
    return " ".join(str(p.proto.text) for p in at.get("progress"))


def test_lab_compares_saved_directions(flow):
    url, at, direction = flow
    store = Store(url)
    first = store.get_direction(direction.id)
    twin = dataclasses.replace(first, vector=-first.vector, name="opposite")
    store.add_direction(twin)
    goto(at, "directions")
    assert at.dataframe[-1].value["name"].tolist() == ["lab direction", "opposite"]
    figures = [plotly.io.from_json(c.proto.spec) for c in at.get("plotly_chart")]
    heatmaps = [f for f in figures if f.data[0].type == "heatmap"]
    assert len(heatmaps) == 1
    assert heatmaps[0].data[0].text[0][1] == "-1.00"  # the cells are labelled


def test_lab_shows_why_a_build_failed(flow):
    _, at, _ = flow
    goto(at, "directions")
    at.toggle[0].set_value(False).run()
    at.number_input[0].set_value(99).run()
    button(at, "Build on 80 items").click().run()
    wait_until(at, lambda: bool(at.error))
    assert [e.value for e in at.error] == ["Building the direction failed."]
    assert any("layer must be 'best' or an index in 1..3" in t.value for t in at.text)


def test_explore_resumes_an_unfinished_run(flow, tiny_model_dir):
    url, at, direction = flow
    store = Store(url)
    pairs = [PreferencePair(f"question {i}", f"safe {i}", f"unsafe {i}") for i in range(5)]
    dataset_id = store.add_dataset("five", pairs)
    settings = {**store.list_runs()[0].settings}
    run_id = store.start_run(dataset_id, direction.id, settings)
    ids = store.dataset_frame(dataset_id)["id"].tolist()
    store.add_margins(run_id, ids[:2], [0.1, -0.2])
    goto(at, "explore")
    at.selectbox(key="explore_dataset").set_value(dataset_id).run()
    button(at, "Resume (3 left)").click().run()
    wait_until(at, lambda: metrics(at).get("Pairs with a margin") == "5")
    assert not problems(at)
    assert store.get_run(run_id).n_margins == 5
    margins = store.run_frame(run_id)["computed_margin"].tolist()
    assert margins[:2] == [0.1, -0.2]  # kept, not recomputed
