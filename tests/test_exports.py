"""Exports: reviews applied, filters, manifests, and files that training tools accept."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from legend_core import __version__
from legend_core.data.exports import export_dataset, export_frame
from legend_core.data.formats import read_pairs
from legend_core.data.store import Store
from legend_core.method.directions import Direction
from legend_core.review.policy import POLICY_TEXT
from legend_core.types import PreferencePair
from tests.pair_files import write_pairs
from tests.test_store import fresh_db_url

MARGINS = [1.5, -0.5, 0.25, -2.0, 3.0, 0.0]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A store on a fresh SQLite file (or PostgreSQL schema, see tests/test_store.py)."""
    with fresh_db_url(tmp_path) as url, Store(url) as s:
        yield s


@pytest.fixture
def reviewed(store: Store, tmp_path: Path) -> tuple[int, list[int], list[PreferencePair]]:
    """An imported file, annotated with MARGINS, reviewed: returns (run, pair ids, pairs).

    Pair 0 is overridden to 0.75, pair 1 flipped, pair 2 flipped then accepted by one
    annotator (as imported: the latest verdict wins), pair 3 flagged, pair 4 flagged then
    unflagged by the same annotator, pair 5 untouched.
    """
    pairs = [
        PreferencePair(f"Question {i}: <b>how</b>?", f"Answer ✓ {i}\nline 2", f'Bad, "{i}"')
        for i in range(len(MARGINS))
    ]
    source = write_pairs(pairs, tmp_path / "pairs.jsonl")
    dataset_id, _ = store.import_file(source)
    direction = Direction(np.ones(8, np.float32), "tiny", 3, "last", "alpaca", "mean_diff")
    run_id = store.start_run(dataset_id, store.add_direction(direction), {"layer": 3})
    ids = [p.id for p in store.pairs_missing_margins(run_id)]
    store.add_margins(run_id, ids, MARGINS)
    store.finish_run(run_id)
    store.add_review(ids[0], "ann", "override", 0.75, note="too sure", run_id=run_id)
    store.add_review(ids[1], "ann", "flip", run_id=run_id)
    store.add_review(ids[2], "bob", "flip", run_id=run_id)
    store.add_review(ids[2], "bob", "accept", run_id=run_id)
    store.add_review(ids[3], "bob", "flag", run_id=run_id)
    store.add_review(ids[4], "bob", "flag", run_id=run_id)
    store.add_review(ids[4], "bob", "unflag", run_id=run_id)
    return run_id, ids, pairs


EXPECTED_MARGIN = [0.75, 0.5, 0.25, -2.0, 3.0, 0.0]
# Unscaled margins and every pair: what most tests below check. The defaults (a scale,
# flagged pairs left out) are tested in tests/test_export_scales.py.
RAW = {"scale": "none", "exclude_flagged": False}


def check_trl_columns(frame: pd.DataFrame) -> None:
    assert list(frame.columns[:4]) == ["prompt", "chosen", "rejected", "margin"]
    for column in ("prompt", "chosen", "rejected"):
        assert pd.api.types.is_string_dtype(frame[column])
        assert all(isinstance(x, str) for x in frame[column])
    assert frame["margin"].dtype == np.float64
    assert frame["margin"].notna().all() and np.isfinite(frame["margin"]).all()


def test_export_frame_applies_reviews(store: Store, reviewed) -> None:
    run_id, ids, pairs = reviewed
    frame = export_frame(store, run_id, **RAW)
    check_trl_columns(frame)
    assert list(frame.columns) == ["prompt", "chosen", "rejected", "margin"]
    assert frame["margin"].tolist() == EXPECTED_MARGIN
    assert frame["prompt"].tolist() == [p.prompt for p in pairs]
    # Pair 1 is flipped: swapped texts, negated margin. Pair 2 was accepted after its flip.
    assert (frame["chosen"][1], frame["rejected"][1]) == (pairs[1].rejected, pairs[1].chosen)
    assert (frame["chosen"][2], frame["rejected"][2]) == (pairs[2].chosen, pairs[2].rejected)


