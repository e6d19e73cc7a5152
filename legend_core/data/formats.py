"""Read preference data sets and contrastive sets from files, strictly.

Files: JSON Lines (``.jsonl``, ``.ndjson``; a ``.json`` file not starting with ``[``), JSON
arrays of objects (``.json``), CSV/TSV with a header row, and Parquet. The text kinds may be
compressed as downloaded (``dev.jsonl.gz``; ``.gz``, ``.bz2``, ``.xz``): they are decompressed
as a stream, line numbers count lines of the decompressed text, and the size limit counts
decompressed bytes, checked before parsing, so a decompression bomb is refused. Pair formats:
Anthropic HH-RLHF dialogues, PKU-SafeRLHF, TRL (standard and conversational) and a generic
table with a column mapping. Contrastive sets: ``instruction,harmful,harmless`` tables and
AdvBench (``goal,target`` plus one fixed refusal).

An import is all or nothing: any structural problem raises :class:`FormatError` naming the
file, the line (the file line for text files, header included; the 1-based row for Parquet)
and the field. Soft problems (empty responses, duplicate pairs) are kept and reported.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import math
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, get_args

from legend_core.config import PAPER_REFUSAL
from legend_core.types import ContrastItem, PreferencePair

if TYPE_CHECKING:
    import pandas as pd

PairFormat = Literal["hh-rlhf", "pku", "trl", "trl-conversational", "generic"]
ContrastFormat = Literal["contrast", "advbench"]
PAIR_FORMATS: tuple[str, ...] = get_args(PairFormat)
CONTRAST_FORMATS: tuple[str, ...] = get_args(ContrastFormat)

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"

#: The fields each format reads; a ``mapping`` renames them to the file's column names.
FIELDS: dict[str, tuple[str, ...]] = {
    "hh-rlhf": ("chosen", "rejected"),
    "pku": ("prompt", "response_0", "response_1", "safer_response_id"),
    "trl": ("prompt", "chosen", "rejected"),
    "trl-conversational": ("prompt", "chosen", "rejected"),
    "generic": ("prompt", "chosen", "rejected"),
    "contrast": ("instruction", "harmful", "harmless"),
    "advbench": ("goal", "target"),
}
_OPTIONAL = {"trl": ("prompt",), "trl-conversational": ("prompt",)}
#: File suffix -> kind of data file: the one table of what is read (and written: the Data
#: page's uploader and ``exports`` take theirs from it).
SUFFIXES: dict[str, str] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
SUFFIXES |= {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
#: Compression suffix -> (name, magic bytes, opener); read with the standard library only,
#: decompressed as a stream (``x.jsonl.gz`` is JSONL). Parquet compresses inside its file.
COMPRESSIONS: dict[str, tuple[str, re.Pattern[bytes], Callable[[Path], BinaryIO]]] = {
    ".gz": ("gzip", re.compile(b"\x1f\x8b"), lambda p: gzip.open(p, "rb")),
    ".bz2": ("bzip2", re.compile(b"BZh[1-9]"), lambda p: bz2.open(p, "rb")),
    ".xz": ("xz", re.compile(b"\xfd7zXZ\x00"), lambda p: lzma.open(p, "rb")),
}
#: Every suffix a data file may end in (a compression suffix after a data suffix).
READABLE_SUFFIXES: tuple[str, ...] = (*SUFFIXES, *COMPRESSIONS)
_ZSTD = (b"\x28\xb5\x2f\xfd", "a zstd archive (not readable here: decompress it first)")
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"PK\x03\x04", "a zip archive (an Excel workbook? export it as CSV)"),
    (b"%PDF", "a PDF document"),
    _ZSTD,
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"PAR1", "a Parquet file (give it a .parquet name)"),
    (b"\xff\xfe", "UTF-16 text (save it as UTF-8)"),
    (b"\xfe\xff", "UTF-16 text (save it as UTF-8)"),
)
_BOM = b"\xef\xbb\xbf"
_NUL = "not a text data file (it contains NUL bytes)"
_JSON_WS = re.compile(r"[ \t\n\r]*")


class FormatError(ValueError):
    """A file that cannot be imported; the message names the file, line and field.

    Attributes:
        path: The file.
        line: 1-based file line (CSV: header included), Parquet row, or None.
        field: The field (the file's column name) at fault, or None.
        reason: The message without the location prefix.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        reason: str,
        line: int | None = None,
        field: str | None = None,
        unit: str = "line",
    ) -> None:
        self.path, self.line, self.field, self.reason = str(path), line, field, reason
        where = self.path + (f", {unit} {line}" if line is not None else "")
        where += f", field '{field}'" if field is not None else ""
        super().__init__(f"{where}: {reason}")


