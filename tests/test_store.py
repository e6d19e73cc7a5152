"""The store on real SQLite files: data sets, directions, runs, reviews, queue, cache.

Set ``LEGEND_TEST_PG_URL`` (e.g. ``postgresql+psycopg://user:pw@localhost/legend_test``) to
run the store and export tests on PostgreSQL instead, each in a schema of its own.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from legend_core.data.formats import FormatError
from legend_core.data.store import EmbeddingSpace, NotFoundError, QueueStep, Store
from legend_core.method.directions import Direction, LayerQuality
from legend_core.types import ContrastItem, PreferencePair
from legend_core.util import text_key
from tests.conftest import HH_DEV


def make_pairs(n: int, tag: str = "") -> list[PreferencePair]:
    return [
        PreferencePair(f"prompt {tag}{i}", f"chosen {tag}{i}", f"rejected {tag}{i}", {"row": i})
        for i in range(n)
    ]


def make_direction(dim: int = 16, seed: int = 0, **kw) -> Direction:
    vector = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    base = dict(model="tiny", layer=2, pooling="last", template="alpaca", method="mean_diff")
    return Direction(vector, **{**base, **kw})


PG_URL = os.environ.get("LEGEND_TEST_PG_URL")
sqlite_only = pytest.mark.skipif(bool(PG_URL), reason="checks SQLite itself")


@contextmanager
def fresh_db_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL schema when configured."""
    if not PG_URL:
        yield f"sqlite:///{tmp_path / 'legend.db'}"
        return
    schema = f"legend_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with fresh_db_url(tmp_path) as url, Store(url) as s:
        yield s


def annotated(store: Store, values: list[float], name: str = "d") -> tuple[int, int, list[int]]:
    """A data set with one run whose margins are ``values``; returns (dataset, run, pair ids)."""
    dataset_id = store.add_dataset(name, make_pairs(len(values), name))
    direction_id = store.add_direction(make_direction())
    run_id = store.start_run(dataset_id, direction_id, {"layer": 2})
    ids = [p.id for p in store.pairs_missing_margins(run_id)]
    store.add_margins(run_id, ids, values)
    return dataset_id, run_id, ids


# --- opening -----------------------------------------------------------------------------------


@sqlite_only
def test_store_creates_parent_folders_and_reopens(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'legend.db'}"
    with Store(url) as s:
        s.add_dataset("one", make_pairs(3))
    with Store(url) as s:  # second open: already at head, data kept
        assert s.counts()["pairs"] == 3


