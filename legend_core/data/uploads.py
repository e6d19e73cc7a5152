"""Files uploaded through the app: kept under a private folder, pruned after a day.

Imports read from a real file (so that errors can name lines, and the size limit is
checked before reading), hence uploads are written to disk first; nothing else would
ever delete them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

#: Where uploads go; one folder per upload.
UPLOADS = Path(tempfile.gettempdir()) / "legend-studio-uploads"
#: Uploads older than this are deleted when the next one is saved.
MAX_AGE_S = 24 * 3600


def save_upload(
    file_id: str, name: str, data: bytes, folder: Path = UPLOADS, max_age_s: float = MAX_AGE_S
) -> Path:
    """Write an upload to ``folder/<file_id>/<name>`` (once), pruning old uploads first.

    Args:
        file_id: The uploader's id of this upload (a new id for every upload).
        name: The file's name as the user's browser gave it; only its last part is used.
        data: The file's bytes.
        folder: The uploads folder.
        max_age_s: Uploads last written longer ago than this are deleted.

    Returns:
        The saved file.
    """
    prune_uploads(folder, max_age_s, keep=file_id)
    target_dir = folder / Path(file_id).name
    target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = target_dir / (Path(name).name or "upload")
    if not target.exists():
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, target)  # a reader never sees half a file
    return target


def prune_uploads(folder: Path = UPLOADS, max_age_s: float = MAX_AGE_S, keep: str = "") -> int:
    """Delete upload folders not written for ``max_age_s`` seconds; returns how many."""
    if not folder.is_dir():
        return 0
    cutoff = time.time() - max_age_s
    removed = 0
    for entry in folder.iterdir():
        try:
            if entry.name != keep and entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry)
                removed += 1
        except OSError:  # another app process pruned it first
            continue
    return removed
