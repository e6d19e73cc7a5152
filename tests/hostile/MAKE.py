"""Write the hostile corpus: small malformed files that every importer must refuse whole.

Run ``python tests/hostile/MAKE.py [folder]`` (default: this file's folder). It writes each
file and ``EXPECTED.json``: file name -> {"format": what to pass to ``read_pairs``, "line":
the 1-based line (Parquet: row) the error names or null, "field": the field it names or
null, "contains": a substring of the message}. The outputs are committed; a test checks
that this script still reproduces them (Parquet bytes aside). Keep every file under 20 KB.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def jl(*rows: object) -> bytes:
    """JSON Lines from Python values (strings are written as they are: raw lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    return ("\n".join(lines) + "\n").encode("utf-8")


def trl(prompt: object = "Hi?", chosen: object = "Hello.", rejected: object = "Go away.") -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def pku(safer: object = 1, **changes: object) -> dict:
    row = {
        "prompt": "How do I hotwire a car?",
        "response_0": "Cross the ignition wires.",
        "response_1": "I can't help with stealing a car.",
        "is_response_0_safe": False,
        "is_response_1_safe": True,
        "better_response_id": 1,
        "safer_response_id": safer,
    }
    row.update(changes)
    return row


def msg(role: str, content: object) -> dict:
    return {"role": role, "content": content}


def conv(chosen: list, rejected: list | None = None) -> dict:
    prompt = [msg("user", "Hi?")]
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected or [msg("assistant", "No.")]}


def parquet(columns: dict[str, list]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink, compression="none")
    return sink.getvalue()


def scrambled(data: bytes) -> bytes:
    """A Parquet file with intact PAR1 markers and footer length, but garbage elsewhere."""
    return data[:4] + bytes(0xAB for _ in data[4:-8]) + data[-8:]


def zipped(name: str, data: bytes) -> bytes:
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as archive:
        archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return sink.getvalue()


GOOD = jl(trl(), trl("Tell me a joke.", "Why did...", "No."))
HEADER = "prompt,chosen,rejected\n"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
FULL = {"prompt": ["a", "b"], "chosen": ["c", "d"], "rejected": ["e", "f"]}

