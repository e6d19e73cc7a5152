"""Which of a run's pairs are reviewed, kept up to date from the reviews written since.

Counting reviewed pairs in SQL reads every review (a verdict is current until withdrawn,
which no index answers), so once most of a run is reviewed the Review page's counts cost
more than the rest of a step (BENCHMARKS.md §4). Reviews are append-only, though, and are
deleted only with their data set, so what was read stays true except for the pairs of the
reviews written since. :class:`ReviewedPairs` keeps, per (run, annotator), the run's pair
ids and which of them hold a current verdict, and brings them up to date on each use:

- the highest review id is read first; then the pairs of the reviews after the last one
  seen are asked again (their status now, exactly as the SQL count would give it);
- the count and the id sum of the reviews up to the last one seen must be what they were:
  else a review was deleted, or one with a lower id was committed late (PostgreSQL hands
  out ids before commit), and everything is read again; so is it when the count and the
  pair id sum of the run's margins changed (a run still being computed, or a deleted
  run's id given to a new one).

A review committed between two of these reads is caught by the next use (its id is above
the last one seen, or it changes the count below it), so every answer is as fresh as its
first read, like the plain SQL count. Nothing is trusted from another process: all of it
is checked against the database on every use. A store keeps the most recently used few;
the app shares one store between its sessions' threads, which read at the same time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from legend_core.data.schema import Margin, Review
from legend_core.data.store.verdicts import _VERDICT, _current_verdict
from legend_core.util import chunks

#: (run, annotator) entries a store keeps (a run of 100,000 pairs takes 0.9 MB).
KEPT = 8
#: Pairs asked again per query.
ASK_CHUNK = 2_000


@dataclass
class _Snapshot:
    """The reviews up to ``last_review`` (their count and id sum), the run's pair ids
    (sorted) and which of them hold a current verdict."""

    last_review: int
    n_reviews: int
    id_sum: int
    pair_ids: np.ndarray
    reviewed: np.ndarray

    @property
    def margins(self) -> tuple[int, int]:
        return len(self.pair_ids), int(self.pair_ids.sum())


@dataclass(frozen=True)
class Reviewed:
    """A run's pairs as reviewed now: how many hold a verdict and how many remain, and,
    when asked and few enough, which remain."""

    reviewed: int
    remaining: int
    unreviewed: list[int] | None


def _last_review(s: Session) -> int:
    return int(s.scalar(select(func.coalesce(func.max(Review.id), 0))) or 0)


def _reviews_up_to(s: Session, last: int) -> tuple[int, int]:
    """Count and id sum of the reviews with ids up to ``last``."""
    query = select(func.count(), func.coalesce(func.sum(Review.id), 0)).where(Review.id <= last)
    n, total = s.execute(query).one()
    return int(n), int(total)


def _margins(s: Session, run_id: int) -> tuple[int, int]:
    """Count and pair id sum of the run's margins."""
    query = select(func.count(), func.coalesce(func.sum(Margin.pair_id), 0))
    n, total = s.execute(query.where(Margin.run_id == run_id)).one()
    return int(n), int(total)


def _verdicts(annotator: str | None) -> Select[tuple[int]]:
    """Pair ids someone (``annotator``, if given) holds a current verdict on."""
    query = select(_VERDICT.pair_id).where(_current_verdict(_VERDICT))
    if annotator is not None:
        query = query.where(_VERDICT.annotator == annotator)
    return query


def _read(s: Session, run_id: int, annotator: str | None) -> _Snapshot:
    """Everything from scratch: one read of every review."""
    last = _last_review(s)
    n_reviews, id_sum = _reviews_up_to(s, last)
    ids = select(Margin.pair_id).where(Margin.run_id == run_id).order_by(Margin.pair_id)
    pair_ids = np.fromiter(s.scalars(ids), dtype=np.int64)
    reviewed_ids = s.scalars(
        select(Margin.pair_id).where(
            Margin.run_id == run_id, Margin.pair_id.in_(_verdicts(annotator))
        )
    )
    reviewed = np.isin(pair_ids, np.fromiter(reviewed_ids, dtype=np.int64))
    return _Snapshot(last, n_reviews, id_sum, pair_ids, reviewed)


def _update(s: Session, snap: _Snapshot, run_id: int, annotator: str | None) -> _Snapshot | None:
    """``snap`` brought up to date, or None when it must be read again."""
    last = _last_review(s)
    if _reviews_up_to(s, snap.last_review) != (snap.n_reviews, snap.id_sum):
        return None
    if _margins(s, run_id) != snap.margins:
        return None
    if last <= snap.last_review:
        return snap
    rows = s.execute(
        select(Review.id, Review.pair_id, Review.annotator).where(
            Review.id > snap.last_review, Review.id <= last
        )
    ).all()
    n_reviews = snap.n_reviews + len(rows)
    id_sum = snap.id_sum + sum(int(r[0]) for r in rows)
    touched = [int(r[1]) for r in rows if annotator is None or r[2] == annotator]
    positions = np.flatnonzero(np.isin(snap.pair_ids, touched))
    asked = snap.pair_ids[positions].tolist()
    holding: set[int] = set()
    for chunk in chunks(asked, ASK_CHUNK):
        holding.update(s.scalars(_verdicts(annotator).where(_VERDICT.pair_id.in_(chunk))))
    reviewed = snap.reviewed.copy()
    reviewed[positions] = [p in holding for p in asked]
    # The rows read are the reviews up to ``last`` that were committed when they were read;
    # one committed later below ``last`` changes the count next time, and is read then.
    return _Snapshot(last, n_reviews, id_sum, snap.pair_ids, reviewed)


class ReviewedPairs:
    """A store's up-to-date views of which pairs of a run are reviewed (see the module)."""

    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._lock = threading.Lock()
        self._snapshots: OrderedDict[tuple[int, str | None], _Snapshot] = OrderedDict()

    def _snapshot(self, s: Session, run_id: int, annotator: str | None) -> _Snapshot:
        # The lock guards the dict only: the reads run outside it, so sessions stepping at
        # once never wait on each other. Snapshots are never changed once made; should an
        # older one be stored after a newer, the next use reads on from it.
        key = (run_id, annotator)
        with self._lock:
            snap = self._snapshots.get(key)
        if snap is not None:
            snap = _update(s, snap, run_id, annotator)
        if snap is None:
            snap = _read(s, run_id, annotator)
        with self._lock:
            self._snapshots[key] = snap
            self._snapshots.move_to_end(key)
            while len(self._snapshots) > self._kept:
                self._snapshots.popitem(last=False)
        return snap

    def look(
        self, s: Session, run_id: int, annotator: str | None = None, at_most: int | None = None
    ) -> Reviewed:
        """The run's reviewed and remaining pairs now (someone's verdict, or
        ``annotator``'s), and the remaining pairs' ids unless there are more than
        ``at_most``."""
        snap = self._snapshot(s, run_id, annotator)
        left = ~snap.reviewed
        n_left = int(left.sum())
        ids = None if at_most is not None and n_left > at_most else snap.pair_ids[left].tolist()
        return Reviewed(len(snap.pair_ids) - n_left, n_left, ids)