def test_export_frame_provenance(store: Store, reviewed) -> None:
    run_id, ids, _ = reviewed
    frame = export_frame(store, run_id, provenance=True, **RAW)
    check_trl_columns(frame)
    assert frame["pair_id"].tolist() == ids
    assert frame["computed_margin"].tolist() == [1.5, 0.5, 0.25, -2.0, 3.0, 0.0]
    assert frame["reviewed_margin"][0] == 0.75 and frame["reviewed_margin"][1:].isna().all()
    assert frame["flipped"].tolist() == [False, True, False, False, False, False]
    assert frame["flagged"].tolist() == [False, False, False, True, False, False]
    assert frame["decided_by"].tolist() == ["ann", "ann", "bob", "", "", ""]
    assert frame["label_source"].tolist() == ["single"] * 3 + ["none"] * 3
    assert frame["n_verdicts"].tolist() == [1, 1, 1, 0, 0, 0]
    assert not frame["disputed"].any()
    assert set(frame["model"]) == {"tiny"} and set(frame["layer"]) == {3}
    assert frame["direction_id"].nunique() == 1


def test_export_filters(store: Store, reviewed) -> None:
    run_id, ids, _ = reviewed
    assert len(export_frame(store, run_id, reviewed_only=True)) == 3  # a flag is no verdict
    unflagged = export_frame(store, run_id, exclude_flagged=True, provenance=True)
    assert ids[3] not in unflagged["pair_id"].tolist() and len(unflagged) == 5
    ranged = export_frame(store, run_id, margin_range=(0.0, 1.0), **RAW)
    assert ranged["margin"].tolist() == [0.75, 0.5, 0.25, 0.0]  # inclusive, effective margin
    with pytest.raises(ValueError, match="low <= high"):
        export_frame(store, run_id, margin_range=(1.0, 0.0))


def test_export_bins(store: Store, reviewed) -> None:
    run_id, _, _ = reviewed
    binned = export_frame(store, run_id, bins=3, provenance=True, exclude_flagged=False)
    check_trl_columns(binned)
    assert binned["margin_unscaled"].tolist() == EXPECTED_MARGIN
    # Thirds of |m| (0, 0.25 | 0.5, 0.75 | 2, 3) with the sign: -2 stays on the harmful side.
    assert binned["margin"].tolist() == [1.0, 1.0, 0.0, -2.0, 2.0, 0.0]
    assert "margin_unscaled" not in export_frame(store, run_id, bins=3).columns
    with pytest.raises(ValueError, match="bins"):
        export_frame(store, run_id, bins=1)


def test_unfinished_run_exports_only_margined_pairs(store: Store, tmp_path: Path) -> None:
    pairs = [PreferencePair(f"p{i}", f"c{i}", f"r{i}") for i in range(4)]
    dataset_id = store.add_dataset("d", pairs)
    direction = Direction(np.ones(4, np.float32), "tiny", 1, "mean", "chat", "pca")
    run_id = store.start_run(dataset_id, store.add_direction(direction), {})
    first = store.pairs_missing_margins(run_id, limit=2)
    store.add_margins(run_id, [p.id for p in first], [0.5, -0.5])
    # An override gives a pair without a computed margin a margin too.
    last = store.pairs_missing_margins(run_id)[-1]
    store.add_review(last.id, "ann", "override", 2.0, run_id=run_id)
    manifest = export_dataset(store, run_id, tmp_path / "partial.jsonl")
    assert manifest["counts"]["rows"] == 3
    assert manifest["counts"]["missing_margin_excluded"] == 1
    frame = export_frame(store, run_id, **RAW)
    assert frame["margin"].tolist() == [0.5, -0.5, 2.0]


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_export_reimport_round_trip(store: Store, reviewed, tmp_path: Path, suffix: str) -> None:
    run_id, _, pairs = reviewed
    before = export_frame(store, run_id, **RAW)
    out = tmp_path / f"export.{suffix}"
    manifest = export_dataset(store, run_id, out, **RAW)
    assert manifest["format"] == suffix and out.exists()

    report = read_pairs(out)
    assert report.format == "trl"
    assert [p.prompt for p in report.pairs] == [p.prompt for p in pairs]
    assert [(p.chosen, p.rejected) for p in report.pairs] == list(
        zip(before["chosen"], before["rejected"], strict=True)
    )
    assert [float(p.meta["margin"]) for p in report.pairs] == EXPECTED_MARGIN
    # ... and through the store again: same pairs, margins kept in meta.
    dataset_id, _ = store.import_file(out, name=f"re-{suffix}")
    again = store.dataset_frame(dataset_id)
    assert again["chosen"].tolist() == before["chosen"].tolist()
    assert again["rejected"].tolist() == before["rejected"].tolist()
    assert [float(m["margin"]) for m in again["meta"]] == EXPECTED_MARGIN
    # Pair 1 came back swapped; pair 0 carries the override.
    assert (again["chosen"][1], again["rejected"][1]) == (pairs[1].rejected, pairs[1].chosen)
    assert float(again["meta"][0]["margin"]) == 0.75  # CSV gives text, the others floats


