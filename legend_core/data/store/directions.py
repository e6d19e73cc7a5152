"""Directions: the exact float32 vector and its metadata; deleting one drops its runs."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from legend_core.data.schema import DirectionRow, Margin, MarginRun, Review
from legend_core.data.store.engine import NotFoundError, StoreBase, _retry
from legend_core.data.store.records import DirectionInfo
from legend_core.method.directions import Direction


class DirectionsMixin(StoreBase):
    """Directions, stored bit for bit."""

    def add_direction(self, direction: Direction) -> int:
        """Store a direction (exact float32 vector + all metadata); returns its id."""
        vector = np.ascontiguousarray(direction.vector, dtype="<f4").reshape(-1)
        row = DirectionRow(
            name=direction.name,
            model=direction.model,
            layer=int(direction.layer),
            pooling=direction.pooling,
            method=direction.method,
            dim=int(vector.shape[0]),
            vector=vector.tobytes(),
            meta=direction.metadata(),
        )

        def work() -> int:
            with self._session() as s, s.begin():
                s.add(row)
                s.flush()
                return row.id

        return _retry(work)

    def get_direction(self, direction_id: int) -> Direction:
        """A stored direction, bit-identical to the one added."""
        with self._session() as s:
            row = s.get(DirectionRow, direction_id)
            if row is None:
                raise NotFoundError(f"no direction {direction_id}")
            vector = np.frombuffer(bytes(row.vector), dtype="<f4").astype(np.float32)
            return Direction.from_metadata(vector, row.meta)

    def list_directions(self) -> list[DirectionInfo]:
        """All directions, oldest first, with their layer's held-out AUROC if measured."""
        runs = (
            select(MarginRun.direction_id, func.count().label("n"))
            .group_by(MarginRun.direction_id)
            .subquery()
        )
        query = (
            select(DirectionRow, func.coalesce(runs.c.n, 0))
            .outerjoin(runs, runs.c.direction_id == DirectionRow.id)
            .order_by(DirectionRow.id)
        )
        out = []
        with self._session() as s:
            for d, n_runs in s.execute(query):
                quality = [q for q in d.meta.get("quality", []) if q.get("layer") == d.layer]
                auroc = quality[0].get("auroc") if quality else None
                out.append(
                    DirectionInfo(
                        d.id,
                        d.name,
                        d.model,
                        d.layer,
                        d.pooling,
                        d.method,
                        d.dim,
                        auroc,
                        n_runs,
                        d.created_at,
                    )
                )
        return out

    def delete_direction(self, direction_id: int) -> None:
        """Delete a direction and its margin runs (see :meth:`_drop_runs` for reviews)."""

        def work() -> None:
            with self._session() as s, s.begin():
                if s.get(DirectionRow, direction_id) is None:
                    raise NotFoundError(f"no direction {direction_id}")
                self._drop_runs(s, MarginRun.direction_id == direction_id)
                s.execute(delete(DirectionRow).where(DirectionRow.id == direction_id))

        _retry(work)

    @staticmethod
    def _drop_runs(s: Session, condition: Any) -> None:
        """Delete runs and margins. Reviews belong to the pair and stay, detached from the
        run; their ``direction_id`` keeps an override's scale known."""
        run_ids = select(MarginRun.id).where(condition)
        s.execute(update(Review).where(Review.run_id.in_(run_ids)).values(run_id=None))
        s.execute(delete(Margin).where(Margin.run_id.in_(run_ids)))
        s.execute(delete(MarginRun).where(condition))
