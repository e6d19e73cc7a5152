"""Small helpers every layer uses: slicing into chunks, the project's content hashes, and
plain-text tables.

The hashes are part of stored data (cache keys, pair identities, direction provenance):
changing one orphans what was stored with it, so each is defined once, here.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    """Hex SHA-256 of a file's bytes (of its first ``limit`` bytes when given), read in 1 MiB
    blocks so a multi-GB weights file never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        remaining = limit
        while chunk := handle.read(1 << 20 if remaining is None else min(1 << 20, remaining)):
            digest.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
    return digest.hexdigest()


def text_key(prompt: str, response: str) -> bytes:
    """The 32-byte SHA-256 digest of ``prompt + "\\x1f" + response``: an embedding's key."""
    return hashlib.sha256(f"{prompt}\x1f{response}".encode()).digest()


def pair_text_keys(prompt: str, chosen: str, rejected: str) -> tuple[bytes, bytes]:
    """``(text_key(prompt, chosen), text_key(prompt, rejected))``, hashing the prompt once
    (UTF-8 of a concatenation is the concatenation of the parts' UTF-8)."""
    head = hashlib.sha256(f"{prompt}\x1f".encode())
    tail = head.copy()
    head.update(chosen.encode())
    tail.update(rejected.encode())
    return head.digest(), tail.digest()


def pair_hash(prompt: str, chosen: str, rejected: str) -> str:
    """Hex SHA-256 of a pair's three texts: finds duplicates across imports, and lets a
    learned direction recognise its own training pairs in a file or a stored data set."""
    return hashlib.sha256(f"{prompt}\x1f{chosen}\x1f{rejected}".encode()).hexdigest()


def format_table(rows: Sequence[dict[str, Any]], percent: Sequence[str] = ()) -> str:
    """Rows of dicts as an aligned plain-text table; ``percent`` columns shown as %."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])

    def cell(key: str, value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "n/a"
            return f"{value:.1%}" if key in percent else f"{value:.4g}"
        return str(value)

    table = [[cell(k, row.get(k, "")) for k in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += [
        "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
        for r in table
    ]
    return "\n".join(lines)