def test_exported_floats_are_exact(store: Store, tmp_path: Path) -> None:
    values = [0.1, 1 / 3, -1e-300, 123456.789012345678, np.nextafter(1.0, 2.0)]
    dataset_id = store.add_dataset("d", [PreferencePair(f"p{i}", "c", "r") for i in range(5)])
    direction = Direction(np.ones(4, np.float32), "tiny", 1, "mean", "chat", "pca")
    run_id = store.start_run(dataset_id, store.add_direction(direction), {})
    store.add_margins(run_id, [p.id for p in store.pairs_missing_margins(run_id)], values)
    for suffix in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"x.{suffix}"
        export_dataset(store, run_id, out, **RAW)
        got = [float(p.meta["margin"]) for p in read_pairs(out).pairs]
        assert got == [float(v) for v in values], suffix


def test_manifest(store: Store, reviewed, tmp_path: Path) -> None:
    run_id, _, _ = reviewed
    out = tmp_path / "sub" / "train.jsonl"
    manifest = export_dataset(
        store, run_id, out, provenance=True, exclude_flagged=True, margin_range=(-5, 5), bins=2
    )
    on_disk = json.loads(Path(f"{out}.manifest.json").read_text(encoding="utf-8"))
    assert on_disk == manifest
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["bytes"] == out.stat().st_size
    assert manifest["legend_version"] == __version__
    assert manifest["counts"] == {
        "pairs_in_dataset": 6,
        "missing_margin_excluded": 0,
        "disputed_excluded": 0,
        "flagged_excluded": 1,
        "out_of_range_excluded": 0,
        "rows": 5,
        "flipped": 1,
        "overridden": 1,
        "flagged": 0,
        "disputed": 0,
        "label_admin": 0,
        "label_unanimous": 0,
        "label_majority": 0,
        "label_single": 3,
        "label_disputed": 0,
        "label_none": 2,
    }
    assert manifest["filters"] == {
        "provenance": True,
        "reviewed_only": False,
        "exclude_flagged": True,
        "margin_range": [-5, 5],
        "include_disputed": False,
        "scale": "bins",
        "bins": 2,
    }
    assert manifest["reviews"] == {"policy": POLICY_TEXT, "admins": []}
    assert manifest["margin"]["scale"] == "bins"
    assert manifest["margin"]["parameters"] == {"bins": 2, "edges": [0.5]}
    direction = manifest["direction"]
    assert (direction["model"], direction["layer"], direction["method"]) == ("tiny", 3, "mean_diff")
    assert "vector" not in direction and direction["dim"] == 8
    assert manifest["run"]["settings"] == {"layer": 3} and manifest["run"]["status"] == "finished"
    assert manifest["dataset"]["n_pairs"] == 6
    assert manifest["columns"][:5] == [
        "prompt",
        "chosen",
        "rejected",
        "margin",
        "margin_unscaled",
    ]
    assert len(out.read_text(encoding="utf-8").splitlines()) == 5


def test_export_format_errors(store: Store, reviewed, tmp_path: Path) -> None:
    run_id, _, _ = reviewed
    with pytest.raises(ValueError, match="cannot tell"):
        export_dataset(store, run_id, tmp_path / "x.txt")
    with pytest.raises(ValueError, match="unknown export format"):
        export_dataset(store, run_id, tmp_path / "x.jsonl", format="xml")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown export options"):
        export_dataset(store, run_id, tmp_path / "x.jsonl", exclude_flaged=True)
    export_dataset(store, run_id, tmp_path / "data.out", format="csv")
    assert not list(tmp_path.glob(".x.jsonl.*"))  # no temporary files left behind


