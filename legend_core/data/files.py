"""Open data files strictly: the suffix table, compression, size caps, and row sources.

Files: JSON Lines (``.jsonl``, ``.ndjson``; a ``.json`` file not starting with ``[``), JSON
arrays of objects (``.json``), CSV/TSV with a header row, and Parquet. The text kinds may be
compressed as downloaded (``dev.jsonl.gz``; ``.gz``, ``.bz2``, ``.xz``): they are decompressed
as a stream, line numbers count lines of the decompressed text, and the size limit counts
decompressed bytes, checked before parsing, so a decompression bomb is refused. Binary files
(known magic numbers, NUL bytes) and text that is not UTF-8 are refused.

:func:`open_source` gives a file's records as (line, dict) with the header when it has one;
what the records mean (pair and contrastive formats) is :mod:`legend_core.data.formats`'s.
Any structural problem raises :class:`FormatError` naming the file, the line (the file line
for text files, header included; the 1-based row for Parquet) and the field.
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

#: Default limits: a file's (decompressed) bytes, and one line's bytes (JSONL, CSV).
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024

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


# --------------------------------------------------------------------------- sources
@dataclass
class RowSource:
    """An opened file: its records as (line, dict), and the header when it has one."""

    path: Path
    rows: Iterator[tuple[int, dict[str, Any]]]
    columns: list[str] | None = None
    header_line: int | None = None
    unit: str = "line"

    def error(self, reason: str, line: int | None = None, field: str | None = None) -> FormatError:
        """A :class:`FormatError` at this file (and line and field, when given)."""
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
        """Close the file (a reader that stops early must, or the file stays open)."""
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


def open_source(path: str | os.PathLike[str], max_bytes: int, max_line_bytes: int) -> RowSource:
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
        return RowSource(p, _json_array_rows(file))
    return RowSource(p, _jsonl_rows(file, max_line_bytes, json_suffix=kind == "json"))


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
            raise FormatError(path, f"expected a JSON object, got {type_name(value)}", number)
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
                raise FormatError(path, f"expected a JSON object, got {type_name(value)}", start)
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


def _csv_source(file: _File, max_line_bytes: int, delimiter: str) -> RowSource:
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

    source = RowSource(path, dicts(), header, header_line)
    source._generator = lines
    return source


def _parquet_source(path: Path, max_bytes: int) -> RowSource:
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

    return RowSource(path, rows(), list(table.column_names), None, "row")


# --------------------------------------------------------------------------- fields
def type_name(value: Any) -> str:
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
    """``value`` as plain JSON types: numpy/pandas scalars unwrapped, NaN and NaT as None
    (PostgreSQL's JSON refuses NaN, and JSON itself has no such number)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):  # numpy's float64 too: made a plain float
        return float(value) if math.isfinite(value) else None
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
