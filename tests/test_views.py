"""The pages' pure functions (legend_core.app: views, queue, lab, maps, downloads): filters,
percentiles, queue steps, chart tables, escaping."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from legend_core import config
from legend_core.app import charts, downloads, lab, maps, queue, views
from legend_core.data.formats import read_contrast_set
from legend_core.data.store import Store
from legend_core.method.directions import Direction
from legend_core.types import ContrastItem, PreferencePair
from tests import queue_reference as reference
from tests.app_support import large_db

PAYLOAD = '<img src=x onerror="window.__xss=1">'


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pair_id": [1, 2, 3, 4],
            "prompt": ["Bomb?", "Cake recipe", "hello", "BOMB again"],
            "chosen": ["No.", "Flour", "hi", PAYLOAD],
            "rejected": ["Sure", "Nope", "yo", "x"],
            "computed_margin": [-1.0, 0.5, np.nan, 2.0],
            "effective_margin": [-1.0, 0.5, np.nan, 2.0],
            "n_reviews": [0, 1, 0, 0],
            "flagged": [False, False, False, True],
            "flipped": [False, True, False, False],
        }
    )


def test_filters_by_range_sign_and_text():
    f = frame()
    assert views.filter_pairs(f)["pair_id"].tolist() == [1, 2, 3, 4]
    assert views.filter_pairs(f, (0.0, 1.0))["pair_id"].tolist() == [2]
    assert views.filter_pairs(f, sign="negative")["pair_id"].tolist() == [1]
    assert views.filter_pairs(f, sign="positive")["pair_id"].tolist() == [2, 4]
    assert views.filter_pairs(f, text="bomb")["pair_id"].tolist() == [1, 4]
    assert views.filter_pairs(f, text="ONERROR")["pair_id"].tolist() == [4]
    assert views.filter_pairs(f, text=".*")["pair_id"].tolist() == []  # not a regex
    assert views.filter_pairs(f, (-5, 5), "positive", "bomb")["pair_id"].tolist() == [4]
    with pytest.raises(ValueError):
        views.filter_pairs(f, sign="zero")


def test_percentiles():
    ranks = views.percentile_ranks([3.0, 1.0, np.nan, 2.0])
    assert ranks[:2].tolist() == pytest.approx([100.0, 100 / 3]) and np.isnan(ranks[2])
    assert views.percentile_of([1, 2, 3, 4], 2) == 50.0
    assert views.percentile_of([1, 2, 3, 4], -9) == 0.0
    assert np.isnan(views.percentile_of([1, 2], None))
    assert np.isnan(views.percentile_of([], 1.0))
    with_p = views.with_percentiles(frame())
    assert with_p["percentile"].tolist()[:2] == pytest.approx([100 / 3, 200 / 3])


def test_summary_range_lengths_and_correlation():
    s = views.summarize(frame())
    assert (s.n, s.n_missing, s.n_negative) == (3, 1, 1)
    assert s.agree == pytest.approx(2 / 3) and s.median == 0.5
    # Label agreement's one rule: a zero margin is a tie and counts ½ (not 0).
    tied = views.summarize(frame().assign(effective_margin=[-1.0, 0.0, np.nan, 2.0]))
    assert tied.agree == pytest.approx(1.5 / 3) and tied.n_negative == 1
    assert views.finite_range([np.nan, 2.0, -1.0]) == (-1.0, 2.0)
    assert views.finite_range([1.0]) == (0.0, 2.0)
    assert views.finite_range([]) == (0.0, 0.0)
    lengths = views.with_lengths(frame())
    assert lengths["length_diff"].tolist() == [-1, 1, 0, len(PAYLOAD) - 1]
    assert views.correlation([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert np.isnan(views.correlation([1, 1, 1], [1, 2, 3]))


def test_queue_steps():
    q = [5, 3, 9, 1]
    assert reference.step(q, None, 1) == 5
    assert reference.step(q, 3, 1) == 9 and reference.step(q, 3, -1) == 5
    assert reference.step(q, 1, 1) == 1 and reference.step(q, 5, -1) == 5  # clamped
    assert reference.step([], 3, 1) is None
    assert reference.step(q, 42, 1) == 5  # not in the queue: the first
    assert reference.next_unreviewed(q, 9, {5, 3}) == 5  # wraps around
    assert reference.next_unreviewed(q, 5, {5}) is None  # only the current one is left
    assert reference.next_unreviewed(q, None, {1}) == 1
    points = [{"customdata": ["4", "x"]}, {"customdata": [2]}, {"customdata": ["4"]}, {}]
    assert queue.selected_pairs(points) == [4, 2]


def test_snippets_and_table_view_are_plain_one_line_text():
    assert views.snippet("a\n\nb  c", 10) == "a b c"
    assert views.snippet("x" * 50, 10) == "x" * 9 + "…"
    view = views.table_view(views.with_percentiles(frame()), limit=12)
    assert view.columns.tolist()[:3] == ["pair", "margin", "percentile"]
    assert view["chosen"].tolist()[3] == PAYLOAD[:10] + "…"  # raw text, shown by a dataframe


def test_contrast_table_round_trip_and_errors():
    items = [ContrastItem("i1", "h1", "s1"), ContrastItem("i2", "h2", "s2")]
    table = lab.contrast_frame(items)
    assert lab.contrast_items(table) == items
    table.loc[len(table)] = [None, "", "  "]  # a blank row (added then left empty): dropped
    assert lab.contrast_items(table) == items
    table.loc[len(table)] = ["i3", "", "s3"]
    with pytest.raises(ValueError, match="row 4: harmful is empty"):
        lab.contrast_items(table)
    with pytest.raises(ValueError, match="no column"):
        lab.contrast_items(pd.DataFrame({"instruction": ["x"]}))


def test_direction_similarity_only_within_one_model():
    v = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    w = np.array([1.0, 1.0, 0.0], dtype=np.float32)
    common = {"layer": 1, "pooling": "mean", "template": "alpaca", "method": "mean_diff"}
    a = Direction(vector=v, model="m", **common)
    b = Direction(vector=w, model="m", **common)
    c = Direction(vector=v, model="other", **common)
    matrix = lab.direction_similarity([("a", a), ("b", b), ("c", c)])
    assert matrix.loc["a", "a"] == pytest.approx(1.0)
    assert matrix.loc["a", "b"] == pytest.approx(1 / np.sqrt(2))
    assert np.isnan(matrix.loc["a", "c"]) and matrix.loc["c", "c"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def built(tiny_lm):
    from legend_core.method.encode import EncodeSettings
    from legend_core.method.pipeline import build_direction

    items = read_contrast_set(config.DEMO_CONTRAST)[:16]
    return build_direction(tiny_lm, items, EncodeSettings("alpaca", "mean"), layer="best"), items


def test_direction_lab_tables(built):
    result, items = built
    layers = lab.layer_frame(result.direction)
    assert layers["layer"].tolist() == [1, 2, 3]
    assert layers["chosen"].sum() == 1
    assert layers.loc[layers["chosen"], "layer"].item() == result.direction.layer
    # The layer is chosen on the cross-validated columns (12 fitting items: 5 folds).
    assert layers["cv_auroc"].notna().all()
    ranked = layers.assign(auc=layers["cv_auroc"].round(3))
    assert ranked.sort_values(["auc", "cv_separation", "layer"]).iloc[-1]["chosen"]
    proj = lab.projection_frame(result)
    assert sorted(proj["class"].unique()) == ["harmful", "harmless"]
    assert len(proj) == 2 * len(result.test)
    lengths = lab.length_frame(result)
    assert len(lengths) == 32 and set(lengths["split"]) == {"train", "held out"}
    cmap, note = lab.contrast_map_frame(result, items)
    assert len(cmap) == 32 and "PCA" not in note and "UMAP of all 32 responses" in note
    for figure in (
        charts.layer_chart(layers),
        charts.length_r2_chart(layers),
        charts.projection_histogram(proj),
        charts.length_scatter(lengths),
        charts.contrast_map(cmap),
    ):
        assert figure.to_json()


def test_response_map_reads_the_cache_and_samples(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    ids = large_db(url, n=300)
    store = Store(url)
    run = store.get_run(ids["run_id"])
    direction = store.get_direction(ids["direction_id"])
    frame = store.run_frame(run.id)
    full = maps.response_map(store, run, direction, frame, "pca")
    assert len(full.frame) == 600 and full.n_missing == 0
    assert set(full.frame["side"]) == {"chosen", "rejected"}
    sampled = maps.response_map(store, run, direction, frame, "umap", max_points=200)
    assert len(sampled.frame) == 200 and sampled.n_pairs == 100
    assert "random sample of 100 of 300 pairs" in sampled.note
    # Both responses of each sampled pair are there.
    assert (sampled.frame.groupby("pair_id").size() == 2).all()
    # A pair whose texts were never encoded is left out, not encoded.
    extra = store.add_dataset("other", [PreferencePair("p", "c", "r")])
    assert extra
    fresh = frame.copy()
    fresh.loc[len(fresh)] = fresh.iloc[0]
    fresh.loc[len(fresh) - 1, ["prompt", "pair_id"]] = ["never seen", 10**6]
    missing = maps.response_map(store, run, direction, fresh, "pca")
    assert missing.n_missing == 1 and len(missing.frame) == 600


def test_hover_text_is_escaped():
    f = frame().dropna()
    points = pd.DataFrame(
        {
            "x": [0.0, 1.0],
            "y": [0.0, 1.0],
            "pair_id": [4, 4],
            "side": ["chosen", "rejected"],
            "projection": [0.1, 0.2],
            "margin": [2.0, 2.0],
            "text": [PAYLOAD, "[link](javascript:alert(1)) <script>x</script>"],
        }
    )
    blob = charts.response_map(points).to_json()
    assert "<img" not in blob and "<script>" not in blob
    assert (
        "&lt;img src=x onerror=&quot;window.__xss=1&quot;&gt;"
        in json.loads(blob)["data"][0]["customdata"][0][2]
    )
    scatter = charts.margin_length_scatter(views.with_lengths(f).assign(prompt=[PAYLOAD] * 3))
    assert "<img" not in scatter.to_json()
    heat = charts.similarity_heatmap(pd.DataFrame([[1.0]], index=[PAYLOAD], columns=[PAYLOAD]))
    assert "<img" not in heat.to_json()


def test_export_file_returns_bytes_and_manifest(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    ids = large_db(url, n=50)
    store = Store(url)
    out = downloads.export_file(
        store, ids["run_id"], "jsonl", "my set/../run 1", provenance=True, scale="none"
    )
    assert out.file_name == "my_set_.._run_1.jsonl" and out.mime == "application/jsonl"
    rows = [json.loads(line) for line in out.data.decode().splitlines()]
    assert len(rows) == 50 == out.manifest["counts"]["rows"]
    assert {r["pair_id"]: r["margin"] for r in rows}[store.dataset_frame(1)["id"][2]] == 1.5
    assert out.manifest["margin"]["scale"] == "none"
    assert json.loads(out.manifest_bytes)["run"]["id"] == ids["run_id"]
    parquet = downloads.export_file(store, ids["run_id"], "parquet", "x", reviewed_only=True)
    assert parquet.data[:4] == b"PAR1" and parquet.manifest["counts"]["rows"] == 3
