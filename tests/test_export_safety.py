"""Exports safe to open: CSV cells a spreadsheet would run as formulas open as text (and
numbers stay numbers); export files appear whole or not at all."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from legend_core.app import downloads
from legend_core.data import exports
from legend_core.data.exports import export_dataset, export_frame
from legend_core.data.store import Store
from legend_core.method.directions import Direction
from legend_core.types import PreferencePair

RISKY = ['=HYPERLINK("http://evil.example","click")', "+1", "-2+3", "@SUM(A1:A2)", "\tx", "\rx"]
SAFE = ["plain text", " =not at the start", "2 + 2", ""]
MARGINS = [-1.5, 0.25, -0.001, 2.0, -3.0, 0.5, 1.0, -0.75, 0.125, -2.5]


@pytest.fixture
def run(tmp_path: Path):
    """A store with one finished run over pairs whose texts start like formulas."""
    texts = RISKY + ["'quoted already"] + SAFE[:3]
    pairs = [PreferencePair(texts[i], texts[(i + 1) % 10], texts[(i + 2) % 10]) for i in range(10)]
    with Store(f"sqlite:///{tmp_path / 'legend.db'}") as store:
        dataset_id = store.add_dataset("formulas", pairs)
        direction = Direction(np.ones(8, np.float32), "=model", 3, "last", "alpaca", "mean_diff")
        run_id = store.start_run(dataset_id, store.add_direction(direction), {"layer": 3})
        ids = [p.id for p in store.pairs_missing_margins(run_id)]
        store.add_margins(run_id, ids, MARGINS)
        store.finish_run(run_id)
        store.add_review(ids[0], "@annotator", "flag", run_id=run_id)
        yield store, run_id, pairs


def read_csv_cells(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def check_neutralised(rows: list[dict[str, str]], frame: pd.DataFrame) -> int:
    """Every text cell of the CSV is the frame's text, quoted when risky; returns how many."""
    quoted = 0
    for row, (_, want) in zip(rows, frame.iterrows(), strict=True):
        for column in ("prompt", "chosen", "rejected"):
            cell, text = row[column], want[column]
            if text.startswith(("=", "+", "-", "@", "\t", "\r", "'")):
                assert cell == "'" + text, (column, cell)
                quoted += 1
            else:
                assert cell == text
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    return quoted


def test_csv_export_opens_formula_cells_as_text(run, tmp_path: Path) -> None:
    store, run_id, _ = run
    path = tmp_path / "out.csv"
    manifest = export_dataset(store, run_id, path, exclude_flagged=False)
    frame = export_frame(store, run_id, exclude_flagged=False)
    assert len(frame) == 10
    rows = read_csv_cells(path.read_bytes())
    quoted = check_neutralised(rows, frame)
    assert quoted == 3 * 7  # 6 risky texts and one quoted one, in each of the 3 columns
    # Margins stay numbers, negative ones included: written bare, equal to the frame's.
    margins = [float(r["margin"]) for r in rows]
    assert margins == frame["margin"].tolist() and min(margins) < 0
    assert all(not r["margin"].startswith("'") for r in rows)
    assert pd.read_csv(path)["margin"].dtype == np.float64
    guard = manifest["csv_formula_guard"]
    assert guard["cells"] == quoted == sum(guard["by_column"].values())
    assert guard["by_column"] == {"prompt": 7, "chosen": 7, "rejected": 7}
    assert "'" in guard["rule"] and "JSONL and Parquet keep the exact text" in guard["rule"]
    on_disk = json.loads(Path(f"{path}.manifest.json").read_text(encoding="utf-8"))
    assert on_disk["csv_formula_guard"] == guard


def test_provenance_text_columns_are_neutralised_too(run, tmp_path: Path) -> None:
    store, run_id, _ = run
    path = tmp_path / "audit.csv"
    manifest = export_dataset(store, run_id, path, provenance=True, exclude_flagged=False)
    frame = export_frame(store, run_id, provenance=True, exclude_flagged=False)
    rows = read_csv_cells(path.read_bytes())
    assert {r["model"] for r in rows} == {"'=model"}  # the direction's model name
    assert manifest["csv_formula_guard"]["by_column"]["model"] == 10
    for column in frame.columns:
        cells = [r[column] for r in rows]
        if pd.api.types.is_numeric_dtype(frame[column]) and frame[column].dtype != bool:
            got = [float(c) if c else float("nan") for c in cells]  # numbers, not text
            assert np.allclose(got, frame[column].astype(float), equal_nan=True), column
        else:
            assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_jsonl_and_parquet_keep_the_exact_text(run, tmp_path: Path, fmt: str) -> None:
    store, run_id, _ = run
    path = tmp_path / f"out.{fmt}"
    manifest = export_dataset(store, run_id, path, exclude_flagged=False)
    if fmt == "jsonl":
        back = pd.DataFrame([json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()])
    else:
        back = pd.read_parquet(path)
    frame = export_frame(store, run_id, exclude_flagged=False)
    assert back["prompt"].tolist() == frame["prompt"].tolist()
    assert set(RISKY) <= set(back["prompt"])
    assert "csv_formula_guard" not in manifest


def test_app_download_bytes_are_neutralised(run) -> None:
    store, run_id, _ = run
    result = downloads.export_file(store, run_id, "csv", "=evil name", exclude_flagged=False)
    assert not result.file_name.startswith("=")
    frame = export_frame(store, run_id, exclude_flagged=False)
    assert check_neutralised(read_csv_cells(result.data), frame) == 21
    assert result.manifest["csv_formula_guard"]["cells"] == 21
    assert json.loads(result.manifest_bytes)["csv_formula_guard"]["cells"] == 21


def test_csv_safe_leaves_numbers_and_missing_values(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "text": ["-1", "ok", "=1+1"],
            "mixed": pd.Series([None, 3, "+x"], dtype=object),
            "margin": [-1.0, float("nan"), 2.0],
            "flag": [True, False, True],
        }
    )
    safe, changed = exports.csv_safe(frame)
    assert changed == {"text": 2, "mixed": 1}
    assert safe["text"].tolist() == ["'-1", "ok", "'=1+1"]
    assert safe["mixed"].tolist()[1:] == [3, "'+x"] and safe["mixed"][0] is None
    assert safe["margin"].equals(frame["margin"]) and safe["flag"].equals(frame["flag"])
    assert frame["text"].tolist() == ["-1", "ok", "=1+1"]  # the input is not changed


# --------------------------------------------------------------------------- atomic
def test_a_failed_export_leaves_no_file_and_keeps_the_previous_one(
    run, tmp_path: Path, monkeypatch
) -> None:
    store, run_id, _ = run
    fresh = tmp_path / "fresh" / "out.csv"
    kept = tmp_path / "kept.csv"
    export_dataset(store, run_id, kept, exclude_flagged=False)
    before = kept.read_bytes(), Path(f"{kept}.manifest.json").read_bytes()
    real_write = exports._write

    def crash_midway(frame: pd.DataFrame, path: Path, fmt: str) -> None:
        real_write(frame.head(3), path, fmt)  # half a file on disk, then the crash
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exports, "_write", crash_midway)
    for target in (fresh, kept):
        with pytest.raises(OSError, match="No space left"):
            export_dataset(store, run_id, target, exclude_flagged=False)
    assert not fresh.exists() and not Path(f"{fresh}.manifest.json").exists()
    assert list(fresh.parent.iterdir()) == []  # no temporary file left behind either
    assert (kept.read_bytes(), Path(f"{kept}.manifest.json").read_bytes()) == before
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("legend.db"))
    assert names == ["fresh", "kept.csv", "kept.csv.manifest.json"]