@dataclass
class ImportReport:
    """The pairs read from a file and what was odd about them (kept, not dropped)."""

    pairs: list[PreferencePair]
    format: str
    rows_read: int
    warnings: list[str] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)


# --------------------------------------------------------------------------- sources
@dataclass
class _Source:
    """An opened file: its records as (line, dict), and the header when it has one."""

    path: Path
    rows: Iterator[tuple[int, dict[str, Any]]]
    columns: list[str] | None = None
    header_line: int | None = None
    unit: str = "line"

    def error(self, reason: str, line: int | None = None, field: str | None = None) -> FormatError:
        return FormatError(self.path, reason, line, field, self.unit)

    def __post_init__(self) -> None:
        self._generator = self.rows  # what close() closes: the generator holding the file

    def peek(self) -> tuple[int, dict[str, Any]] | None:
        """The first record, left in place for the next reader."""
        first = next(self.rows, None)
        if first is not None:
            self.rows = chain([first], self.rows)
        return first

    def close(self) -> None:
        close = getattr(self._generator, "close", None)
        if close is not None:
            close()


def data_file_stem(path: str | os.PathLike[str]) -> str:
    """A data file's name without its data and compression suffixes.

    ``dev.jsonl.gz`` -> ``dev``, ``pairs.csv`` -> ``pairs``: the default name of an import.
    """
    p = Path(path)
    if p.suffix.lower() in (*COMPRESSIONS, ".zst"):
        p = Path(p.stem)
    return p.stem if p.suffix.lower() in SUFFIXES else p.name


