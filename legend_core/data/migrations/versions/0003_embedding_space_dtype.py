"""The embedding cache records the dtype of the forward pass.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 00:00:00

- ``embedding_spaces.model_dtype``: a float32 and a bfloat16 pass of the same model give
  slightly different vectors, so they are different spaces. Spaces cached before this
  revision get ``''`` (unknown) and keep their key, so old runs still find their vectors;
  new runs never reuse them, since a new space always names its dtype.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add embedding_spaces.model_dtype."""
    with op.batch_alter_table("embedding_spaces") as batch:
        batch.add_column(sa.Column("model_dtype", sa.String(16), nullable=False, server_default=""))


def downgrade() -> None:
    """Drop embedding_spaces.model_dtype."""
    with op.batch_alter_table("embedding_spaces") as batch:
        batch.drop_column("model_dtype")
