"""Review ids are never reused (SQLite ``AUTOINCREMENT``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 00:00:00

SQLite gives a new row the highest id plus one, so deleting the reviews with the highest
ids (a data set's, deleted with it) let the next reviews take those ids again. The store
keeps which pairs of a run are reviewed up to date by reading the reviews after the last
id it saw, and checks the reviews below it by their count and id sum
(``data/store/reviewed.py``); a reused id would pass that check with different content.
With ``AUTOINCREMENT`` an id is never handed out twice (PostgreSQL's sequences never did).
The table is copied (Alembic's batch mode) with its constraints and indexes; SQLite
starts the sequence at the highest id copied.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _recreate(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    kwargs = {"sqlite_autoincrement": True} if autoincrement else {}
    with op.batch_alter_table("reviews", recreate="always", table_kwargs=kwargs):
        pass


def upgrade() -> None:
    """SQLite: copy ``reviews`` into a table whose ids are never reused."""
    _recreate(autoincrement=True)


def downgrade() -> None:
    """SQLite: copy ``reviews`` back into a plain table."""
    _recreate(autoincrement=False)
