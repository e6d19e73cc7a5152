"""Several margin runs of one data set and direction (another dtype makes a new run): every
page that shows a run lets the user pick it (newest by default), says how many there are,
and shows the reviews made on any of them."""

from __future__ import annotations

import pytest

from legend_core.data.store import EmbeddingSpace, Store
from legend_core.util import text_key
from tests.app_support import app, goto, large_db, metrics

N = 60


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int]]:
    """The synthetic database (reviews made on run A), plus run B: the same data set and
    direction in bfloat16, with slightly different margins and its own cached vectors."""
    url = f"sqlite:///{tmp_path_factory.mktemp('runs') / 'runs.db'}"
    ids = large_db(url, n=N)
    with Store(url) as store:
        run_a = store.get_run(ids["run_id"])
        settings = {**run_a.settings, "model_dtype": "bfloat16"}
        run_b = store.start_run(ids["dataset_id"], ids["direction_id"], settings)
        frame = store.run_frame(run_a.id)
        store.add_margins(run_b, frame["pair_id"].tolist(), (frame["computed_margin"] + 0.01))
        store.finish_run(run_b)
        old, new = (
            EmbeddingSpace.from_settings(run_a.settings),
            EmbeddingSpace.from_settings(settings),
        )
        vectors = store.get_embeddings(old, list(_all_keys(store, ids["dataset_id"])))
        store.put_embeddings(new, vectors)
        pair_ids = frame["pair_id"].tolist()
    return url, {**ids, "run_b": run_b, "pair_1": pair_ids[1], "pair_2": pair_ids[2]}


def _all_keys(store: Store, dataset_id: int):
    frame = store.dataset_frame(dataset_id)
    for prompt, chosen, rejected in zip(frame["prompt"], frame["chosen"], frame["rejected"]):
        yield text_key(prompt, chosen)
        yield text_key(prompt, rejected)


def run_picker(at, page: str):
    (picker,) = [s for s in at.selectbox if s.key == f"{page}_run"]
    return picker


@pytest.mark.parametrize("page", ["explore", "review", "export", "evaluate"])
def test_every_run_page_picks_among_runs_newest_first(monkeypatch, two_runs, page, tiny_model_dir):
    url, ids = two_runs
    at = app(monkeypatch, url, tiny_model_dir).run()
    goto(at, page)
    picker = run_picker(at, page)
    assert picker.label == "Margin run (2 of this data set and direction)"
    assert picker.options[0].startswith(f"run #{ids['run_b']} (bfloat16, newest)")
    assert picker.options[1].startswith(f"run #{ids['run_id']} (float32)")
    assert picker.value == ids["run_b"]  # the newest by default
    picker.set_value(ids["run_id"]).run()
    assert run_picker(at, page).value == ids["run_id"]
    assert not at.exception


def test_reviews_made_on_run_a_show_on_the_review_page_of_run_b(
    monkeypatch, two_runs, tiny_model_dir
):
    url, ids = two_runs
    at = app(monkeypatch, url, tiny_model_dir)
    at.session_state["annotator"] = "zed"
    at.run()
    at.session_state["review_current"] = ids["pair_1"]
    goto(at, "review")
    assert run_picker(at, "review").value == ids["run_b"]
    assert metrics(at)["Label"] == "flipped"  # ann's flip, made on run A
    history = at.dataframe[-1].value
    assert history["annotator"].tolist() == ["ann"] and history["run"].tolist() == [ids["run_id"]]
    at.session_state["review_current"] = ids["pair_2"]
    at.run()
    assert metrics(at)["Reviewed margin"] == "1.500"  # ann's override, same direction's scale
    with Store(url) as store:
        reviewed, remaining = store.review_counts(ids["run_b"])
    assert f"{reviewed:,} reviewed · {remaining:,} remaining" in " ".join(
        p.proto.text for p in at.get("progress")
    )
    assert reviewed == 3 and remaining == N - 3


def test_export_of_run_b_applies_the_reviews_of_run_a(monkeypatch, two_runs, tiny_model_dir):
    url, ids = two_runs
    at = app(monkeypatch, url, tiny_model_dir).run()
    goto(at, "export")
    at.checkbox(key="export_reviewed").check().run()
    at.checkbox(key="export_provenance").check().run()
    preview = at.dataframe[0].value
    assert sorted(preview["pair_id"]) == sorted([ids["pair_1"], ids["pair_2"], ids["pair_1"] - 1])
    flipped = preview.set_index("pair_id").loc[ids["pair_1"]]
    assert flipped["flipped"] and flipped["chosen"].startswith("Bad answer 1.")
    assert set(preview["decided_by"]) == {"ann"}
