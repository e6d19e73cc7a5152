"""Margin runs: one per (data set, direction, settings); their margins; the run's frame."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import and_, exists, func, select

from legend_core.data.schema import Dataset, DirectionRow, Margin, MarginRun, Pair, utcnow
from legend_core.data.store.engine import (
    BIG_INSERT,
    BULK_IN_CHUNK,
    INSERT_CHUNK,
    NotFoundError,
    StoreBase,
    _refresh_statistics,
    _retry,
    insert_or_skip,
)
from legend_core.data.store.records import PairText, RunInfo
from legend_core.data.store.reviews import _review_events
from legend_core.review.policy import resolve
from legend_core.util import chunks

if TYPE_CHECKING:
    import pandas as pd


def _settings_key(settings: Mapping[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class RunsMixin(StoreBase):
    """Margin runs and their margins (resumable: a restarted annotation finds its run)."""

    def start_run(self, dataset_id: int, direction_id: int, settings: dict[str, Any]) -> int:
        """A margin run for (data set, direction, settings): the existing one if any, so a
        restarted annotation resumes; else a new one."""
        self._require(Dataset, dataset_id)
        self._require(DirectionRow, direction_id)
        key = _settings_key(settings)
        query = select(MarginRun.id).where(
            MarginRun.dataset_id == dataset_id,
            MarginRun.direction_id == direction_id,
            MarginRun.settings_key == key,
        )

        def work() -> int:
            with self._session() as s, s.begin():
                existing = s.scalar(query)
                if existing is not None:
                    return existing
                # Two processes may start the same run at once: one row wins, both use it.
                conn = s.connection()
                conn.execute(
                    insert_or_skip(conn, MarginRun.__table__),
                    {
                        "dataset_id": dataset_id,
                        "direction_id": direction_id,
                        "settings": json.loads(json.dumps(settings, default=str)),
                        "settings_key": key,
                        "status": "running",
                        "created_at": utcnow(),
                    },
                )
                return s.scalar(query)

        return _retry(work)

    def pairs_missing_margins(self, run_id: int, limit: int | None = None) -> list[PairText]:
        """Pairs of the run's data set that have no margin in it yet, in input order."""
        with self._session() as s:
            run = self._run(s, run_id)
            has_margin = exists().where(Margin.run_id == run_id, Margin.pair_id == Pair.id)
            query = (
                select(Pair.id, Pair.idx, Pair.prompt, Pair.chosen, Pair.rejected)
                .where(Pair.dataset_id == run.dataset_id, ~has_margin)
                .order_by(Pair.idx)
                .limit(limit)
            )
            return [PairText(*row) for row in s.execute(query)]

    def add_margins(self, run_id: int, pair_ids: Sequence[int], values: Sequence[float]) -> None:
        """Store computed margins (one transaction); pairs that already have one keep it.

        Raises:
            ValueError: Lengths differ, a value is not finite, a pair id repeats, or a pair
                is not in the run's data set.
        """
        ids = [int(p) for p in pair_ids]
        vals = [float(v) for v in values]
        if len(ids) != len(vals):
            raise ValueError(f"{len(ids)} pair ids but {len(vals)} values")
        if not all(math.isfinite(v) for v in vals):
            raise ValueError("margins must be finite numbers")
        if len(set(ids)) != len(ids):
            raise ValueError("a pair id appears twice")

        def work() -> None:
            with self._session() as s, s.begin():
                dataset_id = self._run(s, run_id).dataset_id
                # Core statements on the session's connection: the ORM's per-row
                # bookkeeping was half the time of a 100k-pair run (bench/margins_bench.py).
                conn = s.connection()
                for chunk in chunks(list(zip(ids, vals, strict=True)), BULK_IN_CHUNK):
                    chunk_ids = [p for p, _ in chunk]
                    found = set(
                        conn.scalars(
                            select(Pair.id).where(
                                Pair.id.in_(chunk_ids), Pair.dataset_id == dataset_id
                            )
                        )
                    )
                    if len(found) != len(chunk_ids):
                        bad = sorted(set(chunk_ids) - found)[:5]
                        raise ValueError(f"pairs {bad} are not in run {run_id}'s data set")
                rows = [{"run_id": run_id, "pair_id": p, "value": v} for p, v in zip(ids, vals)]
                # A pair that already has a margin keeps it: another writer of the same run
                # (a second process, a resumed job) computed it from the same vectors.
                statement = insert_or_skip(conn, Margin.__table__)
                for chunk_rows in chunks(rows, INSERT_CHUNK):
                    conn.execute(statement, list(chunk_rows))

        _retry(work)
        if len(ids) >= BIG_INSERT:
            _refresh_statistics(self.engine, ["margins"])

    def finish_run(self, run_id: int) -> None:
        """Mark a run finished (it stays resumable: more margins may still be added)."""

        def work() -> None:
            with self._session() as s, s.begin():
                run = self._run(s, run_id)
                run.status = "finished"
                run.finished_at = utcnow()

        _retry(work)
        _refresh_statistics(self.engine, ["margins", "reviews"])

    def list_runs(self, dataset_id: int | None = None) -> list[RunInfo]:
        """Margin runs, oldest first, optionally of one data set."""
        n_margins = (
            select(Margin.run_id, func.count().label("n")).group_by(Margin.run_id).subquery()
        )
        query = (
            select(MarginRun, func.coalesce(n_margins.c.n, 0), Dataset.n_pairs)
            .join(Dataset, Dataset.id == MarginRun.dataset_id)
            .outerjoin(n_margins, n_margins.c.run_id == MarginRun.id)
            .order_by(MarginRun.id)
        )
        if dataset_id is not None:
            query = query.where(MarginRun.dataset_id == dataset_id)
        with self._session() as s:
            return [
                RunInfo(
                    r.id,
                    r.dataset_id,
                    r.direction_id,
                    r.settings,
                    r.status,
                    n,
                    n_pairs,
                    r.created_at,
                    r.finished_at,
                )
                for r, n, n_pairs in s.execute(query)
            ]

    def get_run(self, run_id: int) -> RunInfo:
        """One margin run's listing entry."""
        for run in self.list_runs():
            if run.id == run_id:
                return run
        raise NotFoundError(f"no margin run {run_id}")

    def run_frame(
        self,
        run_id: int,
        annotator: str | None = None,
        admins: Collection[str] = frozenset(),
    ) -> pd.DataFrame:
        """Every pair of the run's data set with its margins and reviews, in input order.

        Reviews of the pair made in any run (or none) count, resolved by
        :func:`legend_core.review.policy.resolve` with ``admins`` as adjudicators. With
        ``annotator``, only that annotator's reviews count (blind review: their own view).

        Columns: pair_id, idx, prompt, chosen, rejected (as imported); computed_margin
        (relative to the imported chosen; NaN while missing); shown_margin (after reviews,
        relative to the imported chosen, as the Review page shows the pair);
        override_margin (the override that set it, same orientation; NaN if none);
        effective_margin (after reviews, relative to the *exported* chosen: negated when
        flipped); flipped (exports swap chosen and rejected); flagged; disputed;
        label_source; decided_by (names joined by ", "; "" if none); n_verdicts; n_reviews.
        """
        import pandas as pd

        with self._session() as s:
            run = self._run(s, run_id)
            rows = s.execute(
                select(Pair.id, Pair.idx, Pair.prompt, Pair.chosen, Pair.rejected, Margin.value)
                .outerjoin(Margin, and_(Margin.pair_id == Pair.id, Margin.run_id == run_id))
                .where(Pair.dataset_id == run.dataset_id)
                .order_by(Pair.idx)
            ).all()
            events = _review_events(s, Pair.dataset_id == run.dataset_id, run, annotator)
        frame = pd.DataFrame(
            [tuple(r) for r in rows],
            columns=["pair_id", "idx", "prompt", "chosen", "rejected", "computed_margin"],
        )
        computed = frame["computed_margin"].to_numpy(dtype=np.float64)
        frame["computed_margin"] = computed
        n = len(frame)
        # Pairs without reviews keep the computed margin as imported: only reviewed pairs
        # go through the policy (a 100k-pair run has few of them).
        shown, override = computed.copy(), np.full(n, np.nan)
        flipped, flagged = np.zeros(n, bool), np.zeros(n, bool)
        disputed = np.zeros(n, bool)
        source = np.full(n, "none", dtype=object)
        decided = np.full(n, "", dtype=object)
        n_verdicts, n_reviews = np.zeros(n, np.int64), np.zeros(n, np.int64)
        position = {int(p): i for i, p in enumerate(frame["pair_id"])}
        for pair_id, pair_events in events.items():
            i = position[pair_id]
            r = resolve(pair_events, computed[i], admins)
            shown[i] = np.nan if r.shown_margin is None else r.shown_margin
            override[i] = np.nan if r.override is None else r.override
            flipped[i], flagged[i], disputed[i] = r.flipped, r.flagged, r.disputed
            source[i], decided[i] = r.label_source, ", ".join(r.decided_by)
            n_verdicts[i], n_reviews[i] = r.n_verdicts, r.n_reviews
        frame["shown_margin"] = shown
        frame["override_margin"] = override
        frame["effective_margin"] = np.where(flipped, -shown, shown)
        frame["flipped"] = flipped
        frame["flagged"] = flagged
        frame["disputed"] = disputed
        frame["label_source"] = source.astype(str)
        frame["decided_by"] = decided.astype(str)
        frame["n_verdicts"] = n_verdicts
        frame["n_reviews"] = n_reviews
        return frame