@sqlite_only
def test_store_default_url_comes_from_config(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LEGEND_DB", f"sqlite:///{tmp_path / 'env' / 'x.db'}")
    with Store() as s:
        assert s.counts()["datasets"] == 0
    assert (tmp_path / "env" / "x.db").exists()


@sqlite_only
def test_sqlite_pragmas_are_set(store: Store) -> None:
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000


# --- data sets ---------------------------------------------------------------------------------


def test_add_dataset_round_trip(store: Store) -> None:
    pairs = make_pairs(5)
    pairs[2].meta = {"nested": {"a": [1, 2]}, "label": "x", "np": np.int64(3)}
    dataset_id = store.add_dataset("demo", pairs, source="here.jsonl", format="trl")
    frame = store.dataset_frame(dataset_id)
    assert list(frame.columns) == ["id", "idx", "prompt", "chosen", "rejected", "meta"]
    assert frame["idx"].tolist() == list(range(5))
    assert frame["prompt"].tolist() == [p.prompt for p in pairs]
    assert frame["meta"][2] == {"nested": {"a": [1, 2]}, "label": "x", "np": 3}
    (info,) = store.list_datasets()
    assert (info.name, info.n_pairs, info.n_runs, info.n_reviewed) == ("demo", 5, 0, 0)
    assert (info.source, info.format) == ("here.jsonl", "trl")
    assert info.created_at.tzinfo is not None
    record = store.get_pair(int(frame["id"][2]))
    assert (record.dataset_id, record.idx, record.chosen) == (dataset_id, 2, "chosen 2")


def test_duplicate_dataset_name_is_a_clear_error(store: Store) -> None:
    store.add_dataset("demo", make_pairs(3))
    before = store.counts()
    with pytest.raises(ValueError, match="already exists"):
        store.add_dataset("demo", make_pairs(4))
    with pytest.raises(ValueError, match="non-empty"):
        store.add_dataset("  ", make_pairs(4))
    assert store.counts() == before


def test_failure_midway_leaves_database_unchanged(store: Store) -> None:
    store.add_dataset("first", make_pairs(3))
    before = store.counts()
    pairs = make_pairs(7_000)
    pairs[5_500] = PreferencePair(None, "c", "r")  # type: ignore[arg-type]  # 3rd chunk
    with pytest.raises(TypeError, match="pair 5500"):
        store.add_dataset("second", pairs)
    assert store.counts() == before
    assert [d.name for d in store.list_datasets()] == ["first"]
    # The name is still free: nothing of the failed import was kept.
    store.add_dataset("second", make_pairs(7_000))
    assert store.counts()["pairs"] == 7_003


def test_import_hh_rlhf_dev_file(store: Store) -> None:
    before = store.counts()
    dataset_id, report = store.import_file(HH_DEV)
    assert store.counts()["pairs"] == before["pairs"] + 1_156 == len(report.pairs)
    assert report.format == "hh-rlhf"
    # The rows whose final assistant turn in "chosen" is empty, counted from the raw file.
    empty = 0
    for line in HH_DEV.read_text(encoding="utf-8").splitlines():
        chosen = json.loads(line)["chosen"]
        empty += not chosen[chosen.rfind("\n\nAssistant:") + len("\n\nAssistant:") :].strip()
    empty_warnings = [w for w in report.warnings if "chosen" in w and "empty" in w]
    assert len(empty_warnings) == empty == 2
    info = store.get_dataset(dataset_id)
    assert (info.name, info.n_pairs, info.format) == ("dev", 1_156, "hh-rlhf")
    frame = store.dataset_frame(dataset_id)
    assert frame["prompt"].tolist() == [p.prompt for p in report.pairs]
    assert frame["chosen"].tolist() == [p.chosen for p in report.pairs]
    # Importing again without a name gets a fresh one; with a taken name it is refused.
    again, _ = store.import_file(HH_DEV)
    assert store.get_dataset(again).name == "dev (2)"
    with pytest.raises(ValueError, match="already exists"):
        store.import_file(HH_DEV, name="dev")


def test_import_failure_leaves_database_unchanged(store: Store, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": 3}\n')
    before = store.counts()
    with pytest.raises(FormatError):
        store.import_file(bad)
    assert store.counts() == before


def test_delete_dataset_cascades(store: Store) -> None:
    keep_id, keep_run, keep_ids = annotated(store, [1.0, 2.0], name="keep")
    dataset_id, run_id, ids = annotated(store, [0.5, -0.5, 1.5], name="gone")
    store.add_review(ids[0], "ann", "flip", run_id=run_id)
    store.add_review(keep_ids[0], "ann", "flag", run_id=keep_run)
    store.delete_dataset(dataset_id)
    counts = store.counts()
    assert (counts["datasets"], counts["pairs"], counts["runs"]) == (1, 2, 1)
    assert (counts["margins"], counts["reviews"]) == (2, 1)
    with pytest.raises(NotFoundError):
        store.dataset_frame(dataset_id)
    with pytest.raises(NotFoundError):
        store.delete_dataset(dataset_id)


# --- contrastive sets and directions -----------------------------------------------------------


def test_contrast_sets(store: Store) -> None:
    items = [ContrastItem(f"do bad {i}", f"sure {i}", "I can’t answer that.") for i in range(5)]
    set_id = store.add_contrast_set("adv", items, source="advbench")
    assert store.get_contrast_items(set_id) == items
    (info,) = store.list_contrast_sets()
    assert (info.name, info.n_items, info.source) == ("adv", 5, "advbench")
    with pytest.raises(ValueError, match="already exists"):
        store.add_contrast_set("adv", items)
    store.delete_contrast_set(set_id)
    assert store.counts()["contrast_items"] == 0


def test_direction_round_trip_is_exact(store: Store) -> None:
    quality = [
        LayerQuality(2, 0.9, 0.95, 2.5, 0.8, 0.1, 0.85),
        LayerQuality(3, 0.7, 0.8, 1, 0, 0, 1),
    ]
    direction = make_direction(dim=576, seed=3, name="v1", quality=quality, n_train=100)
    direction.vector[0] = np.float32(1e-38)  # a subnormal-adjacent value survives too
    direction_id = store.add_direction(direction)
    back = store.get_direction(direction_id)
    assert back.vector.dtype == np.float32
    assert back.vector.tobytes() == direction.vector.tobytes()
    assert back.metadata() == direction.metadata()
    assert back.layer_quality == quality[0]
    (info,) = store.list_directions()
    assert (info.name, info.dim, info.layer, info.auroc, info.n_runs) == ("v1", 576, 2, 0.95, 0)
    store.delete_direction(direction_id)
    with pytest.raises(NotFoundError):
        store.get_direction(direction_id)


# --- margin runs -------------------------------------------------------------------------------


def test_runs_resume_where_they_stopped(store: Store) -> None:
    dataset_id = store.add_dataset("d", make_pairs(10))
    direction_id = store.add_direction(make_direction())
    settings = {"layer": 2, "pooling": "last", "template": "alpaca"}
    run_id = store.start_run(dataset_id, direction_id, settings)
    # Same settings (any key order) resume the same run; other settings start another.
    assert store.start_run(dataset_id, direction_id, dict(reversed(settings.items()))) == run_id
    other = store.start_run(dataset_id, direction_id, {**settings, "layer": 3})
    assert other != run_id

    first = store.pairs_missing_margins(run_id, limit=4)
    assert [p.idx for p in first] == [0, 1, 2, 3]
    store.add_margins(run_id, [p.id for p in first], [0.1, 0.2, 0.3, 0.4])
    # A restart: the same chunk again is ignored, the rest is still missing.
    store.add_margins(run_id, [p.id for p in first], [9.0, 9.0, 9.0, 9.0])
    rest = store.pairs_missing_margins(run_id)
    assert [p.idx for p in rest] == list(range(4, 10))
    store.add_margins(run_id, [p.id for p in rest], np.arange(6, dtype=np.float64))
    assert store.pairs_missing_margins(run_id) == []
    store.finish_run(run_id)

    run = store.get_run(run_id)
    assert (run.status, run.n_margins, run.n_pairs, run.settings) == ("finished", 10, 10, settings)
    assert run.finished_at is not None and run.finished_at >= run.created_at
    frame = store.run_frame(run_id)
    assert frame["computed_margin"].tolist()[:5] == [0.1, 0.2, 0.3, 0.4, 0.0]
    assert [r.id for r in store.list_runs(dataset_id)] == [run_id, other]
    assert store.list_datasets()[0].n_runs == 2


def test_add_margins_validates(store: Store) -> None:
    _, run_id, ids = annotated(store, [1.0, 2.0], name="a")
    other_dataset = store.add_dataset("b", make_pairs(2, "b"))
    foreign = int(store.dataset_frame(other_dataset)["id"][0])
    before = store.counts()
    with pytest.raises(ValueError, match="not in run"):
        store.add_margins(run_id, [foreign], [1.0])
    with pytest.raises(ValueError, match="finite"):
        store.add_margins(run_id, [ids[0]], [float("nan")])
    with pytest.raises(ValueError, match="values"):
        store.add_margins(run_id, ids, [1.0])
    with pytest.raises(NotFoundError):
        store.add_margins(999, ids, [1.0, 2.0])
    assert store.counts() == before


# --- reviews -----------------------------------------------------------------------------------


def state_of(store: Store, run_id: int, pair_id: int) -> dict:
    frame = store.run_frame(run_id).set_index("pair_id")
    return frame.loc[pair_id].to_dict()


def test_a_verdict_is_absolute_flip_twice_is_still_flipped(store: Store) -> None:
    _, run_id, ids = annotated(store, [2.0, 1.0])
    store.add_review(ids[0], "ann", "flip", run_id=run_id)
    row = state_of(store, run_id, ids[0])
    assert row["flipped"] and row["effective_margin"] == -2.0 and row["computed_margin"] == 2.0
    assert row["shown_margin"] == 2.0  # as imported, as the Review page shows the pair
    store.add_review(ids[0], "ann", "flip", run_id=run_id)
    row = state_of(store, run_id, ids[0])
    assert row["flipped"] and row["effective_margin"] == -2.0
    assert (row["n_reviews"], row["n_verdicts"], row["label_source"]) == (2, 1, "single")
    assert row["decided_by"] == "ann"


def test_two_annotators_who_flip_agree_on_flipped(store: Store) -> None:
    _, run_id, ids = annotated(store, [2.0, 1.0])
    store.add_review(ids[0], "ann", "flip", run_id=run_id)
    store.add_review(ids[0], "bob", "flip", run_id=run_id)
    row = state_of(store, run_id, ids[0])
    assert row["flipped"] and row["effective_margin"] == -2.0
    assert (row["label_source"], row["decided_by"], row["n_verdicts"]) == (
        "unanimous",
        "ann, bob",
        2,
    )


def test_the_latest_verdict_of_an_annotator_replaces_earlier_ones(store: Store) -> None:
    _, run_id, ids = annotated(store, [2.0, 1.0])
    store.add_review(ids[0], "ann", "flip", run_id=run_id)
    store.add_review(ids[0], "ann", "accept", run_id=run_id)
    row = state_of(store, run_id, ids[0])
    assert not row["flipped"] and row["effective_margin"] == 2.0
    # Override, then flip: the flip is the verdict; the override's number is gone.
    store.add_review(ids[1], "ann", "override", 0.5, run_id=run_id)
    assert state_of(store, run_id, ids[1])["effective_margin"] == 0.5
    store.add_review(ids[1], "ann", "flip", run_id=run_id)
    row = state_of(store, run_id, ids[1])
    assert row["flipped"] and row["effective_margin"] == -1.0 and np.isnan(row["override_margin"])
    # A negative override (as shown, as imported) says the rejected is safer: swapped, and
    # the exported margin is relative to the exported chosen.
    store.add_review(ids[1], "ann", "override", -0.25, run_id=run_id)
    row = state_of(store, run_id, ids[1])
    assert row["flipped"] and row["shown_margin"] == -0.25 and row["effective_margin"] == 0.25
    assert row["override_margin"] == -0.25


def test_withdraw_takes_the_verdict_back_and_keeps_the_flag(store: Store) -> None:
    _, run_id, ids = annotated(store, [2.0, 1.0])
    with pytest.raises(ValueError, match="no verdict"):
        store.add_review(ids[0], "ann", "withdraw", run_id=run_id)
    store.add_review(ids[0], "ann", "flip", run_id=run_id)
    store.add_review(ids[0], "ann", "flag", run_id=run_id)
    store.add_review(ids[0], "bob", "accept", run_id=run_id)
    assert state_of(store, run_id, ids[0])["label_source"] == "disputed"
    assert store.review_counts(run_id, annotator="ann") == (1, 1)
    store.add_review(ids[0], "ann", "withdraw", run_id=run_id)
    row = state_of(store, run_id, ids[0])
    assert (row["label_source"], row["decided_by"], row["flagged"]) == ("single", "bob", True)
    assert store.review_counts(run_id, annotator="ann") == (0, 2)
    assert store.review_counts(run_id) == (1, 1)
    assert store.annotator_state(ids[0], "ann").verdict is None
    # A later verdict counts again.
    store.add_review(ids[0], "ann", "flip", run_id=run_id)
    assert store.annotator_state(ids[0], "ann").verdict.action == "flip"
    assert store.review_counts(run_id, annotator="ann") == (1, 1)


def test_a_tie_is_disputed_and_an_admin_decides(store: Store) -> None:
    _, run_id, ids = annotated(store, [2.0, 1.0])
    store.add_review(ids[0], "ann", "flip", run_id=run_id)
    store.add_review(ids[0], "bob", "override", 3.0, run_id=run_id)
    row = state_of(store, run_id, ids[0])
    assert row["disputed"] and row["label_source"] == "disputed" and not row["flipped"]
    assert row["effective_margin"] == 2.0 and row["decided_by"] == ""
    # A third annotator on bob's side: majority, and bob's override sets the margin.
    store.add_review(ids[0], "cy", "accept", run_id=run_id)
    row = state_of(store, run_id, ids[0])
    assert (row["label_source"], row["decided_by"]) == ("majority", "bob, cy")
    assert not row["flipped"] and row["effective_margin"] == 3.0
    # The admin flips: their adjudication wins over the majority (when named as admin).
    store.add_review(ids[0], "ada", "flip", run_id=run_id)
    frame = store.run_frame(run_id, admins={"ada"}).set_index("pair_id")
    assert frame.loc[ids[0], "label_source"] == "admin" and frame.loc[ids[0], "flipped"]
    assert frame.loc[ids[0], "decided_by"] == "ada"
    assert frame.loc[ids[0], "effective_margin"] == -2.0
    state = store.pair_state(ids[0], run_id, admins={"ada"})
    assert state.label_source == "admin" and state.flipped and state.margin == -2.0
    # Not an admin: one more voice, 2 against 2.
    assert state_of(store, run_id, ids[0])["label_source"] == "disputed"


def test_flags_any_annotator_unless_an_admin_said_otherwise(store: Store) -> None:
    _, run_id, ids = annotated(store, [2.0, 1.0])
    assert not state_of(store, run_id, ids[1])["flagged"]
    store.add_review(ids[1], "ann", "flag", note="looks odd", run_id=run_id)
    assert state_of(store, run_id, ids[1])["flagged"]
    store.add_review(ids[1], "bob", "unflag", run_id=run_id)  # bob's unflag is his own
    assert state_of(store, run_id, ids[1])["flagged"]
    store.add_review(ids[1], "ann", "unflag", run_id=run_id)
    assert not state_of(store, run_id, ids[1])["flagged"]
    store.add_review(ids[1], "bob", "flag", run_id=run_id)
    assert store.pair_state(ids[1], run_id).flagged
    store.add_review(ids[1], "ada", "unflag", run_id=run_id)
    assert not store.pair_state(ids[1], run_id, admins={"ada"}).flagged
    assert store.pair_state(ids[1], run_id).flagged
    # A flag is not a verdict: the pair is still unreviewed.
    assert store.review_counts(run_id) == (0, 2)


def test_reviews_follow_the_pair_into_a_new_run(store: Store) -> None:
    """A second run of the same data set and direction (another dtype) shows the reviews
    made on the first, in its frame, its queue and its counts."""
    dataset_id, run_a, ids = annotated(store, [2.0, 1.0, -1.0])
    direction_id = store.get_run(run_a).direction_id
    store.add_review(ids[0], "ann", "override", 7.0, run_id=run_a)
    store.add_review(ids[1], "ann", "flip", run_id=run_a)
    store.add_review(ids[2], "bob", "flag", run_id=run_a)
    run_b = store.start_run(dataset_id, direction_id, {"layer": 2, "model_dtype": "bfloat16"})
    assert run_b != run_a
    store.add_margins(run_b, ids, [2.1, 0.9, -1.1])
    b = store.run_frame(run_b).set_index("pair_id")
    assert b.loc[ids[0], "effective_margin"] == 7.0 and b.loc[ids[0], "decided_by"] == "ann"
    assert b.loc[ids[1], "flipped"] and b.loc[ids[1], "effective_margin"] == -0.9
    assert b.loc[ids[2], "flagged"]
    assert store.review_counts(run_b) == (2, 1)
    assert store.review_queue(run_b, unreviewed_only=True) == [ids[2]]
    assert store.pair_state(ids[0], run_b).margin == 7.0
    assert store.get_dataset(dataset_id).n_reviewed == 2  # a flag alone is no verdict
    # The per-pair summary the Review and Export pages read (no texts) says the same.
    summary = store.resolutions(run_b)
    assert set(summary) == set(ids)
    assert [summary[p].margin for p in ids] == [7.0, -0.9, -1.1]
    assert [summary[p].label_source for p in ids] == ["single", "single", "none"]


def test_an_override_counts_by_its_side_on_another_directions_scale(store: Store) -> None:
    dataset_id, run_a, ids = annotated(store, [2.0, 1.0])
    run_b = store.start_run(dataset_id, store.add_direction(make_direction(seed=1)), {})
    store.add_margins(run_b, ids, [3.0, -1.0])
    store.add_review(ids[0], "ann", "override", -7.0, run_id=run_a)
    a = store.run_frame(run_a).set_index("pair_id")
    b = store.run_frame(run_b).set_index("pair_id")
    assert a.loc[ids[0], "flipped"] and a.loc[ids[0], "effective_margin"] == 7.0
    # On direction B's scale the number means nothing; its side (swapped) still counts.
    assert b.loc[ids[0], "flipped"] and b.loc[ids[0], "effective_margin"] == -3.0
    assert np.isnan(b.loc[ids[0], "override_margin"])
    # An override made without a run is a margin on every run's scale.
    store.add_review(ids[1], "ann", "override", 4.0)
    assert state_of(store, run_b, ids[1])["effective_margin"] == 4.0
    # Deleting direction A keeps every review (they belong to the pair); the override
    # still counts by its side only in run B.
    store.delete_direction(store.get_run(run_a).direction_id)
    history = store.pair_history(ids[0])
    assert [(h.action, h.run_id, h.value) for h in history] == [("override", None, -7.0)]
    row = state_of(store, run_b, ids[0])
    assert row["flipped"] and row["effective_margin"] == -3.0


def test_a_reused_direction_id_is_not_the_old_overrides_scale(store: Store) -> None:
    """SQLite hands a deleted row's id to the next row when it was the largest: an override
    typed on the deleted direction must not become a margin on the new one."""
    dataset_id, run_a, ids = annotated(store, [2.0])
    old = store.get_run(run_a).direction_id
    store.add_review(ids[0], "ann", "override", -7.0, run_id=run_a)
    store.delete_direction(old)
    new = store.add_direction(make_direction(seed=2))
    if not PG_URL:
        assert new == old  # the case this guards against really happens here
    run_c = store.start_run(dataset_id, new, {})
    store.add_margins(run_c, ids, [5.0])
    row = state_of(store, run_c, ids[0])
    assert row["flipped"] and row["effective_margin"] == -5.0


def test_review_validation_changes_nothing(store: Store) -> None:
    dataset_id, run_id, ids = annotated(store, [2.0, 1.0])
    _, other_run, other_ids = annotated(store, [1.0], name="other")
    before = store.counts()
    bad = [
        dict(action="like"),
        dict(action="accept", annotator=""),
        dict(action="accept", annotator="   "),
        dict(action="override"),
        dict(action="override", value=float("inf")),
        dict(action="flip", value=1.0),
        dict(action="accept", run_id=other_run),
    ]
    for kwargs in bad:
        args = {"pair_id": ids[0], "annotator": "ann", **kwargs}
        with pytest.raises(ValueError):
            store.add_review(**args)
    with pytest.raises(NotFoundError):
        store.add_review(10_000, "ann", "accept")
    assert store.counts() == before


def test_pair_history_is_oldest_first_in_utc(store: Store) -> None:
    _, run_id, ids = annotated(store, [2.0])
    made = [
        store.add_review(ids[0], "ann", "accept", run_id=run_id),
        store.add_review(ids[0], "bob", "override", 1.5, note="too high", run_id=run_id),
        store.add_review(ids[0], " cy ", "flag"),
    ]
    history = store.pair_history(ids[0])
    assert [r.id for r in history] == made
    assert [r.annotator for r in history] == ["ann", "bob", "cy"]
    assert history[1].value == 1.5 and history[1].note == "too high"
    assert history[2].run_id is None
    for r in history:
        assert r.created_at.utcoffset() == timedelta(0) and r.created_at.tzinfo == timezone.utc
    assert history[0].created_at <= history[1].created_at <= history[2].created_at
    assert any(r.created_at.microsecond for r in history)  # microseconds are kept


# --- review queue ------------------------------------------------------------------------------


def test_review_queue_order(store: Store) -> None:
    values = [0.3, -2.0, 1.5, -0.1, 0.0, -2.0, 0.05]
    _, run_id, ids = annotated(store, values)
    queue = store.review_queue(run_id)
    # Negative first, most negative first (ties by pair id), then |margin| ascending.
    expected = [ids[i] for i in (1, 5, 3, 4, 6, 0, 2)]
    assert queue == expected
    assert store.review_queue(run_id, order="index") == ids
    assert store.review_queue(run_id, pair_ids=[ids[0], ids[3], ids[5]]) == [ids[5], ids[3], ids[0]]
    store.add_review(ids[1], "ann", "accept", run_id=run_id)
    store.add_review(ids[3], "ann", "flip", run_id=run_id)
    assert store.review_queue(run_id, unreviewed_only=True) == [ids[i] for i in (5, 4, 6, 0, 2)]
    assert store.review_counts(run_id) == (2, 5)
    with pytest.raises(ValueError, match="order"):
        store.review_queue(run_id, order="random")  # type: ignore[arg-type]


def test_review_queue_least_sure_first(store: Store) -> None:
    values = [0.3, -2.0, 1.5, -0.1, 0.0, -2.0, 0.05, 0.1]
    _, run_id, ids = annotated(store, values)
    # |margin| ascending whichever the sign (ties by pair id): 0, 0.05, -0.1 = 0.1, 0.3, ...
    expected = [ids[i] for i in (4, 6, 3, 7, 0, 2, 1, 5)]
    assert store.review_queue(run_id, order="least_sure") == expected
    store.add_review(ids[6], "ann", "accept", run_id=run_id)  # skipped once reviewed
    assert store.review_queue(run_id, "least_sure", unreviewed_only=True)[:2] == [ids[4], ids[3]]


def test_one_annotators_view_for_blind_review(store: Store) -> None:
    _, run_id, ids = annotated(store, [0.5, -1.0, 2.0])
    store.add_review(ids[0], "ada", "flip", run_id=run_id)
    store.add_review(ids[1], "ada", "override", value=9.0, run_id=run_id)
    store.add_review(ids[1], "ben", "flag", run_id=run_id)
    store.add_review(ids[2], "ben", "accept", run_id=run_id)
    assert store.review_counts(run_id) == (3, 0)
    assert store.review_counts(run_id, annotator="ben") == (1, 2)  # a flag is no verdict
    assert store.review_counts(run_id, annotator="cy") == (0, 3)
    assert store.review_queue(run_id, unreviewed_only=True, annotator="ben") == [ids[1], ids[0]]
    everyone = store.run_frame(run_id).set_index("pair_id")
    ben = store.run_frame(run_id, annotator="ben").set_index("pair_id")
    assert everyone.loc[ids[0], "flipped"] and not ben.loc[ids[0], "flipped"]
    assert everyone.loc[ids[1], "effective_margin"] == 9.0
    assert ben.loc[ids[1], "effective_margin"] == -1.0 and ben.loc[ids[1], "flagged"]
    assert ben["n_reviews"].tolist() == [0, 1, 1]
    assert ben["label_source"].tolist() == ["none", "none", "single"]
    # The pair as one annotator sees it: their own flag, none of the others' verdicts.
    own = store.pair_state(ids[1], run_id, annotator="ben")
    assert own.flagged and own.n_verdicts == 0 and own.margin == -1.0
    assert store.annotator_state(ids[1], "ben").flagged
    assert store.annotator_state(ids[1], "ada").flagged is None


def test_review_queue_with_ties_skips_reviewed_pairs(store: Store) -> None:
    rng = np.random.default_rng(0)
    values = np.round(rng.normal(size=40), 1).tolist()  # rounding makes ties
    _, run_id, ids = annotated(store, values)
    by_value = sorted(zip(values, ids))  # (margin, pair id): ties go by pair id
    size = sorted((abs(v), p) for v, p in zip(values, ids))
    assert store.review_queue(run_id) == [p for _, p in by_value]
    assert store.review_queue(run_id, order="least_sure") == [p for _, p in size]
    assert store.review_queue(run_id, order="index") == ids
    queue = store.review_queue(run_id)
    for pair_id in queue[:3] + queue[5:7]:
        store.add_review(pair_id, "ann", "accept", run_id=run_id)
    todo = store.review_queue(run_id, unreviewed_only=True)
    assert todo == queue[3:5] + queue[7:]  # skips reviewed ones, keeps the order
    assert store.review_queue(run_id, unreviewed_only=True, annotator="bob") == queue


def test_queue_walk_on_a_large_data_set(store: Store) -> None:
    """Queue order on 20,000 pairs (speed is measured in bench/, not here)."""
    n = 20_000
    pairs = [
        PreferencePair(f"Human: question {i}?\n\nAssistant:", "I won't help. " * 8, "Sure. " * 12)
        for i in range(n)
    ]
    dataset_id = store.add_dataset("big", pairs)
    direction_id = store.add_direction(make_direction())
    run_id = store.start_run(dataset_id, direction_id, {})
    ids = [p.id for p in store.pairs_missing_margins(run_id)]
    assert len(ids) == n
    values = np.random.default_rng(1).normal(size=n)
    store.add_margins(run_id, ids, values)
    queue = store.review_queue(run_id)
    assert queue[:3] == [ids[i] for i in np.argsort(values, kind="stable")[:3]]
    for pair_id in queue[:200]:
        store.add_review(pair_id, "ann", "accept", run_id=run_id)
    assert queue == [ids[i] for i in np.lexsort((ids, values))]
    assert store.review_queue(run_id, unreviewed_only=True) == queue[200:]
    assert store.review_queue(run_id, order="index") == ids
    assert store.review_counts(run_id) == (200, n - 200)


def _queue_world(store: Store) -> tuple[int, list[int], list[int]]:
    """A run over 40 of a data set's 42 pairs (the first and last have no margin), margins
    rounded to one decimal (ties in margin and in |margin|, zeros among them), a second run
    of the same pairs, another data set's pair, and reviews of every kind scattered along
    the queue.

    Returns (run, pairs with a margin, pairs that are not in the queue)."""
    values = np.round(np.random.default_rng(3).normal(size=40), 1)
    values[[4, 17, 30]] = 0.0
    values[[5, 6]] = [0.7, -0.7]
    dataset_id = store.add_dataset("queue", make_pairs(42, "q"))
    _, _, foreign = annotated(store, [0.25], name="foreign")
    run_id = store.start_run(dataset_id, store.add_direction(make_direction()), {"layer": 2})
    every = [p.id for p in store.pairs_missing_margins(run_id)]
    ids = every[1:-1]
    store.add_margins(run_id, ids, values.tolist())
    # Another run of the same pairs, with other margins: never read into this run's queue.
    other = store.start_run(dataset_id, store.add_direction(make_direction(seed=1)), {})
    store.add_margins(other, every, np.linspace(-5, 5, len(every)).tolist())
    queue = store.review_queue(run_id)
    for i in (0, 3, 39):
        store.add_review(queue[i], "ann", "accept", run_id=run_id)
    store.add_review(queue[3], "bob", "flip", run_id=run_id)
    store.add_review(queue[7], "bob", "override", value=1.0, run_id=run_id)
    store.add_review(queue[10], "cy", "accept", run_id=run_id)
    store.add_review(queue[10], "cy", "withdraw", run_id=run_id)  # unreviewed again
    store.add_review(queue[12], "dee", "flag", run_id=run_id)  # a flag is no verdict
    store.add_review(foreign[0], "ann", "accept")
    return run_id, ids, [every[0], every[-1], foreign[0], 10**9]


def _expected_keys(store: Store, run_id: int, order: str, ids: list[int]) -> list[int]:
    """The queue's order, worked out in Python from the margins (pair ids break ties)."""
    value = store.run_frame(run_id).set_index("pair_id")["computed_margin"]
    key = {
        "disagreement": lambda p: (value[p], p),
        "least_sure": lambda p: (abs(value[p]), p),
        "index": lambda p: (store.get_pair(p).idx, p),
    }[order]
    return sorted(ids, key=key)


@pytest.mark.parametrize("few", [0, 2_000], ids=["read-on", "among-the-unreviewed"])
@pytest.mark.parametrize("order", ["disagreement", "least_sure", "index"])
def test_queue_step_agrees_with_the_listed_queue(
    store: Store, order: str, few: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store.queue_step reads the queue by keys; every answer must be the one the whole
    list gives, for every pair, with ties, under every annotator's filter; "next
    unreviewed" both ways (reading on through the queue, or among the few unreviewed)."""
    from legend_core.data.store import queue
    from tests.queue_reference import next_unreviewed

    monkeypatch.setattr(queue, "FEW_UNREVIEWED", few)

    run_id, ids, outside = _queue_world(store)
    full = store.review_queue(run_id, order)  # type: ignore[arg-type]
    assert full == _expected_keys(store, run_id, order, ids)
    for annotator in (None, "ann", "bob", "cy", "nobody"):
        todo = store.review_queue(run_id, order, unreviewed_only=True, annotator=annotator)  # type: ignore[arg-type]
        assert store.review_counts(run_id, annotator) == (len(full) - len(todo), len(todo))
        for current in [*full, None, *outside]:
            here = current if current in full else full[0]
            pos = full.index(here)
            expected = QueueStep(
                current=here,
                position=pos,
                size=len(full),
                previous=full[pos - 1] if pos else None,
                next=full[pos + 1] if pos + 1 < len(full) else None,
                next_unreviewed=next_unreviewed(full, here, todo),
            )
            step = store.queue_step(run_id, order, current, annotator=annotator)  # type: ignore[arg-type]
            assert step == expected, (annotator, current)
            assert step.counts == (len(full) - len(todo), len(todo))
    # The reviews make these cases real: a withdrawn verdict or a flag alone leave a pair
    # unreviewed, and in disagreement order the last pair is reviewed (the walk wraps).
    everyone = store.review_queue(run_id, order, unreviewed_only=True)  # type: ignore[arg-type]
    assert len(everyone) == len(full) - 4
    assert store.review_queue(run_id)[-1] not in everyone


@pytest.mark.parametrize("order", ["disagreement", "least_sure", "index"])
def test_review_queue_of_a_selection_reads_only_its_pairs(store: Store, order: str) -> None:
    run_id, ids, outside = _queue_world(store)
    rng = np.random.default_rng(5)
    chosen = [int(p) for p in rng.choice(ids, size=15, replace=False)]
    # Repeats, numpy integers, and pairs that are not in the queue are all fine.
    selection = [*chosen, chosen[0], *outside, *np.array(chosen[:3])]
    for unreviewed_only in (False, True):
        for annotator in (None, "ann", "bob"):
            whole = store.review_queue(
                run_id,
                order,  # type: ignore[arg-type]
                unreviewed_only=unreviewed_only,
                annotator=annotator,
            )
            got = store.review_queue(
                run_id,
                order,  # type: ignore[arg-type]
                pair_ids=selection,
                unreviewed_only=unreviewed_only,
                annotator=annotator,
            )
            assert got == [p for p in whole if p in set(chosen)]
    assert store.review_queue(run_id, order, pair_ids=[]) == []  # type: ignore[arg-type]


def test_queue_step_at_the_edges(store: Store) -> None:
    _, run_id, ids = annotated(store, [0.5, -1.0, 2.0])
    queue = store.review_queue(run_id)
    first = store.queue_step(run_id)
    assert first == QueueStep(queue[0], 0, 3, None, queue[1], queue[1])
    last = store.queue_step(run_id, current=queue[2])
    assert (last.position, last.previous, last.next) == (2, queue[1], None)
    assert last.next_unreviewed == queue[0]  # wraps around to the front
    store.add_review(queue[0], "ann", "accept", run_id=run_id)
    store.add_review(queue[1], "ann", "flip", run_id=run_id)
    assert store.queue_step(run_id, current=queue[2]).next_unreviewed is None  # only itself
    assert store.queue_step(run_id, current=queue[0]).next_unreviewed == queue[2]
    store.add_review(queue[2], "ann", "override", value=1.0, run_id=run_id)
    assert store.queue_step(run_id, current=queue[1]).next_unreviewed is None
    assert store.queue_step(run_id, current=queue[1], annotator="bo").next_unreviewed == queue[2]
    empty = store.start_run(store.add_dataset("empty", make_pairs(2, "e")), 1, {})
    assert store.queue_step(empty) is None
    with pytest.raises(ValueError, match="order"):
        store.queue_step(run_id, "random")  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        store.queue_step(run_id + 100)


def test_queue_step_sees_another_annotators_review_at_once(store: Store) -> None:
    """Two annotators on two connections: a step never skips or repeats a pair because of
    what the other did in between (nothing is kept between steps)."""
    _, run_id, ids = annotated(store, [0.1, 0.2, 0.3, 0.4])
    queue = store.review_queue(run_id)
    other = Store(store.url)
    try:
        assert store.queue_step(run_id, current=queue[0]).next_unreviewed == queue[1]
        other.add_review(queue[1], "bob", "accept", run_id=run_id)
        assert store.queue_step(run_id, current=queue[0]).next_unreviewed == queue[2]
        # Under blind review, ann's next unreviewed pair is hers: bob's verdict is not hers.
        step = store.queue_step(run_id, current=queue[0], annotator="ann")
        assert step.next_unreviewed == queue[1]
        other.add_review(queue[1], "bob", "withdraw", run_id=run_id)
        assert store.queue_step(run_id, current=queue[0]).next_unreviewed == queue[1]
        assert store.review_counts(run_id) == (0, 4)
    finally:
        other.close()


def test_list_step_walks_a_selection_in_chunks(store: Store, monkeypatch) -> None:
    """The page's listed queues (a selection, the disputed pairs): the same answers as the
    whole list, with the reviews read in chunks of 2 then 4 pairs."""
    from legend_core.app import queue as paging
    from tests.queue_reference import next_unreviewed

    monkeypatch.setattr(paging, "FIRST_CHUNK", 2)
    monkeypatch.setattr(paging, "MAX_CHUNK", 4)
    run_id, ids, outside = _queue_world(store)
    chosen = ids[::2]
    memo: dict[str, object] = {}
    listed = paging.ordered_queue(store, run_id, "least_sure", chosen, 40, memo)
    assert listed == store.review_queue(run_id, "least_sure", pair_ids=chosen)
    # A run still computing margins gains pairs: its number of margins is in the memo's key.
    wider = [*chosen, outside[0]]
    assert outside[0] not in paging.ordered_queue(store, run_id, "least_sure", wider, 40, memo)
    store.add_margins(run_id, [outside[0]], [-0.05])
    grown = paging.ordered_queue(store, run_id, "least_sure", wider, 41, memo)
    assert outside[0] in grown
    assert grown == store.review_queue(run_id, "least_sure", pair_ids=wider)
    listed = paging.ordered_queue(store, run_id, "least_sure", chosen, 41, memo)
    for annotator in (None, "ann", "bob"):
        todo = store.review_queue(
            run_id, pair_ids=chosen, unreviewed_only=True, annotator=annotator
        )
        for current in [*listed, None, outside[1]]:
            here = current if current in listed else listed[0]
            pos = listed.index(here)
            step = paging.list_step(store, run_id, listed, current, annotator)
            assert step == QueueStep(
                here,
                pos,
                len(listed),
                listed[pos - 1] if pos else None,
                listed[pos + 1] if pos + 1 < len(listed) else None,
                next_unreviewed(listed, here, todo),
            )
    assert paging.list_step(store, run_id, [], None) is None


# --- embedding cache ---------------------------------------------------------------------------

SPACE = EmbeddingSpace("tiny", "sha256:abc", "alpaca", "last", 2, 512)


def test_text_key() -> None:
    key = text_key("prompt", "response")
    assert isinstance(key, bytes) and len(key) == 32
    assert text_key("a", "bc") != text_key("ab", "c")


def test_embedding_cache_round_trip_and_chunking(store: Store) -> None:
    rng = np.random.default_rng(0)
    items = {text_key(f"p{i}", "r"): rng.normal(size=64).astype(np.float32) for i in range(2_000)}
    store.put_embeddings(SPACE, items)
    keys = list(items) + [text_key("missing", "x")]
    got = store.get_embeddings(SPACE, keys)
    assert set(got) == set(items)
    for key, vector in items.items():
        assert got[key].dtype == np.float32
        np.testing.assert_array_equal(got[key], vector.astype(np.float16).astype(np.float32))
    # Idempotent: existing keys keep their vectors, new ones are added.
    new_key = text_key("new", "r")
    store.put_embeddings(SPACE, {keys[0]: np.full(64, 2.0), new_key: np.ones(64)})
    assert store.counts()["embeddings"] == 2_001
    assert np.array_equal(store.get_embeddings(SPACE, [keys[0]])[keys[0]], got[keys[0]])
    # Any field of the space separates caches.
    other = EmbeddingSpace("tiny", "sha256:abc", "alpaca", "last", 3, 512)
    assert store.get_embeddings(other, keys) == {}
    assert store.counts()["embedding_spaces"] == 1


def test_embedding_cache_keeps_values_beyond_float16_range(store: Store) -> None:
    key = text_key("p", "huge")
    vector = np.array([1e5, -3.0, 0.5], dtype=np.float32)
    store.put_embeddings(SPACE, {key: vector})
    np.testing.assert_array_equal(store.get_embeddings(SPACE, [key])[key], vector)
    with pytest.raises(ValueError, match="NaN"):
        store.put_embeddings(SPACE, {text_key("p", "nan"): np.array([np.nan])})
    with pytest.raises(ValueError, match="32-byte"):
        store.put_embeddings(SPACE, {b"short": np.ones(3)})


@pytest.mark.parametrize("asked", [1_001, 10], ids=["scan the space", "probe by key"])
def test_iter_embeddings_batches_both_ways(store: Store, asked: int, monkeypatch) -> None:
    monkeypatch.setattr("legend_core.data.store.blocks.SCAN_MIN_KEYS", 1_000)  # scan at test sizes
    rng = np.random.default_rng(1)
    items = {text_key(f"p{i}", "r"): rng.normal(size=8).astype(np.float32) for i in range(1_000)}
    wide = text_key("p", "wide")
    items[wide] = np.array([1e5, *rng.normal(size=7)], dtype=np.float32)
    store.put_embeddings(SPACE, items)
    keys = [wide, *list(items)[: asked - 1], text_key("no", "pe"), wide]  # one absent, a repeat
    got: dict[bytes, np.ndarray] = {}
    batches = 0
    statements: list[str] = []
    record = lambda conn, cursor, sql, *rest: statements.append(sql)  # noqa: E731
    sa.event.listen(store.engine, "before_cursor_execute", record)
    for batch_keys, matrix in store.iter_embeddings(SPACE, keys, batch_size=256):
        assert matrix.dtype == np.float32 and matrix.shape == (len(batch_keys), 8)
        assert not set(batch_keys) & set(got), "each vector once"
        got |= dict(zip(batch_keys, matrix))
        batches += 1
    assert set(got) == set(keys) - {text_key("no", "pe")}
    assert batches >= (asked - 1) // 256
    for key in got:
        expected = items[key] if key == wide else items[key].astype(np.float16)
        np.testing.assert_array_equal(got[key], expected.astype(np.float32))
    assert got[wide][0] == 1e5  # the float32 row among float16 ones
    sa.event.remove(store.engine, "before_cursor_execute", record)
    reads = [q for q in statements if "embedding_blocks.vector_data" in q]
    assert reads and all(("IN (" in q) == (asked == 10) for q in reads), "scan or probe"
    assert store.cached_keys(SPACE, keys) == set(got)


def test_float16_cache_precision_on_hidden_states(store: Store) -> None:
    """Measure what float16 storage costs on hidden-state-like vectors and on margins."""
    rng = np.random.default_rng(42)
    n, dim = 256, 2048
    chosen = (rng.normal(size=(n, dim)) * 3).astype(np.float32)
    rejected = (rng.normal(size=(n, dim)) * 3).astype(np.float32)
    for block in (chosen, rejected):  # a few massive activations (~50), as real LMs have
        outliers = rng.choice(dim, 4, replace=False)
        block[:, outliers] = rng.choice([-1, 1], size=(n, 4)) * rng.normal(50, 5, size=(n, 4))
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)

    keys_c = [text_key(f"p{i}", "c") for i in range(n)]
    keys_r = [text_key(f"p{i}", "r") for i in range(n)]
    store.put_embeddings(SPACE, dict(zip(keys_c + keys_r, [*chosen, *rejected], strict=True)))
    got = store.get_embeddings(SPACE, keys_c + keys_r)
    chosen16 = np.stack([got[k] for k in keys_c])
    rejected16 = np.stack([got[k] for k in keys_r])

    max_abs = float(np.abs(chosen16 - chosen).max())
    cos = np.sum(chosen16 * chosen, 1) / (
        np.linalg.norm(chosen16, axis=1) * np.linalg.norm(chosen, axis=1)
    )
    m32 = (chosen.astype(np.float64) - rejected) @ direction
    m16 = (chosen16.astype(np.float64) - rejected16) @ direction
    margin_err = np.abs(m16 - m32)
    print(
        f"float16 cache: max abs error {max_abs:.4g}, min cosine {cos.min():.8f}, "
        f"margin max abs error {margin_err.max():.3g} (margin std {m32.std():.3g}), "
        f"sign changes {int(np.sum(np.sign(m16) != np.sign(m32)))}/{n}"
    )
    # float16 rounding: relative error at most 2**-11 (half an ulp), absolute 2**-25 near 0.
    assert np.all(np.abs(chosen16 - chosen) <= np.abs(chosen) * 2**-11 + 2**-25)
    assert cos.min() > 0.999999
    assert margin_err.max() < 1e-3 * m32.std()
    assert np.corrcoef(m16, m32)[0, 1] > 0.999999


# --- overview ----------------------------------------------------------------------------------


def test_counts_keys(store: Store) -> None:
    counts = store.counts()
    for key in ("datasets", "pairs", "directions", "runs", "reviews", "contrast_sets"):
        assert counts[key] == 0
    annotated(store, [1.0, -1.0])
    counts = store.counts()
    assert (counts["datasets"], counts["pairs"], counts["runs"], counts["margins"]) == (1, 2, 1, 2)
