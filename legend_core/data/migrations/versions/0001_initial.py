"""Initial schema: data sets, pairs, contrastive sets, directions, margin runs, reviews.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

Written by hand (not from the ORM models) so that it stays what it was when later revisions
change the models. Reviews here have no ``run_id`` yet and there is no embedding cache:
revision 0002 adds both.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the initial tables."""
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n_pairs", sa.Integer(), nullable=False),
        sa.UniqueConstraint("name", name="uq_datasets_name"),
    )
    op.create_table(
        "pairs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "dataset_id",
            sa.Integer(),
            sa.ForeignKey("datasets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("chosen", sa.Text(), nullable=False),
        sa.Column("rejected", sa.Text(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("dataset_id", "idx", name="uq_pairs_dataset_idx"),
    )
    op.create_index("ix_pairs_dataset_hash", "pairs", ["dataset_id", "content_hash"])
    op.create_table(
        "contrast_sets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n_items", sa.Integer(), nullable=False),
        sa.UniqueConstraint("name", name="uq_contrast_sets_name"),
    )
    op.create_table(
        "contrast_items",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "set_id",
            sa.Integer(),
            sa.ForeignKey("contrast_sets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("harmful", sa.Text(), nullable=False),
        sa.Column("harmless", sa.Text(), nullable=False),
        sa.UniqueConstraint("set_id", "idx", name="uq_contrast_items_set_idx"),
    )
    op.create_table(
        "directions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("pooling", sa.String(32), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "margin_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "dataset_id",
            sa.Integer(),
            sa.ForeignKey("datasets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "direction_id",
            sa.Integer(),
            sa.ForeignKey("directions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("settings_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint(
            "dataset_id", "direction_id", "settings_key", name="uq_margin_runs_settings"
        ),
    )
    op.create_index("ix_margin_runs_dataset_id", "margin_runs", ["dataset_id"])
    op.create_index("ix_margin_runs_direction_id", "margin_runs", ["direction_id"])
    op.create_table(
        "margins",
        sa.Column(
            "run_id",
            sa.Integer(),
            sa.ForeignKey("margin_runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "pair_id",
            sa.Integer(),
            sa.ForeignKey("pairs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("value", sa.Double(), nullable=False),
    )
    op.create_index("ix_margins_pair_id", "margins", ["pair_id"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "pair_id",
            sa.Integer(),
            sa.ForeignKey("pairs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("annotator", sa.String(255), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "action IN ('accept', 'override', 'flip', 'flag', 'unflag')",
            name="ck_reviews_action",
        ),
    )
    op.create_index("ix_reviews_pair", "reviews", ["pair_id", "id"])


def downgrade() -> None:
    """Drop everything (only for development: Store never downgrades)."""
    for index, table in [
        ("ix_reviews_pair", "reviews"),
        ("ix_margins_pair_id", "margins"),
        ("ix_margin_runs_direction_id", "margin_runs"),
        ("ix_margin_runs_dataset_id", "margin_runs"),
        ("ix_pairs_dataset_hash", "pairs"),
    ]:
        op.drop_index(index, table_name=table)
    for table in [
        "reviews",
        "margins",
        "margin_runs",
        "directions",
        "contrast_items",
        "contrast_sets",
        "pairs",
        "datasets",
    ]:
        op.drop_table(table)
