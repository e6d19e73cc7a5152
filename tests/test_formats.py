"""Tests for legend_core.data.formats: real HH-RLHF data, every pair format, and hostile files."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from legend_core.data import files
from legend_core.data.formats import (
    ASSISTANT,
    FormatError,
    pairs_to_frame,
    read_contrast_set,
    read_pairs,
    split_hh_dialogue,
)
from legend_core.types import ContrastItem, PreferencePair
from tests.conftest import ADVBENCH, HH_DEV
from tests.pair_files import write_pairs

HOSTILE = Path(__file__).parent / "hostile"
EXPECTED = json.loads((HOSTILE / "EXPECTED.json").read_text(encoding="utf-8"))
XSS = Path(__file__).parent / "xss" / "xss_pairs.jsonl"
needs_shared = pytest.mark.skipif(not HH_DEV.exists(), reason="shared data not present")


def write_jsonl(path: Path, *rows: object) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def trl(prompt: str = "Hi?", chosen: str = "Hello.", rejected: str = "Go away.", **extra) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


# --------------------------------------------------------------------------- hostile corpus
def test_hostile_corpus_is_complete_and_small() -> None:
    files = {p.name for p in HOSTILE.iterdir() if p.name not in ("EXPECTED.json", "MAKE.py")}
    assert files == set(EXPECTED)
    assert len(files) >= 24
    for name, case in EXPECTED.items():
        assert set(case) == {"format", "line", "field", "contains"}, name
        assert (HOSTILE / name).stat().st_size < 20_000, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_file_is_refused(name: str) -> None:
    case = EXPECTED[name]
    with pytest.raises(FormatError) as info:
        read_pairs(HOSTILE / name, format=case["format"])
    error = info.value
    assert (error.line, error.field) == (case["line"], case["field"]), str(error)
    assert case["contains"] in str(error)
    assert name in str(error) and error.path.endswith(name)
    if error.line is not None:
        assert f"line {error.line}" in str(error) or f"row {error.line}" in str(error)
    if error.field is not None:
        assert f"'{error.field}'" in str(error)


def test_make_script_reproduces_the_corpus(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("hostile_make", HOSTILE / "MAKE.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for made in tmp_path.iterdir():
        if made.suffix != ".parquet":  # pyarrow writes its version into Parquet files
            assert made.read_bytes() == (HOSTILE / made.name).read_bytes(), made.name


# --------------------------------------------------------------------------- HH-RLHF
def test_split_hh_dialogue() -> None:
    chosen = "\n\nHuman: hi\n\nAssistant: Hello there."
    rejected = "\n\nHuman: hi\n\nAssistant:  Go away."
    assert split_hh_dialogue(chosen, rejected) == (
        "\n\nHuman: hi\n\nAssistant:",
        "Hello there.",
        "Go away.",
    )
    # A final response that itself holds an Assistant marker: a plain rfind would split there.
    tricky = "\n\nHuman: hi\n\nAssistant: Sure.\n\nAssistant: More."
    prompt, good, bad = split_hh_dialogue(tricky, rejected)
    assert prompt == "\n\nHuman: hi\n\nAssistant:" and good == "Sure.\n\nAssistant: More."
    empty = "\n\nHuman: hi\n\nAssistant: "
    assert split_hh_dialogue(empty, rejected) == ("\n\nHuman: hi\n\nAssistant:", "", "Go away.")
    same = split_hh_dialogue(chosen, chosen)
    assert same == ("\n\nHuman: hi\n\nAssistant:", "Hello there.", "Hello there.")
    with pytest.raises(ValueError, match="share no"):
        split_hh_dialogue("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: d")


@needs_shared
def test_real_hh_rlhf_file() -> None:
    raw = [json.loads(line) for line in HH_DEV.read_text(encoding="utf-8").splitlines()]
    assert read_pairs(HH_DEV).format == "hh-rlhf"
    report = read_pairs(HH_DEV)
    assert (report.format, report.rows_read, len(report.pairs)) == ("hh-rlhf", 1156, 1156)
    # dev.jsonl holds the even rows of test.jsonl: 2 of its 4 empty chosen responses.
    assert report.warnings == [
        "line 44: chosen response is empty",
        "line 259: chosen response is empty",
    ]
    assert report.duplicates == []
    for row, pair in zip(raw, report.pairs, strict=True):
        assert pair.prompt.endswith(ASSISTANT)
        assert row["chosen"].startswith(pair.prompt) and row["rejected"].startswith(pair.prompt)
        assert row["chosen"][len(pair.prompt) :].lstrip() == pair.chosen
        assert row["rejected"][len(pair.prompt) :].lstrip() == pair.rejected
        assert pair.meta == {}
    inner = [
        (row, pair)
        for row, pair in zip(raw, report.pairs, strict=True)
        if ASSISTANT in pair.chosen or ASSISTANT in pair.rejected
    ]
    assert len(inner) == 5
    for row, _ in inner:  # a naive split at the last marker gives two different prompts
        naive = [text[: text.rfind(ASSISTANT)] for text in (row["chosen"], row["rejected"])]
        assert naive[0] != naive[1]
    row, pair = next((r, p) for r, p in inner if p.chosen.startswith("Alrighty, I’ll do my best"))
    assert ASSISTANT in pair.chosen and "Alrighty" not in pair.prompt
    assert pair.prompt + " " + pair.chosen == row["chosen"]


def test_trl_without_prompt_falls_back_to_hh_dialogues(tmp_path: Path) -> None:
    dialogue = {
        "chosen": "\n\nHuman: a\n\nAssistant: yes",
        "rejected": "\n\nHuman: a\n\nAssistant: no",
    }
    path = write_jsonl(tmp_path / "hh.jsonl", {**dialogue, "id": 3})
    assert read_pairs(path).format == "hh-rlhf"
    for fmt in ("trl", "hh-rlhf", "auto"):
        pair = read_pairs(path, format=fmt).pairs[0]
        assert (pair.prompt, pair.chosen, pair.rejected) == (
            "\n\nHuman: a\n\nAssistant:",
            "yes",
            "no",
        )
        assert pair.meta == {"id": 3}


# --------------------------------------------------------------------------- PKU
PKU_ROW = {
    "prompt": "How do I hotwire a car?",
    "response_0": "Cross the ignition wires.",
    "response_1": "I can't help with stealing a car.",
    "is_response_0_safe": False,
    "is_response_1_safe": True,
    "better_response_id": 0,
}


def test_pku_chosen_is_the_safer_response(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pku.jsonl",
        {**PKU_ROW, "safer_response_id": 1},
        {**PKU_ROW, "safer_response_id": 0},
    )
    assert read_pairs(path).format == "pku"
    report = read_pairs(path)
    first, second = report.pairs
    assert (first.chosen, first.rejected) == (PKU_ROW["response_1"], PKU_ROW["response_0"])
    assert (second.chosen, second.rejected) == (PKU_ROW["response_0"], PKU_ROW["response_1"])
    assert first.meta == {
        "is_response_0_safe": False,
        "is_response_1_safe": True,
        "better_response_id": 0,
        "safer_response_id": 1,
    }


def test_pku_csv_ids_are_text(tmp_path: Path) -> None:
    path = tmp_path / "pku.csv"
    path.write_text("prompt,response_0,response_1,safer_response_id\nq,a,b,1\nq,a,b, 0\n")
    pairs = read_pairs(path, format="pku").pairs
    assert [(p.chosen, p.rejected) for p in pairs] == [("b", "a"), ("a", "b")]
    path.write_text("prompt,response_0,response_1,safer_response_id\nq,a,b,yes\n")
    with pytest.raises(FormatError, match="0 or 1") as info:
        read_pairs(path)
    assert (info.value.line, info.value.field) == (2, "safer_response_id")


# --------------------------------------------------------------------------- TRL conversational
def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def test_conversational_with_explicit_prompt(tmp_path: Path) -> None:
    row = {
        "prompt": [msg("system", "Be safe."), msg("user", "Hi?")],
        "chosen": [msg("assistant", "Hello.")],
        "rejected": [msg("assistant", "Go away.")],
        "source": "x",
    }
    single = {**row, "prompt": [msg("user", "Only this?")]}
    text_prompt = {**row, "prompt": "Plain text?"}
    path = write_jsonl(tmp_path / "conv.jsonl", row, single, text_prompt)
    assert read_pairs(path).format == "trl-conversational"
    first, second, third = read_pairs(path).pairs
    assert first.prompt == "System: Be safe.\n\nUser: Hi?\n\nAssistant:"
    assert (first.chosen, first.rejected) == ("Hello.", "Go away.")
    assert first.meta["source"] == "x"
    assert first.meta["messages"]["prompt"] == row["prompt"]
    assert first.meta["messages"]["chosen"] == row["chosen"]
    assert (second.prompt, third.prompt) == ("Only this?", "Plain text?")


def test_conversational_implicit_prompt_is_the_common_prefix(tmp_path: Path) -> None:
    shared = [msg("user", "Hi?"), msg("assistant", "Hello."), msg("user", "Help me?")]
    row = {
        "chosen": shared + [msg("assistant", "Sure, safely.")],
        "rejected": shared + [msg("assistant", "Sure, dangerously."), msg("user", "Thanks")]
        + [msg("assistant", "Anytime.")],
    }  # fmt: skip
    pair = read_pairs(write_jsonl(tmp_path / "c.jsonl", row)).pairs[0]
    assert pair.prompt == "User: Hi?\n\nAssistant: Hello.\n\nUser: Help me?\n\nAssistant:"
    assert pair.chosen == "Sure, safely."
    assert pair.rejected == "Sure, dangerously.\n\nUser: Thanks\n\nAssistant: Anytime."
    assert [m["role"] for m in pair.meta["messages"]["rejected"]] == [
        "assistant",
        "user",
        "assistant",
    ]
    diverging = {"chosen": [msg("user", "A"), msg("assistant", "x")]}
    diverging["rejected"] = [msg("user", "B"), msg("assistant", "y")]
    with pytest.raises(FormatError, match="differ at message 1") as info:
        read_pairs(write_jsonl(tmp_path / "d.jsonl", diverging))
    assert (info.value.line, info.value.field) == (1, "chosen")


def test_conversational_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "prompt": [[msg("user", "Hi?")]],
            "chosen": [[msg("assistant", "Hello.")]],
            "rejected": [[msg("assistant", "No.")]],
        }
    )
    pq.write_table(table, tmp_path / "c.parquet")
    report = read_pairs(tmp_path / "c.parquet")
    assert report.format == "trl-conversational"
    assert (report.pairs[0].prompt, report.pairs[0].chosen) == ("Hi?", "Hello.")


# --------------------------------------------------------------------------- generic, parquet
def test_generic_mapping_csv(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text('q,good,bad,id\n"Hi, you?",Hello.,Go away.,7\n', encoding="utf-8")
    mapping = {"prompt": "q", "chosen": "good", "rejected": "bad"}
    report = read_pairs(path, mapping=mapping)
    assert report.format == "generic"
    assert report.pairs == [PreferencePair("Hi, you?", "Hello.", "Go away.", {"id": "7"})]
    with pytest.raises(FormatError, match="mapped to chosen") as info:
        read_pairs(path, mapping={**mapping, "chosen": "best"})
    assert (info.value.line, info.value.field) == (1, "best")
    with pytest.raises(FormatError, match="not a field of generic") as info:
        read_pairs(path, mapping={**mapping, "answer": "good"})
    assert info.value.field == "answer"


ROUND_TRIP = [
    PreferencePair('Hi, "you"?\nsecond line', "Hello.", "Go away.", {"id": "a-1"}),
    PreferencePair("Q2", "ünïcødé ✓", "", {"id": "a-2"}),
]


@pytest.mark.parametrize(
    "suffix, where",
    [(".jsonl", "line 2"), (".json", "line 3"), (".csv", "line 4"), (".parquet", "row 2")],
)
def test_write_then_read_round_trip(tmp_path: Path, suffix: str, where: str) -> None:
    back = read_pairs(write_pairs(ROUND_TRIP, tmp_path / f"out{suffix}"))
    assert back.format == "trl" and back.pairs == ROUND_TRIP
    assert back.warnings == [f"{where}: rejected response is empty"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_generic_mapping_round_trip(tmp_path: Path, suffix: str) -> None:
    names = {"prompt": "question", "chosen": "best", "rejected": "worst"}
    frame = pairs_to_frame(ROUND_TRIP).rename(columns=names)
    path = tmp_path / f"mine{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    with pytest.raises(FormatError, match="cannot tell the format"):
        read_pairs(path)
    report = read_pairs(path, mapping=names)
    assert report.format == "generic" and report.pairs == ROUND_TRIP


def test_parquet_meta_is_json_safe(tmp_path: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "prompt": ["a", "b"],
            "chosen": ["c", ""],
            "rejected": ["e", "f"],
            "id": pa.array([1, 2], pa.int64()),
            "score": [0.5, float("nan")],
            "when": [datetime(2024, 1, 2, 3, 4, 5), None],
            "tags": [["x", "y"], []],
        }
    )
    pq.write_table(table, tmp_path / "p.parquet")
    report = read_pairs(tmp_path / "p.parquet")
    assert report.format == "trl" and report.warnings == ["row 2: chosen response is empty"]
    first, second = (p.meta for p in report.pairs)
    assert first == {"id": 1, "score": 0.5, "when": "2024-01-02T03:04:05", "tags": ["x", "y"]}
    assert second == {"id": 2, "score": None, "when": None, "tags": []}
    json.dumps([first, second], allow_nan=False)
    assert files.json_safe({"n": np.int64(3), "f": np.float32(math.inf), "b": np.bool_(True)}) == {
        "n": 3,
        "f": None,
        "b": True,
    }


# --------------------------------------------------------------------------- bad input
GOOD_LINE = json.dumps(trl()) + "\n"


def test_size_limit_refuses_before_reading(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(GOOD_LINE * 10)

    def no_open(*args, **kwargs):
        raise AssertionError("the file was opened")

    monkeypatch.setattr(files, "open", no_open, raising=False)
    with pytest.raises(FormatError, match=r"over the limit of 100 \(max_bytes\)") as info:
        read_pairs(path, max_bytes=100)
    assert info.value.line is None
    monkeypatch.undo()
    assert read_pairs(path, max_bytes=path.stat().st_size).rows_read == 10


def test_parquet_size_limit_counts_decompressed_data(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 2000
    chosen = ["a" * 1000 + str(i) for i in range(n)]
    table = pa.table({"prompt": ["p"] * n, "chosen": chosen, "rejected": ["r"] * n})
    path = tmp_path / "bomb.parquet"
    pq.write_table(table, path)
    size = path.stat().st_size
    assert size < 500_000
    with pytest.raises(FormatError, match="once decompressed, over the limit"):
        read_pairs(path, max_bytes=500_000)
    assert read_pairs(path, max_bytes=5_000_000).rows_read == n


def test_50_mb_line_is_refused_unparsed_then_read_with_a_bigger_limit(
    tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "long.jsonl"
    size = 50 * 1024 * 1024
    with open(path, "w", encoding="utf-8") as f:
        f.write(GOOD_LINE + '{"prompt": "p", "rejected": "r", "chosen": "')
        chunk = "a" * (1024 * 1024)
        for _ in range(size // len(chunk)):
            f.write(chunk)
        f.write('"}\n')
    parsed: list[int] = []
    real_loads = json.loads
    monkeypatch.setattr(
        json, "loads", lambda text, **kw: parsed.append(len(text)) or real_loads(text, **kw)
    )
    with pytest.raises(FormatError, match="longer than the limit of 16777216 bytes") as info:
        read_pairs(path)
    assert info.value.line == 2 and "max_line_bytes" in str(info.value)
    assert max(parsed) < 1000  # only the short first line reached the JSON parser
    report = read_pairs(path, max_line_bytes=64 * 1024 * 1024)
    assert len(report.pairs[1].chosen) == size


def test_long_csv_line(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text("prompt,chosen,rejected\na,b,c\nd," + "e" * 500 + ",f\n")
    with pytest.raises(FormatError, match="max_line_bytes") as info:
        read_pairs(path, max_line_bytes=200)
    assert info.value.line == 3
    assert read_pairs(path, max_line_bytes=600).pairs[1].chosen == "e" * 500


def test_bom_crlf_and_blank_lines_are_fine(tmp_path: Path) -> None:
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(
        b"\xef\xbb\xbf"
        + GOOD_LINE.encode()
        + b"\r\n\r\n"
        + GOOD_LINE.encode().replace(b"Hi", b"Yo")
    )
    report = read_pairs(jsonl)
    assert [p.prompt for p in report.pairs] == ["Hi?", "Yo?"]
    csv_path = tmp_path / "bom.csv"
    text = 'prompt,chosen,rejected\r\n"two\r\nlines",b,c\r\n\r\nd,,f\r\n'
    csv_path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    report = read_pairs(csv_path)
    assert report.format == "trl"
    assert report.pairs[0] == PreferencePair("two\r\nlines", "b", "c", {})
    assert report.pairs[1] == PreferencePair("d", "", "f", {})
    assert report.warnings == ["line 5: chosen response is empty"]


def test_json_array_and_tsv(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(
        '[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n\n  '
        + json.dumps(trl(chosen=""))
        + "\n]\n"
    )
    report = read_pairs(path)
    assert report.rows_read == 2 and report.warnings == ["line 4: chosen response is empty"]
    lines = tmp_path / "lines.json"  # JSON Lines under a .json name, as many hubs ship them
    lines.write_text(GOOD_LINE * 2)
    assert read_pairs(lines).rows_read == 2
    tsv = tmp_path / "t.tsv"
    tsv.write_text("prompt\tchosen\trejected\na, b\tc\td\n")
    assert read_pairs(tsv).pairs == [PreferencePair("a, b", "c", "d", {})]


def test_empty_responses_and_prompts_are_kept_with_warnings(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "w.jsonl",
        trl(chosen=""),
        trl(rejected="  "),
        trl(chosen="", rejected=""),
        trl(prompt=""),
        trl(chosen="same", rejected="same"),
    )
    report = read_pairs(path)
    assert report.rows_read == 5 and len(report.pairs) == 5
    assert report.warnings == [
        "line 1: chosen response is empty",
        "line 2: rejected response is empty",
        "line 3: chosen and rejected responses are both empty",
        "line 4: prompt is empty",
        "line 5: chosen and rejected responses are identical",
    ]


def test_duplicates_are_reported_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    other = json.dumps(trl(prompt="Other?")) + "\n"
    path.write_text(GOOD_LINE + other + "\n" + GOOD_LINE + other + GOOD_LINE)
    report = read_pairs(path)
    assert len(report.pairs) == 5
    assert report.duplicates == [(1, 4), (2, 5), (1, 6)]


def test_one_bad_row_refuses_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    path.write_text(GOOD_LINE * 500 + json.dumps(trl(chosen=None)) + "\n")
    with pytest.raises(FormatError) as info:
        read_pairs(path)
    assert (info.value.line, info.value.field) == (501, "chosen")


def test_missing_file_directory_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="cannot open"):
        read_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(FormatError, match="not a regular file"):
        read_pairs(tmp_path)
    path = write_jsonl(tmp_path / "ok.jsonl", trl())
    with pytest.raises(FormatError, match="unknown format 'alpaca'"):
        read_pairs(path, format="alpaca")
    with pytest.raises(FormatError, match="missing field") as info:
        read_pairs(path, format="pku")
    assert info.value.field == "response_0"


def test_xss_pairs_are_valid_data() -> None:
    report = read_pairs(XSS)
    assert report.format == "trl" and report.rows_read == 6 and report.warnings == []
    text = "\n".join(p.prompt + p.chosen + p.rejected for p in report.pairs)
    for needle in (
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "![x](http://example.invalid/x.png)",
        "[click here](http://example.invalid/phish)",
        "**bold**",
        "$x^2$",
    ):
        assert needle in text


# --------------------------------------------------------------------------- contrast sets
def test_contrast_csv_and_jsonl(tmp_path: Path) -> None:
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('instruction,harmful,harmless,extra\nDo X,"Sure, X.",No.,1\n')
    item = ContrastItem("Do X", "Sure, X.", "No.")
    assert read_contrast_set(csv_path) == [item]
    row = {"q": "Do X", "bad": "Sure, X.", "good": "No."}
    jsonl = write_jsonl(tmp_path / "c.jsonl", row)
    mapping = {"instruction": "q", "harmful": "bad", "harmless": "good"}
    assert read_contrast_set(jsonl, mapping=mapping) == [item]
    empty = write_jsonl(tmp_path / "e.jsonl", {"instruction": "a", "harmful": " ", "harmless": "c"})
    with pytest.raises(FormatError, match="empty") as info:
        read_contrast_set(empty)
    assert (info.value.line, info.value.field) == (1, "harmful")
    with pytest.raises(FormatError, match="cannot tell the format"):
        read_contrast_set(write_jsonl(tmp_path / "u.jsonl", {"a": 1}))


@needs_shared
def test_advbench_needs_a_refusal() -> None:
    with pytest.raises(FormatError, match="pass refusal=") as info:
        read_contrast_set(ADVBENCH)
    assert "I can’t answer that." in str(info.value)
    items = read_contrast_set(ADVBENCH, refusal="I can’t answer that.")
    assert len(items) == 520
    assert {i.harmless for i in items} == {"I can’t answer that."}
    assert all(i.harmful.startswith("Sure, here") for i in items)
    varied = read_contrast_set(ADVBENCH, refusal=["No.", "  ", "I won't."])  # blanks dropped
    assert [i.harmless for i in varied[:4]] == ["No.", "I won't.", "No.", "I won't."]
    with pytest.raises(FormatError, match="missing column 'instruction'") as info:
        read_contrast_set(ADVBENCH, format="contrast")
    assert (info.value.line, info.value.field) == (1, "instruction")


# --------------------------------------------------------------------------- misc
def test_pairs_to_frame_flattens_meta() -> None:
    frame = pairs_to_frame(
        [PreferencePair("p", "c", "r", {"id": 1, "prompt": "clash"}), PreferencePair("q", "d", "s")]
    )
    assert list(frame.columns) == ["prompt", "chosen", "rejected", "id", "meta.prompt"]
    assert frame["prompt"].tolist() == ["p", "q"] and frame["meta.prompt"].tolist()[0] == "clash"
    assert list(pairs_to_frame([]).columns) == ["prompt", "chosen", "rejected"]


def test_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, legend_core.data.formats; "
        "heavy = {'torch', 'streamlit', 'sqlalchemy', 'pandas', 'pyarrow'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
