"""Margins are stored by run: no index or foreign key on ``pair_id`` alone.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 00:00:00

- ``ix_margins_pair_id`` is dropped, and with it the foreign key ``margins.pair_id ->
  pairs.id`` that needed it. The index was ordered by pair first, so a run's new margins
  landed one on each of its pages: every new run of a data set rewrote the whole index,
  and the more runs a data set had, the slower the next one was written (100,000 margins
  next to 1.6 million others: 1.08 s against 0.56 s without it, BENCHMARKS.md §3).
  Nothing reads margins by pair without their run. A margin's pair stays a pair of its
  run's data set: ``Store.add_margins`` refuses any other in the insert's transaction, and
  margins go with their run (``margin_runs -> margins`` cascades), which goes with its
  data set; pairs are deleted only with their data set.
- On SQLite the table is rebuilt ``WITHOUT ROWID``: the primary key ``(run_id, pair_id)``
  is the table, one b-tree fewer to write and a third less space. Rows are copied in
  primary-key order, in the migration's transaction.
- On PostgreSQL the constraint and the index are dropped in place.

The table definitions are written out here, not imported, so that this revision keeps
doing what it did when the models move on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rebuild_sqlite(with_rowid: bool, pair_foreign_key: bool) -> None:
    """Copy ``margins`` into a new table of the given layout, then put its indexes back."""
    pair_reference = (
        ",\n  CONSTRAINT fk_margins_pair_id FOREIGN KEY(pair_id) REFERENCES pairs (id)"
        " ON DELETE CASCADE"
        if pair_foreign_key
        else ""
    )
    op.execute(
        "CREATE TABLE margins_new (\n"
        "  run_id INTEGER NOT NULL,\n"
        "  pair_id INTEGER NOT NULL,\n"
        "  value DOUBLE NOT NULL,\n"
        "  PRIMARY KEY (run_id, pair_id),\n"
        "  CONSTRAINT fk_margins_run_id FOREIGN KEY(run_id) REFERENCES margin_runs (id)"
        f" ON DELETE CASCADE{pair_reference}\n"
        ")" + ("" if with_rowid else " WITHOUT ROWID")
    )
    op.execute(
        "INSERT INTO margins_new (run_id, pair_id, value)"
        " SELECT run_id, pair_id, value FROM margins ORDER BY run_id, pair_id"
    )
    # Nothing references margins, so dropping it cascades nowhere.
    op.execute("DROP TABLE margins")
    op.execute("ALTER TABLE margins_new RENAME TO margins")
    op.create_index("ix_margins_run_value", "margins", ["run_id", "value", "pair_id"])
    if pair_foreign_key:
        op.create_index("ix_margins_pair_id", "margins", ["pair_id"])


def upgrade() -> None:
    """Drop the pair-first index and foreign key; SQLite's table becomes WITHOUT ROWID."""
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(with_rowid=False, pair_foreign_key=False)
        return
    op.drop_constraint("fk_margins_pair_id", "margins", type_="foreignkey")
    op.drop_index("ix_margins_pair_id", table_name="margins")


def downgrade() -> None:
    """Put the index and the foreign key back (a margin whose pair is gone is dropped)."""
    op.execute(sa.text("DELETE FROM margins WHERE pair_id NOT IN (SELECT id FROM pairs)"))
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(with_rowid=True, pair_foreign_key=True)
        return
    op.create_index("ix_margins_pair_id", "margins", ["pair_id"])
    op.create_foreign_key(
        "fk_margins_pair_id", "margins", "pairs", ["pair_id"], ["id"], ondelete="CASCADE"
    )
