"""Compressed data files (.gz, .bz2, .xz) import as downloaded: the same pairs and the same
line-and-field errors as the plain file, and a decompression bomb refused before parsing."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import tracemalloc
from pathlib import Path

import pytest

from legend_core.cli import main
from legend_core.data.files import DEFAULT_MAX_BYTES, data_file_stem
from legend_core.data.formats import FormatError, read_contrast_set, read_pairs
from legend_core.data.store import Store
from legend_core.types import PreferencePair
from tests.conftest import HH_DEV

HOSTILE = Path(__file__).parent / "hostile"
EXPECTED = json.loads((HOSTILE / "EXPECTED.json").read_text(encoding="utf-8"))
HH_DEV_GZ = HH_DEV.with_name("dev.jsonl.gz")
COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}

ROWS = [
    {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
    {"prompt": "2+2?", "chosen": "4, of course", "rejected": 'I think "5"', "id": 7},
    {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},  # a duplicate
    {"prompt": "Ünïcode ✓", "chosen": "", "rejected": "tab\there"},  # an empty response
]


def plain_file(folder: Path, kind: str) -> Path:
    """ROWS as a .jsonl, .json (array), .csv or .tsv file."""
    path = folder / f"pairs.{kind}"
    if kind == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS)
    elif kind == "json":
        text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\n]\n"
    else:
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out, delimiter="," if kind == "csv" else "\t", lineterminator="\n")
        writer.writerow(["prompt", "chosen", "rejected"])
        writer.writerows([r["prompt"], r["chosen"], r["rejected"]] for r in ROWS)
        text = out.getvalue()
    path.write_text(text, encoding="utf-8")
    return path


def compressed(path: Path, suffix: str) -> Path:
    """A copy of ``path`` compressed, named ``path`` + ``suffix``."""
    target = path.with_name(path.name + suffix)
    target.write_bytes(COMPRESS[suffix](path.read_bytes()))
    return target


@pytest.fixture
def store(tmp_path: Path):
    with Store(f"sqlite:///{tmp_path / 'legend.db'}") as s:
        s.add_dataset("good", [PreferencePair("p", "c", "r")])
        yield s


# --------------------------------------------------------------------------- same pairs
@pytest.mark.parametrize("suffix", list(COMPRESS))
@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "tsv"])
def test_compressed_file_reads_as_the_plain_file(tmp_path: Path, kind: str, suffix: str) -> None:
    plain = plain_file(tmp_path, kind)
    packed = compressed(plain, suffix)
    assert packed.stat().st_size != plain.stat().st_size
    want, got = read_pairs(plain), read_pairs(packed)
    assert got.pairs == want.pairs and len(got.pairs) == len(ROWS)
    assert (got.format, got.rows_read) == (want.format, want.rows_read)
    assert got.warnings == want.warnings and got.warnings  # line numbers of the text
    assert got.duplicates == want.duplicates and got.duplicates


def test_store_and_cli_import_a_gzip_file_as_the_plain_one(tmp_path: Path, capsys) -> None:
    plain = plain_file(tmp_path, "jsonl")
    packed = compressed(plain, ".gz")
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["import", str(packed), "--db", url]) == 0
    assert f"data set 1: {len(ROWS)} pairs (trl)" in capsys.readouterr().out
    with Store(url) as s:
        plain_id, _ = s.import_file(plain)
        (first, second) = s.list_datasets()
        assert (first.name, second.name) == ("pairs", "pairs (2)")  # no ".jsonl" left in it
        columns = ["prompt", "chosen", "rejected", "meta"]
        a, b = s.dataset_frame(first.id)[columns], s.dataset_frame(plain_id)[columns]
        assert a.equals(b)


def test_contrast_set_reads_compressed(tmp_path: Path) -> None:
    plain = tmp_path / "contrast.csv"
    plain.write_text("instruction,harmful,harmless\nDo x,Sure: x,No.\n", encoding="utf-8")
    assert read_contrast_set(compressed(plain, ".bz2")) == read_contrast_set(plain)


def test_data_file_stem() -> None:
    assert data_file_stem("a/dev.jsonl.gz") == "dev"
    assert data_file_stem("pairs.CSV.bz2") == "pairs"
    assert data_file_stem("pairs.tsv") == "pairs"
    assert data_file_stem("odd.name.gz") == "odd.name"


@pytest.mark.skipif(not HH_DEV_GZ.exists(), reason=f"shared data not present: {HH_DEV_GZ}")
def test_hh_rlhf_dev_jsonl_gz_imports(store: Store) -> None:
    report = read_pairs(HH_DEV_GZ)
    assert (report.format, report.rows_read) == ("hh-rlhf", 1156)
    if HH_DEV.exists():  # the same rows as the uncompressed copy beside it
        plain = read_pairs(HH_DEV)
        assert report.pairs == plain.pairs and report.warnings == plain.warnings
    dataset_id, _ = store.import_file(HH_DEV_GZ)
    info = store.get_dataset(dataset_id)
    assert (info.name, info.n_pairs, info.format) == ("dev", 1156, "hh-rlhf")


def test_data_page_imports_an_uploaded_gzip_file(monkeypatch, tmp_path: Path) -> None:
    from tests.app_support import app, button, goto, problems

    url = f"sqlite:///{tmp_path / 'app.db'}"
    packed = compressed(plain_file(tmp_path, "jsonl"), ".gz")
    at = goto(app(monkeypatch, url).run(), "data")
    at.get("file_uploader")[0].upload(packed.name, packed.read_bytes()).run()
    assert not problems(at)
    assert any(f"Detected format: trl · {len(ROWS)} pairs" in s.value for s in at.success)
    name = next(t for t in at.text_input if t.key.startswith("pairs_name_"))
    assert name.value == "pairs"
    button(at, "Import").click().run()
    assert not problems(at)
    with Store(url) as s:
        (info,) = s.list_datasets()
        assert (info.name, info.n_pairs, info.format) == ("pairs", len(ROWS), "trl")


# --------------------------------------------------------------------------- same errors
TEXT_CASES = sorted(n for n in EXPECTED if not n.endswith(".parquet"))


@pytest.mark.parametrize("suffix", [".gz", ".bz2"])
@pytest.mark.parametrize("name", TEXT_CASES)
def test_compressed_hostile_file_gives_the_same_error(tmp_path: Path, name: str, suffix) -> None:
    case = EXPECTED[name]
    packed = tmp_path / (name + suffix)
    packed.write_bytes(COMPRESS[suffix]((HOSTILE / name).read_bytes()))
    with pytest.raises(FormatError) as info:
        read_pairs(packed, format=case["format"])
    error = info.value
    assert (error.line, error.field) == (case["line"], case["field"]), str(error)
    assert case["contains"] in str(error) and error.path == str(packed)
    if error.line is not None:
        assert f"line {error.line}" in str(error)


def test_errors_count_lines_of_the_decompressed_text(tmp_path: Path) -> None:
    rows = [json.dumps(r) for r in ROWS[:2]] + ["", json.dumps({**ROWS[0], "chosen": 3})]
    packed = tmp_path / "bad.jsonl.gz"
    packed.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    with pytest.raises(FormatError, match=r"line 4, field 'chosen': expected a string"):
        read_pairs(packed)
    table = tmp_path / "bad.csv.xz"
    table.write_bytes(lzma.compress(b"prompt,chosen,rejected\na,b,c\nd,e\n"))
    with pytest.raises(FormatError, match=r"bad\.csv\.xz, line 3: the row has 2 fields"):
        read_pairs(table)


def test_misnamed_damaged_and_unreadable_archives_are_refused(tmp_path: Path) -> None:
    data = plain_file(tmp_path, "jsonl").read_bytes()
    cases = {
        "plain.jsonl.gz": (data, "named .gz but not gzip data (already decompressed?"),
        "packed.jsonl": (gzip.compress(data), "gzip archive (name it packed.jsonl.gz"),
        "twice.jsonl.gz": (gzip.compress(gzip.compress(data)), "compressed twice?"),
        "cut.jsonl.gz": (gzip.compress(data)[:-12], "the gzip data is damaged or cut short"),
        "cut.jsonl.bz2": (bz2.compress(data)[:40], "the bzip2 data is damaged or cut short"),
        "empty.jsonl.gz": (gzip.compress(b""), "the file is empty once decompressed"),
        "pairs.parquet.gz": (gzip.compress(b"PAR1"), "Parquet compresses its own data"),
        "pairs.jsonl.zst": (b"\x28\xb5\x2f\xfd" + data, "zstd archive"),
        "pairs.gz": (gzip.compress(data), "unsupported file type ''"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(FormatError) as info:
            read_pairs(tmp_path / name)
        assert message in str(info.value), name


# --------------------------------------------------------------------------- bombs
@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few MB of gzip expanding just past the default limit (512 MB): the same valid JSONL
    line over and over, written by a streaming writer (parsed, it would take gigabytes)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.jsonl.gz"
    line = (json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n").encode()
    block = line * ((1 << 20) // len(line))
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as out:
        for _ in range(DEFAULT_MAX_BYTES // len(block) + 16):
            out.write(block)
    assert path.stat().st_size < 4 * (1 << 20)
    return path


def test_gzip_bomb_is_refused_before_parsing_with_the_store_unchanged(
    store: Store, bomb: Path
) -> None:
    before = store.counts()
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as info:
            store.import_file(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert f"once decompressed, over the limit of {DEFAULT_MAX_BYTES} (max_bytes)" in message
    assert info.value.line is None  # refused before any line was parsed
    assert peak < 64 * (1 << 20), peak  # a block at a time, never the records
    assert store.counts() == before
    assert [d.name for d in store.list_datasets()] == ["good"]


def test_cli_refuses_a_bomb_in_one_line(tmp_path: Path, bomb: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["import", str(bomb), "--db", url]) == 2
    # The --pairs file of other commands goes through the same reader, before any model.
    out = str(tmp_path / "o.jsonl")
    assert main(["annotate", "--pairs", str(bomb), "--direction", "x", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("legend: error:") for e in err), err
    assert all("once decompressed, over the limit" in e for e in err)
    with Store(url) as s:
        assert s.counts()["datasets"] == 0
    assert not Path(out).exists()


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_size_limit_counts_decompressed_bytes(tmp_path: Path, suffix: str) -> None:
    plain = tmp_path / "many.jsonl"
    plain.write_text((json.dumps(ROWS[1]) + "\n") * 5000, encoding="utf-8")
    packed = compressed(plain, suffix)
    size = plain.stat().st_size
    assert packed.stat().st_size < size // 20
    with pytest.raises(FormatError, match="once decompressed, over the limit"):
        read_pairs(packed, max_bytes=size - 1)
    assert read_pairs(packed, max_bytes=size).rows_read == 5000
