"""Reviews follow the pair: a 'withdraw' action, and the direction an override was made on.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 00:00:00

- ``ck_reviews_action`` allows ``withdraw`` (an annotator takes their verdict back).
- ``reviews.direction_id`` (nullable, no foreign key): the direction of the run a review
  was made in. Reviews now count in every run of their pair (see
  ``legend_core.review.policy``); an override's number is on one direction's scale, and
  this column keeps that scale known after the run or the direction is deleted. Filled
  here from each review's run; reviews without a run keep NULL.

No review row is changed otherwise or removed: history reads with the new meanings.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_CHECK = "action IN ('accept', 'override', 'flip', 'flag', 'unflag', 'withdraw')"
OLD_CHECK = "action IN ('accept', 'override', 'flip', 'flag', 'unflag')"


def upgrade() -> None:
    """Allow 'withdraw'; add and fill reviews.direction_id."""
    with op.batch_alter_table("reviews") as batch:
        batch.drop_constraint("ck_reviews_action", type_="check")
        batch.create_check_constraint("ck_reviews_action", NEW_CHECK)
        batch.add_column(sa.Column("direction_id", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE reviews SET direction_id = (SELECT margin_runs.direction_id FROM margin_runs "
        "WHERE margin_runs.id = reviews.run_id) WHERE run_id IS NOT NULL"
    )


def downgrade() -> None:
    """Drop the column and the new action (refused while 'withdraw' reviews exist: the
    old schema cannot hold them, and reviews are never deleted silently)."""
    count = (
        op.get_bind()
        .execute(sa.text("SELECT COUNT(*) FROM reviews WHERE action = 'withdraw'"))
        .scalar()
    )
    if count:
        raise RuntimeError(f"{count} 'withdraw' reviews exist: 0003 cannot hold them")
    with op.batch_alter_table("reviews") as batch:
        batch.drop_column("direction_id")
        batch.drop_constraint("ck_reviews_action", type_="check")
        batch.create_check_constraint("ck_reviews_action", OLD_CHECK)
