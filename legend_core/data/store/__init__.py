"""Everything that lasts, behind SQLAlchemy: data sets, directions, margin runs, reviews.

``Store(url)`` opens any SQLAlchemy URL (a SQLite file by default, see
:func:`legend_core.config.database_url`) and upgrades its schema to the newest Alembic
revision; it never drops anything. The ORM models live in :mod:`legend_core.data.schema`.

Reviews are append-only and belong to the pair, not to one run: every run of a pair reads
all its reviews. What they add up to is decided by :mod:`legend_core.review.policy` (the
one place the policy is written); the store only fetches the reviews and hands the policy
the admins' names it is given (it never reads the users file). A pair is *reviewed* when
someone holds a current verdict on it (accept, flip or override not withdrawn); a flag
alone is not a verdict.

The store is one class made of parts, a module each, all subclasses of
:class:`~legend_core.data.store.engine.StoreBase`:

- ``engine``: the engine, the database specifics (the only dialect-specific code: SQLite's
  pragmas and file folder, a statistics refresh for PostgreSQL's planner, ``INSERT ... ON
  CONFLICT DO NOTHING``), retries on lock contention, the schema upgrade;
- ``records``: the plain records handed out;
- ``datasets``, ``contrast_sets``, ``directions``, ``runs`` (margins and the run's frame),
  ``reviews``, ``queue`` (the review order; ``keyset`` reads it by keys), ``cache`` (the
  embedding cache's methods) and ``blocks`` (the cache's block format, reads and writes);
- ``verdicts``: what "reviewed" means in SQL.

Nothing here imports torch: the store runs on a machine without the model.
"""

from __future__ import annotations

from legend_core.data.store.cache import CacheMixin
from legend_core.data.store.contrast_sets import ContrastSetsMixin
from legend_core.data.store.datasets import DatasetsMixin
from legend_core.data.store.directions import DirectionsMixin
from legend_core.data.store.engine import (
    BIG_INSERT,
    BULK_IN_CHUNK,
    IN_CHUNK,
    INSERT_CHUNK,
    NotFoundError,
    StoreBase,
    insert_or_skip,
    make_engine,
)
from legend_core.data.store.queue import QueueMixin
from legend_core.data.store.records import (
    ContrastSetInfo,
    DatasetInfo,
    DirectionInfo,
    EmbeddingSpace,
    PairKeys,
    PairRecord,
    PairText,
    QueueStep,
    ReviewInfo,
    RunInfo,
)
from legend_core.data.store.reviews import ReviewsMixin
from legend_core.data.store.runs import RunsMixin

__all__ = [
    "BIG_INSERT",
    "BULK_IN_CHUNK",
    "INSERT_CHUNK",
    "IN_CHUNK",
    "ContrastSetInfo",
    "DatasetInfo",
    "DirectionInfo",
    "EmbeddingSpace",
    "NotFoundError",
    "PairKeys",
    "PairRecord",
    "PairText",
    "QueueStep",
    "ReviewInfo",
    "RunInfo",
    "Store",
    "StoreBase",
    "insert_or_skip",
    "make_engine",
]


class Store(
    DatasetsMixin,
    ContrastSetsMixin,
    DirectionsMixin,
    RunsMixin,
    ReviewsMixin,
    QueueMixin,
    CacheMixin,
    StoreBase,
):
    """The Legend database: open it with a URL, use it from any thread or process.

    ``Store(url)`` (``None``: :func:`legend_core.config.database_url`) opens the database
    and upgrades it to the newest schema; every method is one or more transactions of its
    own, retried while the database reports lock contention.
    """