# name: (content, format, line, field, contains)
CASES: dict[str, tuple[bytes, str, int | None, str | None, str]] = {
    "bad_json_line3.jsonl": (
        GOOD + b'{"prompt": "a", "chosen": "b", "rejected": }\n',
        "auto",
        3,
        None,
        "invalid JSON",
    ),
    "chosen_is_number.jsonl": (jl(trl(), trl(chosen=42)), "auto", 2, "chosen", "got a number"),
    "rejected_is_list.jsonl": (jl(trl(rejected=["x"])), "trl", 1, "rejected", "got a list"),
    "null_prompt.jsonl": (jl(trl(prompt=None)), "auto", 1, "prompt", "got null"),
    "trl_prompt_is_object.jsonl": (jl(trl(), trl(prompt={})), "auto", 2, "prompt", "an object"),
    "missing_key_line2.jsonl": (
        jl(trl(), {"prompt": "a", "chosen": "b"}),
        "auto",
        2,
        "rejected",
        "missing field",
    ),
    "missing_rejected_column.csv": (b"prompt,chosen\nq,a\n", "auto", 1, "rejected", "cannot tell"),
    "missing_rejected_column_explicit.csv": (
        b"prompt,chosen\nq,a\n",
        "trl",
        1,
        "rejected",
        "missing column",
    ),
    "unknown_columns.csv": (
        b"question,answer_a,answer_b\nq,a,b\n",
        "auto",
        1,
        None,
        "cannot tell the format",
    ),
    "no_prompt_plain_text.jsonl": (
        jl({"chosen": "a", "rejected": "b"}),
        "auto",
        1,
        "prompt",
        "HH-RLHF",
    ),
    "hh_no_shared_assistant_turn.jsonl": (
        jl({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: x\n\nAssistant: y"}),
        "auto",
        1,
        "chosen",
        "share no",
    ),  # fmt: skip
    "binary_png.jsonl": (PNG, "auto", None, None, "not a text data file"),
    "gzip_disguised.jsonl": (gzip.compress(GOOD, mtime=0), "auto", None, None, "gzip"),
    "zip_disguised.csv": (
        zipped("pairs.csv", (HEADER + "a,b,c\n").encode()),
        "auto",
        None,
        None,
        "zip archive",
    ),
    "utf16_bom.csv": ((HEADER + "a,b,c\n").encode("utf-16"), "auto", None, None, "UTF-16"),
    "nul_bytes_line2.jsonl": (
        GOOD.replace(b"Why", b"W\x00y"),
        "auto",
        2,
        None,
        "not a text data file",
    ),
    "latin1_bytes.csv": (
        (HEADER + "a,b,c\ncafé?,oui,non\n").encode("latin-1"),
        "auto",
        3,
        None,
        "not valid UTF-8",
    ),
    "invalid_utf8_line2.jsonl": (
        GOOD.replace(b"Tell", b"\xe2\x82"),
        "auto",
        2,
        None,
        "not valid UTF-8",
    ),
    "jsonl_array_line.jsonl": (
        jl(trl(), ["a", "b", "c"]),
        "auto",
        2,
        None,
        "expected a JSON object, got a list",
    ),
    "deep_nesting.jsonl": (
        jl('{"prompt": ' + "[" * 5000 + "]" * 5000 + ', "chosen": "a", "rejected": "b"}'),
        "auto",
        1,
        None,
        "nested too deeply",
    ),  # fmt: skip
    "json_array_not_objects.json": (
        b'[\n  "a",\n  "b"\n]\n',
        "auto",
        2,
        None,
        "expected a JSON object, got a string",
    ),
    "json_top_level_object.json": (
        json.dumps({"data": [trl()]}, indent=2).encode(),
        "auto",
        1,
        None,
        "array of objects",
    ),
    "json_array_truncated.json": (
        b'[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": "d",\n',
        "auto",
        4,
        None,
        "invalid JSON",
    ),  # fmt: skip
    "json_array_trailing_comma.json": (
        b'[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n]\n',
        "auto",
        3,
        None,
        "JSON",
    ),
    "ragged.csv": ((HEADER + "a,b,c\nd,e,f,g\n").encode(), "auto", 3, None, "4 fields"),
    "unterminated_quote.csv": (
        (HEADER + 'a,b,c\nd,"e,f\ng,h,i\n').encode(),
        "auto",
        3,
        None,
        "malformed CSV",
    ),
    "duplicate_column.csv": (
        b"prompt,chosen,chosen,rejected\na,b,c,d\n",
        "auto",
        1,
        "chosen",
        "twice",
    ),
    "empty.jsonl": (b"", "auto", None, None, "empty"),
    "only_blank_lines.jsonl": (b"\n\n   \n\r\n", "auto", None, None, "no records"),
    "header_only.csv": (HEADER.encode(), "auto", None, None, "no records after the header"),
    "unsupported_extension.txt": (GOOD, "auto", None, None, "unsupported file type"),
    "pku_bad_safer_id.jsonl": (jl(pku(), pku(2)), "auto", 2, "safer_response_id", "0 or 1"),
    "pku_safer_id_null.jsonl": (jl(pku(None)), "auto", 1, "safer_response_id", "0 or 1"),
    "pku_missing_response_1.jsonl": (
        jl({k: v for k, v in pku().items() if k != "response_1"}),
        "pku",
        1,
        "response_1",
        "missing field",
    ),  # fmt: skip
    "pku_response_is_null.jsonl": (
        jl(pku(), pku(response_0=None)),
        "auto",
        2,
        "response_0",
        "got null",
    ),
    "conversational_content_not_string.jsonl": (
        jl(conv([msg("assistant", {"text": "Hello."})])),
        "auto",
        1,
        "chosen",
        "'content' must be a string",
    ),  # fmt: skip
    "conversational_missing_role.jsonl": (
        jl(conv([msg("assistant", "Hello.")]), conv([msg("assistant", "Hi.")], [{"content": "x"}])),
        "auto",
        2,
        "rejected",
        "'role' must be a string",
    ),  # fmt: skip
    "conversational_last_not_assistant.jsonl": (
        jl(conv([msg("assistant", "Hello."), msg("user", "And?")])),
        "auto",
        1,
        "chosen",
        "last message",
    ),  # fmt: skip
    "conversational_message_not_object.jsonl": (
        jl(conv(["Hello."])),
        "auto",
        1,
        "chosen",
        "message 1 is a string",
    ),
    "conversational_empty_chosen.jsonl": (jl(conv([])), "auto", 1, "chosen", "non-empty list"),
    "truncated.parquet": (parquet(FULL)[:-60], "auto", None, None, "not a valid Parquet file"),
    "scrambled.parquet": (scrambled(parquet(FULL)), "auto", None, None, "not a valid Parquet"),
    "not_really.parquet": (GOOD, "auto", None, None, "not a valid Parquet file"),
    "parquet_missing_rejected.parquet": (
        parquet({"prompt": ["a"], "chosen": ["b"]}),
        "auto",
        None,
        "rejected",
        "cannot tell",
    ),
    "parquet_chosen_null.parquet": (
        parquet({**FULL, "chosen": ["c", None]}),
        "auto",
        2,
        "chosen",
        "got null",
    ),
}


def main(folder: Path = HERE) -> None:
    """Write every case and EXPECTED.json into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (content, fmt, line, field, contains) in sorted(CASES.items()):
        assert len(content) < 20_000, name
        (folder / name).write_bytes(content)
        expected[name] = {"format": fmt, "line": line, "field": field, "contains": contains}
    text = json.dumps(expected, indent=2, ensure_ascii=False) + "\n"
    (folder / "EXPECTED.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