def test_huggingface_datasets_loads_the_export(store: Store, reviewed, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    run_id, _, _ = reviewed
    for suffix, builder in (("jsonl", "json"), ("parquet", "parquet")):
        out = tmp_path / f"train.{suffix}"
        export_dataset(store, run_id, out, provenance=True, **RAW)
        ds = datasets.load_dataset(
            builder, data_files=str(out), split="train", cache_dir=str(tmp_path / "hf")
        )
        assert ds.num_rows == 6
        assert ds.features["margin"].dtype == "float64"
        for column in ("prompt", "chosen", "rejected"):
            assert ds.features[column].dtype in ("string", "large_string")
        assert ds["margin"] == EXPECTED_MARGIN


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_trl_reward_trainer_accepts_the_export(
    store: Store, reviewed, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """One optimisation step of TRL's RewardTrainer on the export, margin in the batch."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_id, _, _ = reviewed
    out = tmp_path / "train.jsonl"
    export_dataset(store, run_id, out, **RAW)
    ds = datasets.load_dataset(
        "json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf")
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = trl.RewardConfig(
        output_dir=str(tmp_path / "rm"),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        max_length=256,
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = trl.RewardTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tokenizer
    )
    assert "margin" in trainer.train_dataset.column_names
    batch = next(iter(trainer.get_train_dataloader()))
    assert "margin" in batch and batch["margin"].shape == (2,)
    assert set(batch["margin"].tolist()) <= set(EXPECTED_MARGIN)
    result = trainer.train()
    assert np.isfinite(result.training_loss)


# --- several annotators: the review policy applied (legend_core.review.policy) ---------------


@pytest.fixture
def fresh_run(store: Store) -> tuple[int, int, list[int]]:
    """A data set of four pairs with margins 1, 2, -3, 4: (data set, run, pair ids)."""
    pairs = [PreferencePair(f"p{i}", f"chosen {i}", f"rejected {i}") for i in range(4)]
    dataset_id = store.add_dataset("team", pairs)
    direction = Direction(np.ones(4, np.float32), "tiny", 1, "last", "alpaca", "mean_diff")
    run_id = store.start_run(dataset_id, store.add_direction(direction), {"dtype": "float32"})
    ids = [p.id for p in store.pairs_missing_margins(run_id)]
    store.add_margins(run_id, ids, [1.0, 2.0, -3.0, 4.0])
    return dataset_id, run_id, ids


def rows_by_prompt(frame: pd.DataFrame) -> dict[str, dict]:
    return {r["prompt"]: r for r in frame.to_dict("records")}


def test_two_annotators_who_flip_export_the_pair_swapped(store: Store, fresh_run) -> None:
    _, run_id, ids = fresh_run
    store.add_review(ids[0], "ann", "flip", run_id=run_id)
    store.add_review(ids[0], "bob", "flip", run_id=run_id)
    # One annotator: flip, then accept: the latest verdict, as imported.
    store.add_review(ids[1], "ann", "flip", run_id=run_id)
    store.add_review(ids[1], "ann", "accept", run_id=run_id)
    # Override, then flip: the flip stands, the computed margin relative to the new chosen.
    store.add_review(ids[2], "bob", "override", 5.0, run_id=run_id)
    store.add_review(ids[2], "bob", "flip", run_id=run_id)
    rows = rows_by_prompt(export_frame(store, run_id, scale="none", provenance=True))
    assert (rows["p0"]["chosen"], rows["p0"]["rejected"]) == ("rejected 0", "chosen 0")
    assert rows["p0"]["margin"] == -1.0 and rows["p0"]["label_source"] == "unanimous"
    assert rows["p0"]["decided_by"] == "ann, bob" and rows["p0"]["n_verdicts"] == 2
    assert (rows["p1"]["chosen"], rows["p1"]["margin"]) == ("chosen 1", 2.0)
    assert (rows["p2"]["chosen"], rows["p2"]["margin"]) == ("rejected 2", 3.0)
    assert np.isnan(rows["p2"]["reviewed_margin"]) and rows["p2"]["computed_margin"] == 3.0


def test_a_tie_is_disputed_and_left_out_unless_asked(store: Store, fresh_run, tmp_path) -> None:
    _, run_id, ids = fresh_run
    store.add_review(ids[3], "ann", "flip", run_id=run_id)
    store.add_review(ids[3], "bob", "override", 2.5, run_id=run_id)
    frame = export_frame(store, run_id, scale="none")
    assert "p3" not in set(frame["prompt"]) and len(frame) == 3
    manifest = export_dataset(store, run_id, tmp_path / "out.jsonl", scale="none")
    assert manifest["counts"]["disputed_excluded"] == 1 and manifest["counts"]["rows"] == 3
    assert manifest["filters"]["include_disputed"] is False
    assert "disputed" in manifest["reviews"]["policy"]
    # Asked for: exported as imported with the computed margin, and marked.
    kept = export_frame(store, run_id, scale="none", include_disputed=True, provenance=True)
    row = rows_by_prompt(kept)["p3"]
    assert (row["chosen"], row["margin"], row["disputed"]) == ("chosen 3", 4.0, True)
    assert row["label_source"] == "disputed" and row["decided_by"] == ""
    manifest = export_dataset(
        store, run_id, tmp_path / "all.jsonl", scale="none", include_disputed=True
    )
    assert manifest["counts"]["disputed"] == 1 and "disputed_excluded" not in manifest["counts"]


def test_an_admin_verdict_wins_over_the_majority(store: Store, fresh_run, tmp_path) -> None:
    _, run_id, ids = fresh_run
    for name in ("ann", "bob"):
        store.add_review(ids[0], name, "flip", run_id=run_id)
    store.add_review(ids[0], "ada", "override", 0.5, run_id=run_id)
    as_voters = rows_by_prompt(export_frame(store, run_id, scale="none", provenance=True))
    assert as_voters["p0"]["label_source"] == "majority"
    assert as_voters["p0"]["chosen"] == "rejected 0"
    judged = export_frame(store, run_id, scale="none", provenance=True, admins={"ada"})
    row = rows_by_prompt(judged)["p0"]
    assert (row["chosen"], row["margin"], row["reviewed_margin"]) == ("chosen 0", 0.5, 0.5)
    assert (row["label_source"], row["decided_by"]) == ("admin", "ada")
    manifest = export_dataset(store, run_id, tmp_path / "a.jsonl", admins={"ada"})
    assert manifest["reviews"]["admins"] == ["ada"] and manifest["counts"]["label_admin"] == 1


def test_withdraw_in_exports(store: Store, fresh_run) -> None:
    _, run_id, ids = fresh_run
    store.add_review(ids[1], "ann", "flip", run_id=run_id)
    store.add_review(ids[1], "bob", "accept", run_id=run_id)
    store.add_review(ids[1], "bob", "withdraw", run_id=run_id)
    row = rows_by_prompt(export_frame(store, run_id, scale="none", provenance=True))["p1"]
    assert (row["chosen"], row["margin"], row["label_source"]) == ("rejected 1", -2.0, "single")
    store.add_review(ids[1], "ann", "withdraw", run_id=run_id)
    assert len(export_frame(store, run_id, scale="none", reviewed_only=True)) == 0


def test_reviews_made_on_one_run_export_with_the_next(store: Store, fresh_run) -> None:
    """Another dtype of the same data set and direction is a new run: it exports the
    reviews made on the first."""
    dataset_id, run_a, ids = fresh_run
    store.add_review(ids[0], "ann", "flip", run_id=run_a)
    store.add_review(ids[1], "ann", "override", 9.0, run_id=run_a)
    direction_id = store.get_run(run_a).direction_id
    run_b = store.start_run(dataset_id, direction_id, {"dtype": "bfloat16"})
    assert run_b != run_a
    store.add_margins(run_b, ids, [1.25, 2.25, -3.25, 4.25])
    rows = rows_by_prompt(export_frame(store, run_b, scale="none", reviewed_only=True))
    assert set(rows) == {"p0", "p1"}
    assert (rows["p0"]["chosen"], rows["p0"]["margin"]) == ("rejected 0", -1.25)
    assert rows["p1"]["margin"] == 9.0
