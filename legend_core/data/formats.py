"""Read preference data sets and contrastive sets from files, strictly.

Pair formats: Anthropic HH-RLHF dialogues, PKU-SafeRLHF, TRL (standard and conversational)
and a generic table with a column mapping. Contrastive sets: ``instruction,harmful,harmless``
tables and AdvBench (``goal,target`` plus one fixed refusal). Which files can be read
(JSONL, JSON, CSV/TSV, Parquet, compressed or not), and how, is :mod:`legend_core.data.files`.

An import is all or nothing: any structural problem raises :class:`FormatError` naming the
file, the line (the file line for text files, header included; the 1-based row for Parquet)
and the field. Soft problems (empty responses, duplicate pairs) are kept and reported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from legend_core.config import PAPER_REFUSAL
from legend_core.data.files import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    RowSource,
    json_safe,
    open_source,
    type_name,
)
from legend_core.data.files import FormatError as FormatError  # the error of every import
from legend_core.types import ContrastItem, PreferencePair

if TYPE_CHECKING:
    import pandas as pd


PairFormat = Literal["hh-rlhf", "pku", "trl", "trl-conversational", "generic"]
ContrastFormat = Literal["contrast", "advbench"]
PAIR_FORMATS: tuple[str, ...] = get_args(PairFormat)
CONTRAST_FORMATS: tuple[str, ...] = get_args(ContrastFormat)

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


@dataclass
class ImportReport:
    """The pairs read from a file and what was odd about them (kept, not dropped)."""

    pairs: list[PreferencePair]
    format: str
    rows_read: int
    warnings: list[str] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)


# --------------------------------------------------------------------------- records
class _Row:
    """One record being converted; ``cols`` maps the format's fields to file columns."""

    def __init__(self, src: RowSource, line: int, record: dict, cols: dict[str, str], fmt: str):
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
            raise self.error(f"expected a string, got {type_name(value)}", name)
        if nonempty and not value.strip():
            raise self.error("the text is empty", name)
        return value

    def meta(self, *used: str) -> dict[str, Any]:
        skip = {self.cols[name] for name in used}
        return {str(k): json_safe(v) for k, v in self.record.items() if k not in skip}


def _column_map(src: RowSource, fmt: str, mapping: Mapping[str, str] | None) -> dict[str, str]:
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
        got = repr(safer)[:40] if isinstance(safer, (int, float, str)) else type_name(safer)
        raise row.error(f"must be 0 or 1, got {got}", "safer_response_id")
    chosen, rejected = (first, second) if safer == 0 else (second, first)
    return PreferencePair(prompt, chosen, rejected, row.meta("prompt", "response_0", "response_1"))


def _messages(row: _Row, name: str) -> list[dict[str, str]]:
    value = row.value(name)
    if name == "prompt" and isinstance(value, str):  # a plain-text prompt: one user turn
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list) or (not value and name != "prompt"):
        got = "an empty list" if value == [] else type_name(value)
        raise row.error(f"expected a non-empty list of messages, got {got}", name)
    out = []
    for i, message in enumerate(value, 1):
        if not isinstance(message, Mapping):
            raise row.error(f"message {i} is {type_name(message)}, not an object", name)
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = type_name(message.get(key)) if key in message else "nothing"
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


def _detect(src: RowSource) -> PairFormat:
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
    src = open_source(path, max_bytes, max_line_bytes)
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
def _detect_contrast(src: RowSource, mapping: Mapping[str, str]) -> ContrastFormat:
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
    src = open_source(path, max_bytes, max_line_bytes)
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
