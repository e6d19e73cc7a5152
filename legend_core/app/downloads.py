"""Exports as downloads: the file written by ``exports.export_dataset`` to a temporary
folder, handed back as bytes with its name, MIME type and manifest."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from legend_core.data.store import Store


@dataclass
class ExportFile:
    """An export ready to download: the file's bytes, its name and its manifest."""

    data: bytes
    file_name: str
    mime: str
    manifest: dict[str, Any]

    @property
    def manifest_bytes(self) -> bytes:
        return (json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


MIMES = {"jsonl": "application/jsonl", "csv": "text/csv", "parquet": "application/octet-stream"}


def export_file(store: Store, run_id: int, fmt: str, stem: str, **filters: Any) -> ExportFile:
    """Write an export with ``exports.export_dataset`` to a temporary folder; return it.

    Args:
        store: The store.
        run_id: The margin run.
        fmt: ``jsonl``, ``csv`` or ``parquet``.
        stem: File name without suffix.
        **filters: As ``exports.export_dataset`` takes them.
    """
    from legend_core.data.exports import export_dataset

    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem).strip("._")
    name = f"{safe or 'legend-export'}.{fmt}"
    with tempfile.TemporaryDirectory(prefix="legend-export-") as folder:
        path = Path(folder) / name
        manifest = export_dataset(store, run_id, path, format=fmt, **filters)  # type: ignore[arg-type]
        data = path.read_bytes()
    return ExportFile(data, name, MIMES[fmt], manifest)