class _Capped:
    """A data file's bytes, decompressed as they are read, refused past ``max_bytes``.

    Every read is bounded, so a decompression bomb stops at the limit: no more than
    ``max_bytes`` is ever held (a line: ``max_line_bytes``), and nothing goes to disk.
    """

    def __init__(self, path: Path, compression: str | None, max_bytes: int) -> None:
        self.path, self.compression, self.max_bytes = path, compression, max_bytes
        self.total = 0
        opener = COMPRESSIONS[compression][2] if compression else _open_plain
        self.file: BinaryIO = self._guard(opener, path)

    def _guard(self, call: Callable[..., Any], *args: Any) -> Any:
        """Run a read; a damaged file's error becomes a FormatError naming the file."""
        try:
            return call(*args)
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:
            if self.compression is None:
                raise FormatError(self.path, f"cannot read the file ({e})") from None
            name = COMPRESSIONS[self.compression][0]
            raise FormatError(self.path, f"the {name} data is damaged or cut short ({e})") from None

    def _count(self, data: bytes) -> bytes:
        self.total += len(data)
        if self.total > self.max_bytes:
            once = " once decompressed" if self.compression else ""
            reason = f"the file holds more than {self.max_bytes} bytes{once}, over the limit"
            raise FormatError(self.path, f"{reason} of {self.max_bytes} (max_bytes)")
        return data

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes; all the rest when negative (still bounded by the limit)."""
        room = self.max_bytes + 1 - self.total  # one byte over is enough to refuse
        return self._count(self._guard(self.file.read, room if size < 0 else min(size, room)))

    def readline(self, size: int) -> bytes:
        """One line, or its first ``size`` bytes."""
        room = self.max_bytes + 1 - self.total
        return self._count(self._guard(self.file.readline, min(size, room)))

    def __enter__(self) -> _Capped:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def _open_plain(path: Path) -> BinaryIO:
    return open(path, "rb")  # noqa: SIM115 (closed by _Capped)


@dataclass(frozen=True)
class _File:
    """A text data file to read: where, compressed how (a suffix or None), and its limit."""

    path: Path
    compression: str | None
    max_bytes: int

    def open(self) -> _Capped:
        return _Capped(self.path, self.compression, self.max_bytes)


def _kind_of(p: Path) -> tuple[str, str | None]:
    """The data kind, told by the name without its compression suffix, and that suffix."""
    suffix = p.suffix.lower()
    if suffix == ".zst":
        raise FormatError(p, f"not a readable file: it is {_ZSTD[1]}")
    compression = suffix if suffix in COMPRESSIONS else None
    inner = Path(p.stem).suffix.lower() if compression else suffix
    kind = SUFFIXES.get(inner)
    if kind is None:
        known = ", ".join(sorted(SUFFIXES)) + ", optionally followed by " + ", ".join(COMPRESSIONS)
        raise FormatError(p, f"unsupported file type '{inner}': expected one of {known}")
    if kind == "parquet" and compression:
        raise FormatError(p, "Parquet compresses its own data: give the .parquet file as it is")
    return kind, compression


def _open_source(path: str | os.PathLike[str], max_bytes: int, max_line_bytes: int) -> _Source:
    """Check the file's size and kind, then set up its record reader.

    A plain file's size is its ``stat``. A compressed file is first decompressed to nowhere,
    counting, so one over ``max_bytes`` once decompressed is refused before any parsing.
    """
    p = Path(path)
    try:
        info = os.stat(p)
    except OSError as e:
        raise FormatError(p, f"cannot open the file ({e.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise FormatError(p, "not a regular file")
    if info.st_size > max_bytes:
        raise FormatError(
            p, f"the file is {info.st_size} bytes, over the limit of {max_bytes} (max_bytes)"
        )
    if info.st_size == 0:
        raise FormatError(p, "the file is empty")
    kind, compression = _kind_of(p)
    if kind == "parquet":
        return _parquet_source(p, max_bytes)
    if compression:
        name, magic, _ = COMPRESSIONS[compression]
        with open(p, "rb") as f:
            raw = f.read(8)
        if not magic.match(raw):
            hint = f" (already decompressed? name it {p.stem})" if b"\x00" not in raw else ""
            raise FormatError(p, f"named {compression} but not {name} data{hint}")
    file = _File(p, compression, max_bytes)
    with file.open() as f:
        head = f.read(8192)
        while compression and f.read(1 << 20):  # to the end or the limit: a bomb stops here
            pass
        if compression and f.total == 0:
            raise FormatError(p, "the file is empty once decompressed")
    _check_text(p, head, compression)
    if kind in ("csv", "tsv"):
        return _csv_source(file, max_line_bytes, "," if kind == "csv" else "\t")
    if kind == "json" and head.removeprefix(_BOM).lstrip().startswith(b"["):
        return _Source(p, _json_array_rows(file))
    return _Source(p, _jsonl_rows(file, max_line_bytes, json_suffix=kind == "json"))


def _check_text(path: Path, head: bytes, compression: str | None = None) -> None:
    """Refuse binary files (known magic numbers, NUL bytes) from their first bytes."""
    for suffix, (name, magic, _) in COMPRESSIONS.items():
        if magic.match(head):
            how = (
                "compressed twice? decompress it once"
                if compression
                else f"name it {path.name}{suffix}"
            )
            raise FormatError(path, f"not a text data file: it looks like a {name} archive ({how})")
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise FormatError(path, f"not a text data file: it looks like {what}")
    nul = head.find(b"\x00")
    if nul >= 0:
        line = head.count(b"\n", 0, nul) + 1
        raise FormatError(path, _NUL, line)


def _text_lines(file: _File, max_line_bytes: int) -> Iterator[tuple[int, str]]:
    """Yield (line number, decoded line), never holding more than one bounded line.

    Lines are those of the decompressed text when the file is compressed.
    """
    path = file.path
    with file.open() as f:
        number = 0
        while raw := f.readline(max_line_bytes + 1):
            number += 1
            if len(raw) > max_line_bytes:
                reason = f"the line is longer than the limit of {max_line_bytes} bytes"
                raise FormatError(path, reason + " (max_line_bytes)", number)
            if number == 1:
                raw = raw.removeprefix(_BOM)
            if b"\x00" in raw:
                raise FormatError(path, _NUL, number)
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise FormatError(path, _utf8_reason(raw[e.start], e.start + 1), number) from None


def _utf8_reason(byte: int, column: int) -> str:
    return f"not valid UTF-8 (byte 0x{byte:02x} at byte {column} of the line); save it as UTF-8"


def _jsonl_rows(file: _File, max_line_bytes: int, json_suffix: bool) -> Iterator[tuple[int, dict]]:
    path = file.path
    hint = " (a .json file must hold an array of objects or one object per line)"
    for number, text in _text_lines(file, max_line_bytes):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            extra = hint if json_suffix and number == 1 else ""
            raise FormatError(
                path, f"invalid JSON: {e.msg} (column {e.colno}){extra}", number
            ) from None
        except RecursionError:
            raise FormatError(path, "invalid JSON: nested too deeply", number) from None
        if not isinstance(value, dict):
            raise FormatError(path, f"expected a JSON object, got {_kind(value)}", number)
        yield number, value


def _json_array_rows(file: _File) -> Iterator[tuple[int, dict]]:
    """Walk a JSON array element by element, so each record knows its line."""
    path = file.path
    with file.open() as f:
        data = f.read().removeprefix(_BOM)
    if (nul := data.find(b"\x00")) >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise FormatError(path, _NUL, line)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        reason = _utf8_reason(data[e.start], e.start - start + 1)
        raise FormatError(path, reason, data.count(b"\n", 0, start) + 1) from None
    decoder = json.JSONDecoder()
    pos = _JSON_WS.match(text, text.index("[") + 1).end()
    done, line = 0, 1

    def line_at(i: int) -> int:
        nonlocal done, line
        line += text.count("\n", done, i)
        done = i
        return line

    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            start = line_at(pos)
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise FormatError(
                    path, f"invalid JSON: {e.msg} (column {e.colno})", e.lineno
                ) from None
            except RecursionError:
                raise FormatError(path, "invalid JSON: nested too deeply", start) from None
            if not isinstance(value, dict):
                raise FormatError(path, f"expected a JSON object, got {_kind(value)}", start)
            yield start, value
            pos = _JSON_WS.match(text, end).end()
            if text.startswith(",", pos):
                pos = _JSON_WS.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                reason = "invalid JSON: expected ',' or ']' after an array element"
                raise FormatError(path, reason, line_at(pos))
    if text[pos:].strip():
        raise FormatError(path, "invalid JSON: extra data after the array", line_at(pos))


def _csv_source(file: _File, max_line_bytes: int, delimiter: str) -> _Source:
    path = file.path
    if csv.field_size_limit() < max_line_bytes:  # process-wide; only ever raised
        csv.field_size_limit(max_line_bytes)
    lines = _text_lines(file, max_line_bytes)
    reader = csv.reader((text for _, text in lines), delimiter=delimiter, strict=True)

    def records() -> Iterator[list[str]]:
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise FormatError(path, f"malformed CSV: {e}", start) from None
            if row and not (len(row) == 1 and not row[0].strip()):
                yield start, row
            start = reader.line_num + 1

    rows = records()
    first = next(rows, None)
    if first is None:
        raise FormatError(path, "the file has no header row")
    header_line, header = first[0], [name.strip() for name in first[1]]
    for i, name in enumerate(header):
        if name in header[:i]:
            raise FormatError(path, "the header names this column twice", header_line, name)

    def dicts() -> Iterator[tuple[int, dict[str, Any]]]:
        for number, row in rows:
            if len(row) != len(header):
                reason = f"the row has {len(row)} fields, the header has {len(header)}"
                raise FormatError(path, reason, number)
            yield number, dict(zip(header, row, strict=True))

    source = _Source(path, dicts(), header, header_line)
    source._generator = lines
    return source


def _parquet_source(path: Path, max_bytes: int) -> _Source:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(-4, os.SEEK_END)
        tail = f.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        raise FormatError(path, "not a valid Parquet file (no PAR1 marker; is it truncated?)")
    try:
        info = pq.read_metadata(path)
        size = sum(info.row_group(i).total_byte_size for i in range(info.num_row_groups))
        if size > max_bytes:  # compressed data can expand far beyond the file's size
            reason = f"the data is {size} bytes once decompressed, over the limit of {max_bytes}"
            raise FormatError(path, reason + " (max_bytes)")
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise FormatError(path, f"not a valid Parquet file ({str(e).strip()})") from None

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        number = 0
        for batch in table.to_batches():
            for record in batch.to_pylist():
                number += 1
                yield number, record

    return _Source(path, rows(), list(table.column_names), None, "row")


# --------------------------------------------------------------------------- fields
def _kind(value: Any) -> str:
    """A JSON-ish name for a value's type, for messages."""
    if value is None:
        return "null"
    for types, name in ((bool, "a boolean"), ((int, float), "a number"), (str, "a string")):
        if isinstance(value, types):
            return name
    if isinstance(value, Mapping):
        return "an object"
    return "a list" if isinstance(value, (list, tuple)) else type(value).__name__


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types: numpy/pandas scalars unwrapped, NaN and NaT as None."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, Decimal):
        return json_safe(float(value))
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return json_safe(value.tolist())
    try:
        if value != value:  # NaT and other NaN-likes
            return None
    except (TypeError, ValueError):
        pass
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


