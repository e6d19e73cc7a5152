"""The review queue: a run's pairs in review order, and how many are reviewed.

The queue order lives here and in :mod:`legend_core.data.store.keyset` (the same order,
read by keys): :meth:`QueueMixin.review_queue` lists a queue, :meth:`QueueMixin.queue_step`
answers where one pair stands in it without reading the rest.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from legend_core.data.schema import Margin, Pair
from legend_core.data.store import keyset
from legend_core.data.store.engine import BULK_IN_CHUNK, StoreBase
from legend_core.data.store.records import QueueStep
from legend_core.data.store.reviewed import ReviewedPairs
from legend_core.data.store.verdicts import _has_verdict
from legend_core.util import chunks

#: Below this many unreviewed pairs, "next unreviewed" is found among them (their keys, by
#: the primary key) rather than by reading the queue on past the reviewed ones.
FEW_UNREVIEWED = 2_000

_TRACKER_LOCK = threading.Lock()

Order = Literal["disagreement", "least_sure", "index"]


class QueueMixin(StoreBase):
    """The review queue of a margin run."""

    @staticmethod
    def _reviewed(annotator: str | None = None) -> Any:
        """SQL condition on ``Margin``: someone (``annotator``, if given) holds a current
        verdict on its pair; reviews of every run count."""
        return _has_verdict(Margin.pair_id, annotator)

    def _queue_query(
        self,
        s: Session,
        run_id: int,
        order: str,
        unreviewed_only: bool,
        annotator: str | None = None,
    ) -> Select[tuple[int]]:
        """The run's pair ids in review order; ``disagreement`` and ``index`` walk an index,
        ``least_sure`` sorts (by ``|margin|``, no index can give that order)."""
        run = self._run(s, run_id)
        query = select(Margin.pair_id).where(Margin.run_id == run_id)
        if order == "disagreement":
            query = query.order_by(Margin.value, Margin.pair_id)
        elif order == "least_sure":
            query = query.order_by(func.abs(Margin.value), Margin.pair_id)
        elif order == "index":
            query = (
                query.join(Pair, Pair.id == Margin.pair_id)
                .where(Pair.dataset_id == run.dataset_id)
                .order_by(Pair.idx)
            )
        else:
            raise ValueError(
                f"unknown order {order!r}; use 'disagreement', 'least_sure' or 'index'"
            )
        if unreviewed_only:
            query = query.where(~self._reviewed(annotator))
        return query

    def review_queue(
        self,
        run_id: int,
        order: Order = "disagreement",
        pair_ids: Sequence[int] | None = None,
        unreviewed_only: bool = False,
        annotator: str | None = None,
    ) -> list[int]:
        """Pair ids of the run (pairs with a computed margin) in review order.

        ``disagreement``: ascending computed margin, which puts negative margins first
        (most negative first) and then the rest by |margin| ascending; ties by pair id.
        ``least_sure``: ascending ``|margin|``, the pairs the direction is least sure of
        first, whichever side it leans to (a review there teaches a learned direction most);
        ties by pair id. ``index``: input order. ``pair_ids``
        restricts the queue to those pairs.
        ``unreviewed_only`` leaves out pairs someone (``annotator``, if given) holds a
        current verdict on (a flag alone is no verdict).
        """
        with self._session() as s:
            if pair_ids is None:
                return list(
                    s.scalars(self._queue_query(s, run_id, order, unreviewed_only, annotator))
                )
            # A selection: read its own rows only (looked up by pair id), then sort them
            # by their keys, which sort exactly as the queue's ORDER BY.
            walks = keyset.walks(order, self._run(s, run_id).dataset_id)
            extra = (~self._reviewed(annotator),) if unreviewed_only else ()
            found: list[keyset.Key] = []
            for part in chunks(sorted({int(p) for p in pair_ids}), BULK_IN_CHUNK):
                for walk in walks:
                    found.extend(walk.keys_of(s, run_id, part, *extra))
        return [pair_id for _, pair_id in sorted(found)]

    def queue_step(
        self,
        run_id: int,
        order: Order = "disagreement",
        current: int | None = None,
        annotator: str | None = None,
    ) -> QueueStep | None:
        """Where ``current`` stands in the run's whole queue (see
        :class:`~legend_core.data.store.records.QueueStep`); None when the queue is empty.

        The order of :meth:`review_queue`, read by keys (:mod:`~legend_core.data.store.keyset`):
        a few one-row index reads, and two counts along the index (the position, which
        reads the index up to ``current``, and the size); "next unreviewed" reads on past
        the reviewed pairs after ``current``. Nothing is kept between calls: every answer
        reads the reviews as they are now, whoever made them.
        """
        with self._session() as s:
            walks = keyset.walks(order, self._run(s, run_id).dataset_id)
            key = None if current is None else keyset.key_of(s, walks, run_id, current)
            key = key or keyset.first(s, walks, run_id)
            if key is None:
                return None
            now = self._reviewed_pairs().look(s, run_id, annotator, at_most=FEW_UNREVIEWED)
            todo = self._next_unreviewed(s, walks, run_id, key, annotator, now.unreviewed)
            previous = keyset.before(s, walks, run_id, key)
            following = keyset.after(s, walks, run_id, key)
            return QueueStep(
                current=key[1],
                position=keyset.count(s, walks, run_id, key),
                size=keyset.count(s, walks, run_id),
                previous=None if previous is None else previous[1],
                next=None if following is None else following[1],
                next_unreviewed=None if todo is None or todo[1] == key[1] else todo[1],
                counts=(now.reviewed, now.remaining),
            )

    def _next_unreviewed(
        self,
        s: Session,
        walks: tuple[keyset.Walk, ...],
        run_id: int,
        key: keyset.Key,
        annotator: str | None,
        left: list[int] | None,
    ) -> keyset.Key | None:
        """The first unreviewed pair after ``key``, else the first one, else None.

        With few pairs ``left`` unreviewed (their ids given), their keys are read and
        compared here; with many (None), the queue is read on from ``key``, and it meets
        one soon. Reading on past tens of thousands of reviewed pairs, each asked for its
        verdicts, took 325 ms."""
        if left is None:
            unreviewed = ~self._reviewed(annotator)
            return keyset.after(s, walks, run_id, key, unreviewed) or keyset.first(
                s, walks, run_id, unreviewed
            )
        keys = sorted(k for walk in walks for k in walk.keys_of(s, run_id, left))
        later = [k for k in keys if k > key]
        return (later or keys or [None])[0]

    def review_counts(self, run_id: int, annotator: str | None = None) -> tuple[int, int]:
        """(reviewed, remaining) pairs among those with a computed margin in the run:
        reviewed means someone (``annotator``, if given) holds a current verdict on it."""
        # Kept up to date from the reviews written since the last call (reviewed.py):
        # counting in SQL reads every review, 174 ms once 100,000 pairs are reviewed.
        with self._session() as s:
            self._run(s, run_id)
            now = self._reviewed_pairs().look(s, run_id, annotator)
        return now.reviewed, now.remaining

    def _reviewed_pairs(self) -> ReviewedPairs:
        """This store's :class:`ReviewedPairs` (made on first use)."""
        tracker = self.__dict__.get("_reviewed_pairs_tracker")
        if tracker is None:
            with _TRACKER_LOCK:
                tracker = self.__dict__.setdefault("_reviewed_pairs_tracker", ReviewedPairs())
        return tracker
