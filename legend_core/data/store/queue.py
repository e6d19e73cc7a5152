"""The review queue: a run's pairs in review order, and how many are reviewed.

The queue order lives here only (the Review page asks :meth:`QueueMixin.review_queue`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from legend_core.data.schema import Margin, Pair
from legend_core.data.store.engine import StoreBase
from legend_core.data.store.verdicts import _has_verdict


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
        order: Literal["disagreement", "least_sure", "index"] = "disagreement",
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
            query = self._queue_query(s, run_id, order, unreviewed_only, annotator)
            ids = list(s.scalars(query))
        if pair_ids is not None:
            wanted = set(pair_ids)
            ids = [p for p in ids if p in wanted]
        return ids

    def review_counts(self, run_id: int, annotator: str | None = None) -> tuple[int, int]:
        """(reviewed, remaining) pairs among those with a computed margin in the run:
        reviewed means someone (``annotator``, if given) holds a current verdict on it."""
        with self._session() as s:
            self._run(s, run_id)
            total = s.scalar(select(func.count()).where(Margin.run_id == run_id)) or 0
            reviewed = (
                s.scalar(
                    select(func.count()).where(Margin.run_id == run_id, self._reviewed(annotator))
                )
                or 0
            )
        return reviewed, total - reviewed