class _Row:
    """One record being converted; ``cols`` maps the format's fields to file columns."""

    def __init__(self, src: _Source, line: int, record: dict, cols: dict[str, str], fmt: str):
        self.src, self.line, self.record, self.cols, self.fmt = src, line, record, cols, fmt

    def error(self, reason: str, name: str | None = None) -> FormatError:
        column = None if name is None else self.cols.get(name, name)
        return self.src.error(reason, self.line, column)

    def has(self, name: str) -> bool:
        return self.cols[name] in self.record

    def value(self, name: str) -> Any:
        if not self.has(name):
            needs = ", ".join(self.cols[f] for f in FIELDS[self.fmt])
            found = ", ".join(map(str, self.record)) or "nothing"
            reason = f"missing field (a {self.fmt} record needs {needs}; found {found})"
            raise self.error(reason, name)
        return self.record[self.cols[name]]

    def text(self, name: str, nonempty: bool = False) -> str:
        value = self.value(name)
        if not isinstance(value, str):
            raise self.error(f"expected a string, got {_kind(value)}", name)
        if nonempty and not value.strip():
            raise self.error("the text is empty", name)
        return value

    def meta(self, *used: str) -> dict[str, Any]:
        skip = {self.cols[name] for name in used}
        return {str(k): json_safe(v) for k, v in self.record.items() if k not in skip}


