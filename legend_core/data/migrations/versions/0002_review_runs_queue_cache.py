"""Reviews remember their margin run; an index for the review queue; the embedding cache.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02 00:00:00

- ``reviews.run_id`` (nullable, ``ON DELETE SET NULL``): an override is a margin on one
  direction's scale, so it belongs to a run. Reviews written before this revision keep
  ``run_id`` NULL and count for every run of their pair.
- ``ix_margins_run_value`` on ``margins (run_id, value, pair_id)``: the review queue walks
  margins in ascending order without sorting.
- ``embedding_spaces`` and ``embeddings``: cached hidden states, so that a new direction
  re-annotates a data set without running the model again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add reviews.run_id, the queue index and the embedding cache tables."""
    # On SQLite, batch mode copies the table to add the foreign key; nothing references
    # ``reviews``, so the copy cannot cascade anywhere.
    with op.batch_alter_table("reviews") as batch:
        batch.add_column(sa.Column("run_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_reviews_run_id", "margin_runs", ["run_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_reviews_run_id", ["run_id"])
    op.create_index("ix_margins_run_value", "margins", ["run_id", "value", "pair_id"])
    op.create_table(
        "embedding_spaces",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("model_fingerprint", sa.String(255), nullable=False),
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column("pooling", sa.String(32), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("max_length", sa.Integer(), nullable=False),
        sa.UniqueConstraint("key", name="uq_embedding_spaces_key"),
    )
    op.create_table(
        "embeddings",
        sa.Column(
            "space_id",
            sa.Integer(),
            sa.ForeignKey("embedding_spaces.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("key", sa.LargeBinary(32), primary_key=True),
        sa.Column("dtype", sa.String(8), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    """Remove what upgrade added (development only: Store never downgrades)."""
    op.drop_table("embeddings")
    op.drop_table("embedding_spaces")
    op.drop_index("ix_margins_run_value", table_name="margins")
    with op.batch_alter_table("reviews") as batch:
        batch.drop_index("ix_reviews_run_id")
        batch.drop_constraint("fk_reviews_run_id", type_="foreignkey")
        batch.drop_column("run_id")
