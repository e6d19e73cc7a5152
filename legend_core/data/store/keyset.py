"""The review queue read by keys: the pair after or before another one, a pair's position
and the next unreviewed pair, each read from an index a few entries at a time, never the
whole queue (the Review page asks for them on every step an annotator takes).

An order is one or two *walks*. A walk reads a run's margins by one column, ascending
(``sign`` 1) or descending (``sign`` -1), ties by pair id ascending, along an index:

- ``disagreement``: margins by value ascending, one walk of ``ix_margins_run_value``
  (run_id, value, pair_id);
- ``least_sure``: |margin| ascending, ties by pair id. No index holds |margin| (one on the
  expression would cost every margin write), so this order merges two walks of
  ``ix_margins_run_value`` going out from zero: margins >= 0 by value ascending and
  margins < 0 by value descending. The next pair is the smaller of the two walks' next
  ones by (|margin|, pair id), the position the sum of the two walks' counts;
- ``index``: input order, along ``uq_pairs_dataset_idx`` (dataset_id, idx).

A pair's *key* in an order is (``sign`` × column, pair id): value, |margin| or input index,
then pair id. "After key (k, p)" is ``column >= k AND (column > k OR pair_id > p)``
(mirrored for a descending walk): its first part is an index range, so the database seeks
to the key instead of reading the queue from its front.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Select, and_, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.visitors import replacement_traverse

from legend_core.data.schema import Margin, Pair

#: A pair's place in an order: (value, |margin| or input index; pair id).
Key = tuple[float, int]

ORDERS = ("disagreement", "least_sure", "index")


def _is_column(element: Any, column: Column[Any]) -> bool:
    """Whether ``element`` is ``column`` (as the ORM's annotated copy, too)."""
    return isinstance(element, Column) and column.shares_lineage(element)


@dataclass(frozen=True)
class Walk:
    """The margins of a run in ``where``, read by ``sign`` × ``column``, then pair id;
    with ``dataset_id``, only pairs of that data set (the input-order walk)."""

    column: Any
    sign: int = 1
    where: tuple[Any, ...] = ()
    dataset_id: int | None = None

    def _select(self, run_id: int, columns: Sequence[Any], conditions: Sequence[Any]) -> Select:
        query = select(*columns).select_from(Margin).where(Margin.run_id == run_id)
        if self.dataset_id is not None:
            query = query.join(Pair, Pair.id == Margin.pair_id)
            query = query.where(Pair.dataset_id == self.dataset_id)
        return query.where(*self.where, *conditions)

    def rows(self, run_id: int, *conditions: Any) -> Select[tuple[int, Any]]:
        """(pair id, column) of the walk's rows that meet ``conditions``."""
        return self._select(run_id, (Margin.pair_id, self.column), conditions)

    def count(self, run_id: int, *conditions: Any) -> Select[tuple[int]]:
        if not conditions and not self.where:
            # The whole walk: every margin of a run is a pair of its data set (add_margins
            # refuses others), so no join; with one, SQLite looked up 100,000 pair rows.
            return select(func.count()).select_from(Margin).where(Margin.run_id == run_id)
        return self._select(run_id, (func.count(),), conditions)

    def key(self, row: Any) -> Key:
        """The order's key of a row of :meth:`rows`."""
        return (self.sign * row[1], int(row[0]))

    def keys_of(
        self, s: Session, run_id: int, pair_ids: Sequence[int], *conditions: Any
    ) -> list[Key]:
        """Keys of the walk's rows among ``pair_ids`` that meet ``conditions``.

        Each pair is one probe of the margins' primary key (run_id, pair_id). SQLite keeps
        no statistics, so it must not be offered another index: the walk's conditions on
        the margin (``value >= 0``) are tested on ``value + 0``, which no index holds (else
        it reads the run's whole range of ``ix_margins_run_value``), and the data set is
        checked here, not in SQL (else it may read the data set's whole index)."""
        columns = [Margin.pair_id, self.column]
        query = select(*columns).select_from(Margin)
        if self.dataset_id is not None:
            query = query.join(Pair, Pair.id == Margin.pair_id).add_columns(Pair.dataset_id)
        value = Margin.__table__.c.value
        unindexed = [
            replacement_traverse(c, {}, lambda e: value + 0 if _is_column(e, value) else None)
            for c in self.where
        ]
        query = query.where(
            Margin.run_id == run_id, Margin.pair_id.in_(pair_ids), *unindexed, *conditions
        )
        return [
            self.key(row[:2])
            for row in s.execute(query)
            if self.dataset_id is None or row[2] == self.dataset_id
        ]

    def after(self, key: Key) -> Any:
        """SQL condition: the row comes after ``key`` in this walk."""
        k, p = self.sign * key[0], key[1]
        column = self.column
        if self.sign > 0:
            return and_(column >= k, or_(column > k, Margin.pair_id > p))
        return and_(column <= k, or_(column < k, Margin.pair_id > p))

    def before(self, key: Key) -> Any:
        """SQL condition: the row comes before ``key`` in this walk."""
        k, p = self.sign * key[0], key[1]
        column = self.column
        if self.sign > 0:
            return and_(column <= k, or_(column < k, Margin.pair_id < p))
        return and_(column >= k, or_(column > k, Margin.pair_id < p))

    def forward(self) -> tuple[Any, ...]:
        """ORDER BY of the walk, front to back."""
        first = self.column.asc() if self.sign > 0 else self.column.desc()
        return (first, Margin.pair_id.asc())

    def backward(self) -> tuple[Any, ...]:
        """ORDER BY of the walk, back to front."""
        first = self.column.desc() if self.sign > 0 else self.column.asc()
        return (first, Margin.pair_id.desc())


def walks(order: str, dataset_id: int) -> tuple[Walk, ...]:
    """The walks an order merges (see the module's text)."""
    if order == "disagreement":
        return (Walk(Margin.value),)
    if order == "least_sure":
        return (
            Walk(Margin.value, 1, (Margin.value >= 0,)),
            Walk(Margin.value, -1, (Margin.value < 0,)),
        )
    if order == "index":
        return (Walk(Pair.idx, dataset_id=dataset_id),)
    raise ValueError(f"unknown order {order!r}; use 'disagreement', 'least_sure' or 'index'")


def key_of(s: Session, order: tuple[Walk, ...], run_id: int, pair_id: int) -> Key | None:
    """The key of ``pair_id`` in the order; None when the pair is not in it (no margin in
    the run, or, in input order, a pair of another data set)."""
    for walk in order:
        row = s.execute(walk.rows(run_id, Margin.pair_id == pair_id)).first()
        if row is not None:
            return walk.key(row)
    return None


def _pick(
    s: Session,
    order: tuple[Walk, ...],
    run_id: int,
    condition: Callable[[Walk], Sequence[Any]],
    forward: bool,
) -> Key | None:
    """The first row (``forward``) or last row of the order meeting ``condition``: the
    best of each walk's first row, one ``LIMIT 1`` query per walk."""
    found = []
    for walk in order:
        query = walk.rows(run_id, *condition(walk))
        query = query.order_by(*(walk.forward() if forward else walk.backward())).limit(1)
        row = s.execute(query).first()
        if row is not None:
            found.append(walk.key(row))
    if not found:
        return None
    return min(found) if forward else max(found)


def first(s: Session, order: tuple[Walk, ...], run_id: int, *conditions: Any) -> Key | None:
    """The first pair of the order that meets ``conditions``."""
    return _pick(s, order, run_id, lambda w: conditions, forward=True)


def after(
    s: Session, order: tuple[Walk, ...], run_id: int, key: Key, *conditions: Any
) -> Key | None:
    """The first pair after ``key`` that meets ``conditions``."""
    return _pick(s, order, run_id, lambda w: (w.after(key), *conditions), forward=True)


def before(s: Session, order: tuple[Walk, ...], run_id: int, key: Key) -> Key | None:
    """The pair just before ``key``."""
    return _pick(s, order, run_id, lambda w: (w.before(key),), forward=False)


def count(s: Session, order: tuple[Walk, ...], run_id: int, key: Key | None = None) -> int:
    """Pairs of the order before ``key`` (its 0-based position), or all of them."""
    total = 0
    for walk in order:
        conditions = () if key is None else (walk.before(key),)
        total += int(s.scalar(walk.count(run_id, *conditions)) or 0)
    return total
