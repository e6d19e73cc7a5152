"""Hostile input through the store: refused files change nothing, odd text survives intact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from legend_core.data.exports import export_dataset
from legend_core.data.formats import FormatError, read_pairs
from legend_core.data.store import Store
from legend_core.method.directions import Direction
from legend_core.types import PreferencePair

HOSTILE = Path(__file__).resolve().parent / "hostile"
EXPECTED_FILE = HOSTILE / "EXPECTED.json"
EXPECTED: dict[str, dict] = (
    json.loads(EXPECTED_FILE.read_text(encoding="utf-8")) if EXPECTED_FILE.exists() else {}
)
XSS = Path(__file__).resolve().parent / "xss" / "xss_pairs.jsonl"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """One store holding one good data set; every hostile file is tried against it."""
    s = Store(f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'legend.db'}")
    s.add_dataset("good", [PreferencePair("p", "c", "r")])
    yield s
    s.close()


def test_hostile_files_are_listed() -> None:
    assert len(EXPECTED) >= 40, "tests/hostile/EXPECTED.json is missing or nearly empty"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_file_is_refused_and_changes_nothing(store: Store, name: str) -> None:
    expected = EXPECTED[name]
    before = store.counts()
    with pytest.raises(FormatError) as info:
        store.import_file(HOSTILE / name, format=expected["format"], name=f"hostile {name}")
    err = info.value
    assert expected["contains"] in str(err)
    assert (err.line, err.field) == (expected["line"], expected["field"])
    assert Path(err.path).name == name
    assert store.counts() == before
    assert [d.name for d in store.list_datasets()] == ["good"]


def test_import_respects_max_bytes(store: Store, tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"prompt": "p", "chosen": "c" * 5000, "rejected": "r"}) + "\n")
    before = store.counts()
    with pytest.raises(FormatError, match="max_bytes"):
        store.import_file(big, max_bytes=1000)
    assert store.counts() == before


def test_markup_and_odd_text_are_stored_and_exported_verbatim(tmp_path: Path) -> None:
    """HTML, markdown, SQL, control characters and huge texts are data, never interpreted."""
    store = Store(f"sqlite:///{tmp_path / 'odd.db'}")
    dataset_id, report = store.import_file(XSS)
    weird = [
        PreferencePair("'; DROP TABLE pairs; --", 'Robert"); DELETE FROM reviews;--', "%s %(x)s ?"),
        PreferencePair("ﷺ \u202e evil \u202c", "emoji 👩‍👩‍👧 and \t tabs \r\n", "\\x00 not a nul"),
        PreferencePair("long", "x" * 2_000_000, "y"),
    ]
    weird_id = store.add_dataset("weird; DROP TABLE datasets", weird)
    assert store.dataset_frame(weird_id)["chosen"].tolist() == [p.chosen for p in weird]
    assert store.dataset_frame(dataset_id)["chosen"].tolist() == [p.chosen for p in report.pairs]
    names = {d.name for d in store.list_datasets()}
    assert names == {"xss_pairs", "weird; DROP TABLE datasets"}

    direction = Direction(np.ones(4, np.float32), "tiny", 1, "last", "alpaca", "mean_diff")
    run_id = store.start_run(weird_id, store.add_direction(direction), {"<script>": "x"})
    store.add_margins(run_id, [p.id for p in store.pairs_missing_margins(run_id)], [1, -1, 0])
    pair_id = store.review_queue(run_id)[0]
    store.add_review(pair_id, "<img src=x onerror=alert(1)>", "flag", note="'); --", run_id=run_id)
    (review,) = store.pair_history(pair_id)
    assert (review.annotator, review.note) == ("<img src=x onerror=alert(1)>", "'); --")
    out = tmp_path / "weird.jsonl"
    export_dataset(store, run_id, out, exclude_flagged=False)  # the flagged pair too
    back = read_pairs(out).pairs
    assert {(p.prompt, p.chosen, p.rejected) for p in back} == {
        (p.prompt, p.chosen, p.rejected) for p in weird
    }
    store.close()
