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
from legend_core.directions import Direction
from legend_core.exports import export_dataset, export_frame
from legend_core.formats import read_pairs, write_pairs
from legend_core.store import Store
from legend_core.types import PreferencePair
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

    Pair 0 is overridden to 0.75, pair 1 flipped, pair 2 flipped twice (back), pair 3
    flagged, pair 4 flagged then unflagged, pair 5 untouched.
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
    store.add_review(ids[2], "ann", "flip", run_id=run_id)
    store.add_review(ids[2], "bob", "flip", run_id=run_id)
    store.add_review(ids[3], "bob", "flag", run_id=run_id)
    store.add_review(ids[4], "bob", "flag", run_id=run_id)
    store.add_review(ids[4], "ann", "unflag", run_id=run_id)
    return run_id, ids, pairs


EXPECTED_MARGIN = [0.75, 0.5, 0.25, -2.0, 3.0, 0.0]


def check_trl_columns(frame: pd.DataFrame) -> None:
    assert list(frame.columns[:4]) == ["prompt", "chosen", "rejected", "margin"]
    for column in ("prompt", "chosen", "rejected"):
        assert pd.api.types.is_string_dtype(frame[column])
        assert all(isinstance(x, str) for x in frame[column])
    assert frame["margin"].dtype == np.float64
    assert frame["margin"].notna().all() and np.isfinite(frame["margin"]).all()


def test_export_frame_applies_reviews(store: Store, reviewed) -> None:
    run_id, ids, pairs = reviewed
    frame = export_frame(store, run_id)
    check_trl_columns(frame)
    assert list(frame.columns) == ["prompt", "chosen", "rejected", "margin"]
    assert frame["margin"].tolist() == EXPECTED_MARGIN
    assert frame["prompt"].tolist() == [p.prompt for p in pairs]
    # Pair 1 is flipped: swapped texts, negated margin. Pair 2 was flipped back.
    assert (frame["chosen"][1], frame["rejected"][1]) == (pairs[1].rejected, pairs[1].chosen)
    assert (frame["chosen"][2], frame["rejected"][2]) == (pairs[2].chosen, pairs[2].rejected)


def test_export_frame_provenance(store: Store, reviewed) -> None:
    run_id, ids, _ = reviewed
    frame = export_frame(store, run_id, provenance=True)
    check_trl_columns(frame)
    assert frame["pair_id"].tolist() == ids
    assert frame["computed_margin"].tolist() == [1.5, 0.5, 0.25, -2.0, 3.0, 0.0]
    assert frame["reviewed_margin"][0] == 0.75 and frame["reviewed_margin"][1:].isna().all()
    assert frame["flipped"].tolist() == [False, True, False, False, False, False]
    assert frame["flagged"].tolist() == [False, False, False, True, False, False]
    assert frame["annotator"].tolist() == ["ann", "ann", "bob", "bob", "ann", ""]
    assert set(frame["model"]) == {"tiny"} and set(frame["layer"]) == {3}
    assert frame["direction_id"].nunique() == 1


def test_export_filters(store: Store, reviewed) -> None:
    run_id, ids, _ = reviewed
    assert len(export_frame(store, run_id, reviewed_only=True)) == 5
    unflagged = export_frame(store, run_id, exclude_flagged=True, provenance=True)
    assert ids[3] not in unflagged["pair_id"].tolist() and len(unflagged) == 5
    ranged = export_frame(store, run_id, margin_range=(0.0, 1.0))
    assert ranged["margin"].tolist() == [0.75, 0.5, 0.25, 0.0]  # inclusive, effective margin
    with pytest.raises(ValueError, match="low <= high"):
        export_frame(store, run_id, margin_range=(1.0, 0.0))


def test_export_bins(store: Store, reviewed) -> None:
    run_id, _, _ = reviewed
    binned = export_frame(store, run_id, bins=3, provenance=True)
    check_trl_columns(binned)
    assert binned["margin_continuous"].tolist() == EXPECTED_MARGIN
    assert set(binned["margin"]) == {0.0, 1.0, 2.0}
    # Bins follow the order of the margins.
    order = np.argsort(binned["margin_continuous"].to_numpy(), kind="stable")
    assert np.all(np.diff(binned["margin"].to_numpy()[order]) >= 0)
    assert "margin_continuous" not in export_frame(store, run_id, bins=3).columns
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
    frame = export_frame(store, run_id)
    assert frame["margin"].tolist() == [0.5, -0.5, 2.0]


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_export_reimport_round_trip(store: Store, reviewed, tmp_path: Path, suffix: str) -> None:
    run_id, _, pairs = reviewed
    before = export_frame(store, run_id)
    out = tmp_path / f"export.{suffix}"
    manifest = export_dataset(store, run_id, out)
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
        export_dataset(store, run_id, out)
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
        "flagged_excluded": 1,
        "out_of_range_excluded": 0,
        "rows": 5,
        "flipped": 1,
        "overridden": 1,
        "flagged": 0,
    }
    assert manifest["filters"] == {
        "provenance": True,
        "reviewed_only": False,
        "exclude_flagged": True,
        "margin_range": [-5, 5],
        "bins": 2,
    }
    assert manifest["margin"]["binned"] and len(manifest["margin"]["bin_edges"]) == 1
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
        "margin_continuous",
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
        export_dataset(store, run_id, out, provenance=True)
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
    export_dataset(store, run_id, out)
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
