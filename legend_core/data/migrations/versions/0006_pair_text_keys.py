"""Pairs record the cache keys of their two texts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 00:00:00

- ``pairs.chosen_key`` and ``pairs.rejected_key``: ``text_key(prompt, chosen)`` and
  ``text_key(prompt, rejected)`` (SHA-256 of prompt, a 0x1f separator and the response,
  32 bytes), the keys of the pair's two vectors in the embedding cache. A margin run reads
  these instead of reading and hashing every text of its data set (on HH-RLHF-sized pairs
  that was most of a cached run's time, BENCHMARKS.md §3); it reads texts only for the
  pairs it must encode.
- Every existing pair gets its keys here, a page of pairs at a time in id order (memory
  stays bounded whatever the data set's size). The columns stay nullable: SQLite cannot
  add a NOT NULL column without a default, and rebuilding ``pairs`` to add one would
  cascade deletes into margins and reviews inside the migration's transaction. The store
  writes both keys with every pair it imports, and computes any key still missing from the
  texts.

The hash is written out here, not imported, so that this revision keeps doing what it did
when the application's code moves on; a test checks it against ``util.text_key``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Pairs read and updated per query.
PAGE = 2_000


def _key(prompt: str, response: str) -> bytes:
    """``legend_core.util.text_key`` as of this revision."""
    return hashlib.sha256(f"{prompt}\x1f{response}".encode()).digest()


def upgrade() -> None:
    """Add pairs.chosen_key and pairs.rejected_key, and fill them for every stored pair."""
    # Plain ALTER TABLE ... ADD COLUMN (no batch copy of the table, see above).
    op.add_column("pairs", sa.Column("chosen_key", sa.LargeBinary(32), nullable=True))
    op.add_column("pairs", sa.Column("rejected_key", sa.LargeBinary(32), nullable=True))
    bind = op.get_bind()
    read = sa.text(
        "SELECT id, prompt, chosen, rejected FROM pairs WHERE id > :last ORDER BY id LIMIT :n"
    )
    write = sa.text("UPDATE pairs SET chosen_key = :c, rejected_key = :r WHERE id = :id")
    last = 0
    while True:
        page = bind.execute(read, {"last": last, "n": PAGE}).all()
        if not page:
            break
        last = page[-1][0]
        bind.execute(
            write,
            [
                {"id": i, "c": _key(prompt, chosen), "r": _key(prompt, rejected)}
                for i, prompt, chosen, rejected in page
            ],
        )


def downgrade() -> None:
    """Drop pairs.chosen_key and pairs.rejected_key (plain ALTER TABLE ... DROP COLUMN)."""
    op.drop_column("pairs", "rejected_key")
    op.drop_column("pairs", "chosen_key")