def _column_map(src: _Source, fmt: str, mapping: Mapping[str, str] | None) -> dict[str, str]:
    """The format's fields -> file columns, after checking ``mapping`` and the header."""
    mapping = dict(mapping or {})
    for name, column in mapping.items():
        if name not in FIELDS[fmt]:
            reason = f"the mapping names '{name}', not a field of {fmt} ({', '.join(FIELDS[fmt])})"
            raise src.error(reason, field=name)
        if not isinstance(column, str):
            raise src.error("the mapping's column names must be strings", field=name)
    cols = {name: mapping.get(name, name) for name in FIELDS[fmt]}
    for name in FIELDS[fmt] if src.columns is not None else ():
        if cols[name] not in src.columns and name not in _OPTIONAL.get(fmt, ()):
            reason = _missing_column(fmt, cols, name, src.columns)
            raise src.error(reason, src.header_line, cols[name])
    return cols


def _missing_column(fmt: str, cols: dict[str, str], name: str, columns: Sequence[str]) -> str:
    alias = f" (mapped to {name})" if cols[name] != name else ""
    reason = f"missing column '{cols[name]}'{alias}: {fmt} needs "
    reason += ", ".join(cols[f] for f in FIELDS[fmt]) + "; the file has " + ", ".join(columns)
    if len(columns) == 1 and ";" in columns[0]:
        reason += " (separated by semicolons? use commas)"
    return reason


