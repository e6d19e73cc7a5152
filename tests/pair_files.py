"""Write preference pairs to a data file, for tests that need one (the app never writes
pair files: it exports margin runs, ``legend_core.data.exports``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from legend_core.data.files import SUFFIXES, json_safe
from legend_core.data.formats import pairs_to_frame
from legend_core.types import PreferencePair


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
