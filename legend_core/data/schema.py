"""The database schema: SQLAlchemy 2.x ORM models for everything that lasts.

The tables are created and changed only by the Alembic migrations in
``legend_core/migrations``; these models describe the schema at the head revision, and a
test checks that the two agree. Nothing here is specific to one database: types are the
portable ones (``JSON``, ``LargeBinary``, ``Double``) and times are stored as UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Re-exported: the one list of review actions is the policy's.
from legend_core.review.policy import ACTIONS as ACTIONS


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (microsecond resolution)."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back as an aware UTC datetime.

    Aware values are converted to UTC before they are written; naive ones are taken to be
    UTC already. Databases without time zones (SQLite) keep the UTC wall time.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        # Aware UTC everywhere: databases with time zones keep the instant, SQLite's
        # DATETIME writes the UTC wall time and ignores tzinfo.
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of all Legend tables (constraint names match the migrations)."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s",
        }
    )


class Dataset(Base):
    """An imported preference data set."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    source: Mapped[str] = mapped_column(Text, default="")
    format: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    n_pairs: Mapped[int] = mapped_column(Integer, default=0)


class Pair(Base):
    """One preference pair of a data set; ``idx`` is its position in the imported file."""

    __tablename__ = "pairs"
    __table_args__ = (
        UniqueConstraint("dataset_id", "idx", name="uq_pairs_dataset_idx"),
        Index("ix_pairs_dataset_hash", "dataset_id", "content_hash"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    chosen: Mapped[str] = mapped_column(Text)
    rejected: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    content_hash: Mapped[str] = mapped_column(String(64))
    # util.text_key of (prompt, chosen) and (prompt, rejected), written at import (0006): a
    # margin run finds its cached vectors without reading or hashing the texts. Nullable
    # only because SQLite cannot add a NOT NULL column; the store fills any that is missing.
    chosen_key: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    rejected_key: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)


class ContrastSet(Base):
    """A contrastive set: harmful instructions with a harmful and a harmless response."""

    __tablename__ = "contrast_sets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    source: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    n_items: Mapped[int] = mapped_column(Integer, default=0)


class ContrastItemRow(Base):
    """One item of a contrastive set, in input order."""

    __tablename__ = "contrast_items"
    __table_args__ = (UniqueConstraint("set_id", "idx", name="uq_contrast_items_set_idx"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("contrast_sets.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)
    instruction: Mapped[str] = mapped_column(Text)
    harmful: Mapped[str] = mapped_column(Text)
    harmless: Mapped[str] = mapped_column(Text)


class DirectionRow(Base):
    """A safety direction: the exact float32 vector and its full metadata."""

    __tablename__ = "directions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    model: Mapped[str] = mapped_column(Text)
    layer: Mapped[int] = mapped_column(Integer)
    pooling: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(32))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MarginRun(Base):
    """One annotation of a data set with a direction under some settings."""

    __tablename__ = "margin_runs"
    __table_args__ = (
        UniqueConstraint(
            "dataset_id", "direction_id", "settings_key", name="uq_margin_runs_settings"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    direction_id: Mapped[int] = mapped_column(
        ForeignKey("directions.id", ondelete="CASCADE"), index=True
    )
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    settings_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="running")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Margin(Base):
    """The computed margin of one pair in one run (relative to the imported chosen).

    Laid out so that a run's margins sit together (revision 0007): the primary key
    ``(run_id, pair_id)`` is the table itself on SQLite (``WITHOUT ROWID``), and the only
    other index is the queue's ``(run_id, value, pair_id)``. Nothing is ordered by pair
    first, so writing a new run touches only that run's pages, however many runs the data
    set has (an index on ``pair_id`` had every one of its pages rewritten by every run:
    BENCHMARKS.md §3).

    ``pair_id`` has no foreign key, on purpose: a margin's pair is a pair of its run's data
    set (``Store.add_margins`` refuses any other, in the insert's transaction), so the
    pair and the margin go together when the data set is deleted (``datasets`` ->
    ``margin_runs`` -> ``margins`` cascade by run), and pairs are never deleted alone. A
    foreign key would need the pair-first index above, or a scan of every margin per
    deleted pair.
    """

    __tablename__ = "margins"
    __table_args__ = (
        # The review queue walks this index in order (ORDER BY value, pair_id) and seeks in
        # it by key, a step at a time (data/store/keyset.py).
        Index("ix_margins_run_value", "run_id", "value", "pair_id"),
        {"sqlite_with_rowid": False},
    )

    run_id: Mapped[int] = mapped_column(
        ForeignKey("margin_runs.id", ondelete="CASCADE"), primary_key=True
    )
    pair_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[float] = mapped_column(Double)


class Review(Base):
    """An append-only review of a pair: who, when, which action, value and note.

    Reviews belong to the pair (see :mod:`legend_core.review.policy`). ``run_id`` records
    the margin run it was made in (NULL when made without one, or once that run is
    deleted); ``direction_id`` the direction of that run, kept after the direction is
    deleted (no foreign key), because an override's number is on that direction's scale.
    """

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint(
            "action IN ('accept', 'override', 'flip', 'flag', 'unflag', 'withdraw')",
            name="ck_reviews_action",
        ),
        Index("ix_reviews_pair", "pair_id", "id"),
        # Ids are never handed out twice (revision 0008): data/store/reviewed.py reads the
        # reviews after the last id it saw.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("margin_runs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    direction_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    annotator: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(16))
    value: Mapped[float | None] = mapped_column(Double, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EmbeddingSpaceRow(Base):
    """Everything that changes an embedding except the text; ``key`` hashes the fields."""

    __tablename__ = "embedding_spaces"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str] = mapped_column(Text)
    model_fingerprint: Mapped[str] = mapped_column(String(255))
    template: Mapped[str] = mapped_column(Text)
    pooling: Mapped[str] = mapped_column(String(32))
    layer: Mapped[int] = mapped_column(Integer)
    max_length: Mapped[int] = mapped_column(Integer)
    model_dtype: Mapped[str] = mapped_column(String(16), server_default="")


class EmbeddingBlock(Base):
    """Cached hidden states of one space in one block (see :mod:`legend_core.data.store.blocks`).

    ``key_data`` is ``n`` keys of :func:`legend_core.util.text_key` (32 bytes each,
    ascending); ``vector_data`` the ``n`` × ``dim`` values, row-major, little-endian ``dtype``
    (``<f2`` or ``<f4``); ``checksum`` a CRC-32 of the header, keys and vectors. The small
    columns come first: SQLite reads a row's columns in order, so the keys are read
    without walking the vectors' overflow pages.
    """

    __tablename__ = "embedding_blocks"
    # Block ids are never reused (SQLite would reuse the largest after a delete): a reader
    # that found a key's block id in the index must never read another block under it.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    space_id: Mapped[int] = mapped_column(
        ForeignKey("embedding_spaces.id", ondelete="CASCADE"), index=True
    )
    n: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(8))
    dim: Mapped[int] = mapped_column(Integer)
    checksum: Mapped[str] = mapped_column(String(32))
    key_data: Mapped[bytes] = mapped_column(LargeBinary)
    vector_data: Mapped[bytes] = mapped_column(LargeBinary)


class EmbeddingKey(Base):
    """Where a cached text's vector is: one row per key, unique in its space (the first
    block to claim a key keeps it)."""

    __tablename__ = "embedding_keys"

    space_id: Mapped[int] = mapped_column(
        ForeignKey("embedding_spaces.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    block_id: Mapped[int] = mapped_column(
        ForeignKey("embedding_blocks.id", ondelete="CASCADE"), index=True
    )
    row_no: Mapped[int] = mapped_column(Integer)