# --------------------------------------------------------------------------- pairs
def split_hh_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two HH-RLHF dialogues into (prompt, chosen response, rejected response).

    The prompt is the common prefix of both, cut back to (and including) its last
    ``"\\n\\nAssistant:"``; the responses are the rest, without leading whitespace.

    Raises:
        ValueError: The common part holds no ``"\\n\\nAssistant:"`` turn.
    """
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(ASSISTANT)
    if cut < 0:
        raise ValueError(
            "chosen and rejected share no '\\n\\nAssistant:' turn, so the prompt cannot be "
            "told from the responses (expected HH-RLHF dialogues)"
        )
    end = cut + len(ASSISTANT)
    return chosen[:end], chosen[end:].lstrip(), rejected[end:].lstrip()


def _pair_hh(row: _Row) -> PreferencePair:
    chosen, rejected = row.text("chosen"), row.text("rejected")
    try:
        prompt, good, bad = split_hh_dialogue(chosen, rejected)
    except ValueError as e:
        raise row.error(str(e), "chosen") from None
    return PreferencePair(prompt, good, bad, row.meta("chosen", "rejected"))


def _pair_trl(row: _Row) -> PreferencePair:
    if row.fmt == "trl" and not row.has("prompt"):
        if HUMAN in row.text("chosen"):
            return _pair_hh(row)
        reason = "missing field: without a prompt, chosen and rejected must be HH-RLHF "
        raise row.error(reason + "dialogues ('\\n\\nHuman: ...\\n\\nAssistant: ...')", "prompt")
    texts = [row.text(name) for name in ("prompt", "chosen", "rejected")]
    return PreferencePair(*texts, meta=row.meta("prompt", "chosen", "rejected"))


def _pair_pku(row: _Row) -> PreferencePair:
    prompt, first, second = (row.text(n) for n in ("prompt", "response_0", "response_1"))
    safer = row.value("safer_response_id")
    if isinstance(safer, str) and safer.strip() in ("0", "1"):
        safer = int(safer)
    if isinstance(safer, bool) or safer not in (0, 1):
        got = repr(safer)[:40] if isinstance(safer, (int, float, str)) else _kind(safer)
        raise row.error(f"must be 0 or 1, got {got}", "safer_response_id")
    chosen, rejected = (first, second) if safer == 0 else (second, first)
    return PreferencePair(prompt, chosen, rejected, row.meta("prompt", "response_0", "response_1"))


def _messages(row: _Row, name: str) -> list[dict[str, str]]:
    value = row.value(name)
    if name == "prompt" and isinstance(value, str):  # a plain-text prompt: one user turn
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list) or (not value and name != "prompt"):
        got = "an empty list" if value == [] else _kind(value)
        raise row.error(f"expected a non-empty list of messages, got {got}", name)
    out = []
    for i, message in enumerate(value, 1):
        if not isinstance(message, Mapping):
            raise row.error(f"message {i} is {_kind(message)}, not an object", name)
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = _kind(message.get(key)) if key in message else "nothing"
                raise row.error(f"message {i}: '{key}' must be a string, got {got}", name)
        out.append({"role": message["role"], "content": message["content"]})
    if name != "prompt" and out[-1]["role"] != "assistant":
        raise row.error("the last message must be the assistant's", name)
    return out


def _label(role: str) -> str:
    return {"user": "User", "assistant": "Assistant"}.get(role, role.capitalize())


def _pair_conversational(row: _Row) -> PreferencePair:
    prompt = _messages(row, "prompt") if row.has("prompt") else []
    chosen, rejected = prompt + _messages(row, "chosen"), prompt + _messages(row, "rejected")
    k, limit = 0, min(len(chosen), len(rejected)) - 1
    while k < limit and chosen[k] == rejected[k]:
        k += 1
    if chosen[k]["role"] != "assistant" or rejected[k]["role"] != "assistant":
        reason = f"chosen and rejected differ at message {k + 1}, before the assistant's answer"
        raise row.error(reason, "chosen")
    shared = chosen[:k]
    if len(shared) == 1 and shared[0]["role"] == "user":
        text = shared[0]["content"]
    elif shared:
        turns = "".join(f"{_label(m['role'])}: {m['content']}\n\n" for m in shared)
        text = turns + "Assistant:"
    else:
        text = ""

    def response(rest: list[dict[str, str]]) -> str:
        tail = "".join(f"\n\n{_label(m['role'])}: {m['content']}" for m in rest[1:])
        return rest[0]["content"] + tail

    meta = row.meta("prompt", "chosen", "rejected")
    meta["messages"] = {"prompt": shared, "chosen": chosen[k:], "rejected": rejected[k:]}
    return PreferencePair(text, response(chosen[k:]), response(rejected[k:]), meta)


_CONVERTERS: dict[str, Callable[[_Row], PreferencePair]] = {
    "hh-rlhf": _pair_hh,
    "pku": _pair_pku,
    "trl": _pair_trl,
    "trl-conversational": _pair_conversational,
    "generic": _pair_trl,
}


def _detect(src: _Source) -> PairFormat:
    first = src.peek()
    if src.columns is None and first is None:
        raise src.error("the file holds no records")
    keys = set(src.columns if src.columns is not None else first[1])
    sample = first[1] if first else {}
    line = src.header_line if src.columns is not None else first[0]
    if {"response_0", "response_1", "safer_response_id"} <= keys:
        return "pku"
    if {"chosen", "rejected"} <= keys:
        if isinstance(sample.get("chosen"), list):
            return "trl-conversational"
        if "prompt" in keys:
            return "trl"
        if HUMAN in str(sample.get("chosen", "")):
            return "hh-rlhf"
        reason = "chosen and rejected without a prompt must be HH-RLHF dialogues "
        raise src.error(reason + "('\\n\\nHuman: ...'); add a prompt field", line, "prompt")
    found = ", ".join(sorted(map(str, keys))) or "nothing"
    reason = (
        f"cannot tell the format from its fields ({found}); expected prompt, chosen, rejected "
        "(trl), chosen, rejected dialogues (hh-rlhf) or prompt, response_0, response_1, "
        "safer_response_id (pku); for other names pass format='generic' and a mapping"
    )
    candidates = (("chosen", "rejected"), ("response_0", "response_1", "safer_response_id"))
    for names in candidates:
        missing = [n for n in names if n not in keys]
        if len(missing) < len(names):
            raise src.error(reason, line, missing[0])
    raise src.error(reason, line)


def detect_pair_format(
    path: str | os.PathLike[str],
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> PairFormat:
    """Tell a pair file's format from its extension, header and first record.

    Raises:
        FormatError: The file cannot be read or no format fits its fields.
    """
    src = _open_source(path, max_bytes, max_line_bytes)
    try:
        return _detect(src)
    finally:
        src.close()


def _warnings(where: str, pair: PreferencePair) -> list[str]:
    out = [f"{where}: prompt is empty"] if not pair.prompt.strip() else []
    chosen_empty, rejected_empty = not pair.chosen.strip(), not pair.rejected.strip()
    if chosen_empty and rejected_empty:
        out.append(f"{where}: chosen and rejected responses are both empty")
    elif chosen_empty or rejected_empty:
        out.append(f"{where}: {'chosen' if chosen_empty else 'rejected'} response is empty")
    elif pair.chosen == pair.rejected:
        out.append(f"{where}: chosen and rejected responses are identical")
    return out


def read_pairs(
    path: str | os.PathLike[str],
    format: PairFormat | Literal["auto"] = "auto",
    mapping: Mapping[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> ImportReport:
    """Read every preference pair of a file, or none.

    Args:
        path: A .jsonl/.ndjson/.json/.csv/.tsv/.parquet file; all but Parquet may end in
            .gz, .bz2 or .xz (compressed; the format is told by the name before it).
        format: One of ``PAIR_FORMATS``; "auto" detects it ("generic" when a mapping is given).
        mapping: The format's field names -> the file's column names, e.g.
            ``{"prompt": "question", "chosen": "good", "rejected": "bad"}``.
        max_bytes: Larger files (compressed ones: once decompressed) are refused before
            parsing.
        max_line_bytes: Longer lines (line ending included) of JSONL and CSV files are
            refused unparsed; a .json array is bounded by ``max_bytes`` alone.

    Raises:
        FormatError: Anything structural: the whole import is refused.
    """
    src = _open_source(path, max_bytes, max_line_bytes)
    try:
        if format == "auto":
            format = "generic" if mapping else _detect(src)
        if format not in PAIR_FORMATS:
            raise src.error(f"unknown format {format!r}: expected auto, {', '.join(PAIR_FORMATS)}")
        cols, convert = _column_map(src, format, mapping), _CONVERTERS[format]
        report = ImportReport([], format, 0)
        seen: dict[tuple[str, str, str], int] = {}
        for line, record in src.rows:
            pair = convert(_Row(src, line, record, cols, format))
            report.warnings += _warnings(f"{src.unit} {line}", pair)
            first = seen.setdefault((pair.prompt, pair.chosen, pair.rejected), line)
            if first != line:
                report.duplicates.append((first, line))
            report.pairs.append(pair)
    finally:
        src.close()
    if not report.pairs:
        raise src.error("the file holds no records" + (" after the header" if src.columns else ""))
    report.rows_read = len(report.pairs)
    return report


# --------------------------------------------------------------------------- contrast
def _detect_contrast(src: _Source, mapping: Mapping[str, str]) -> ContrastFormat:
    first = src.peek()
    if src.columns is None and first is None:
        raise src.error("the file holds no records")
    keys = set(src.columns if src.columns is not None else first[1])
    for fmt in CONTRAST_FORMATS:
        if all(mapping.get(name, name) in keys for name in FIELDS[fmt]):
            return fmt
    found = ", ".join(sorted(map(str, keys)))
    reason = f"cannot tell the format from its fields ({found}); expected instruction, harmful, "
    line = src.header_line if src.columns is not None else first[0]
    raise src.error(
        reason + "harmless (contrast) or goal, target (advbench); or pass a mapping", line
    )


def read_contrast_set(
    path: str | os.PathLike[str],
    format: ContrastFormat | Literal["auto"] = "auto",
    refusal: str | Sequence[str] | None = None,
    mapping: Mapping[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> list[ContrastItem]:
    """Read a contrastive set: ``instruction,harmful,harmless`` rows, or AdvBench.

    Args:
        path: A .jsonl/.ndjson/.json/.csv/.tsv/.parquet file, as for ``read_pairs``.
        format: "contrast", "advbench" (``goal`` = instruction, ``target`` = harmful) or "auto".
        refusal: The harmless response of every AdvBench item (required for advbench), or
            several, given to the items in turn (``config.VARIED_REFUSALS``).
        mapping: The format's field names -> the file's column names.
        max_bytes: Larger files (compressed ones: once decompressed) are refused.
        max_line_bytes: Longer lines are refused unparsed.

    Raises:
        FormatError: A structural problem, an empty text, or advbench without a refusal.
    """
    src = _open_source(path, max_bytes, max_line_bytes)
    try:
        if format == "auto":
            format = _detect_contrast(src, mapping or {})
        if format not in CONTRAST_FORMATS:
            raise src.error(f"unknown format {format!r}: expected auto, contrast or advbench")
        given = [refusal] if isinstance(refusal, str) else list(refusal or [])
        given = [r for r in given if r.strip()]
        if format == "advbench" and not given:
            raise src.error(
                "AdvBench rows have no harmless response: pass refusal=..., e.g. the paper's "
                f"{PAPER_REFUSAL!r}"
            )
        cols = _column_map(src, format, mapping)
        items = []
        for line, record in src.rows:
            row = _Row(src, line, record, cols, format)
            texts = [row.text(name, nonempty=True) for name in FIELDS[format]]
            if format == "advbench":
                texts.append(given[len(items) % len(given)])
            items.append(ContrastItem(*texts))
    finally:
        src.close()
    if not items:
        raise src.error("the file holds no records" + (" after the header" if src.columns else ""))
    return items


# --------------------------------------------------------------------------- export
def pairs_to_frame(pairs: Sequence[PreferencePair]) -> pd.DataFrame:
    """A table with prompt, chosen, rejected and one column per meta key ("meta." on clashes)."""
    import pandas as pd

    rows = []
    for pair in pairs:
        row: dict[str, Any] = {"prompt": pair.prompt, "chosen": pair.chosen}
        row["rejected"] = pair.rejected
        for key, value in pair.meta.items():
            row[f"meta.{key}" if key in ("prompt", "chosen", "rejected") else key] = value
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["prompt", "chosen", "rejected"])


def write_pairs(pairs: Sequence[PreferencePair], path: str | os.PathLike[str]) -> Path:
    """Write pairs as TRL-style rows (.jsonl, .json, .csv or .parquet); meta keys as columns.

    In CSV and Parquet, list and object values are written as JSON text.
    """
    p = Path(path)
    kind = SUFFIXES.get(p.suffix.lower())
    records = [json_safe(r) for r in pairs_to_frame(pairs).to_dict("records")]
    if kind in ("jsonl", "json"):
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        text = "\n".join(lines) + "\n" if kind == "jsonl" else "[\n" + ",\n".join(lines) + "\n]\n"
        p.write_text(text, encoding="utf-8")
        return p
    if kind not in ("csv", "parquet"):
        raise ValueError(f"cannot write {p.suffix!r}: use .jsonl, .json, .csv or .parquet")
    import pandas as pd

    def cell(value: Any) -> Any:
        return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value

    flat = [{key: cell(value) for key, value in r.items()} for r in records]
    frame = pd.DataFrame(flat, columns=None if flat else ["prompt", "chosen", "rejected"])
    if kind == "csv":
        frame.to_csv(p, index=False, encoding="utf-8")
    else:
        frame.to_parquet(p, index=False)
    return p
