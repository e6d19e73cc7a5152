"""Margin runs: one per (data set, direction, settings); their margins; the run's frame."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection, Select, and_, exists, func, select
from sqlalchemy.orm import Session

from legend_core.data.schema import Dataset, DirectionRow, Margin, MarginRun, Pair, utcnow
from legend_core.data.store.engine import (
    BIG_INSERT,
    BULK_IN_CHUNK,
    NotFoundError,
    StoreBase,
    _refresh_statistics,
    _retry,
    insert_or_skip,
    insert_rows_or_skip,
)
from legend_core.data.store.records import PairKeys, PairText, RunInfo
from legend_core.data.store.reviews import _review_events
from legend_core.review.policy import resolve
from legend_core.util import chunks, text_key

if TYPE_CHECKING:
    import pandas as pd


def _settings_key(settings: Mapping[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


#: ``add_margins`` reads the id range of its pairs when it holds at most this many ids per
#: pair given (one statement), else looks the ids up in ``IN`` lists.
DENSE_SPAN = 4


def _strangers(conn: Connection, dataset_id: int, ids: Sequence[int]) -> list[int]:
    """Those of ``ids`` (distinct) that are not pairs of the data set, sorted.

    Only ids are constrained in SQL, so the database walks its primary key (a filter on
    the data set let SQLite scan the data set's whole index, once per statement). Ids of
    one import are consecutive: when every id of their range is a pair of the data set,
    one aggregate says so and no row is read into Python.
    """
    if not ids:
        return []
    wanted = np.array(ids, dtype=np.int64)
    lo, hi = int(wanted.min()), int(wanted.max())
    member = select(Pair.id, Pair.dataset_id)
    if hi - lo < DENSE_SPAN * len(ids):
        in_range = Pair.id.between(lo, hi)
        summary = select(func.count(), func.min(Pair.dataset_id), func.max(Pair.dataset_id))
        n, first, last = conn.execute(summary.where(in_range)).one()
        if n == hi - lo + 1 and first == last == dataset_id:
            return []
        parts = [member.where(in_range)]
    else:
        parts = [member.where(Pair.id.in_(c)) for c in chunks(sorted(ids), BULK_IN_CHUNK)]
    rows = np.array([tuple(r) for q in parts for r in conn.execute(q)], dtype=np.int64)
    ours = rows[rows[:, 1] == dataset_id, 0] if len(rows) else rows
    return sorted(wanted[~np.isin(wanted, ours)].tolist())


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
            query = select(Pair.id, Pair.idx, Pair.prompt, Pair.chosen, Pair.rejected)
            query = self._missing(s, run_id, query).limit(limit)
            # Core rows on the session's connection: no ORM row loading.
            return [PairText(*row) for row in s.connection().execute(query)]

    def missing_margin_keys(self, run_id: int) -> PairKeys:
        """The pairs of :meth:`pairs_missing_margins`, as ids and the cache keys of their
        texts (``util.text_key``, stored with each pair): no text is read or hashed."""
        ids: list[int] = []
        chosen: list[bytes | None] = []
        rejected: list[bytes | None] = []
        with self._session() as s:
            query = select(Pair.id, Pair.chosen_key, Pair.rejected_key)
            # Row by row into three lists: no row outlives its turn, so 100,000 of them
            # never reach the garbage collector's old generation (a full pass each time).
            for pair_id, chosen_key, rejected_key in s.connection().execute(
                self._missing(s, run_id, query)
            ):
                ids.append(pair_id)
                chosen.append(chosen_key)
                rejected.append(rejected_key)
        if None in chosen or None in rejected:  # not written by this store (see the schema)
            unkeyed = [
                i for i, (c, r) in enumerate(zip(chosen, rejected)) if c is None or r is None
            ]
            for i, pair in zip(unkeyed, self.pair_texts([ids[i] for i in unkeyed])):
                chosen[i] = text_key(pair.prompt, pair.chosen)
                rejected[i] = text_key(pair.prompt, pair.rejected)
        return PairKeys(ids, [bytes(k) for k in chosen], [bytes(k) for k in rejected])

    def _missing(self, s: Session, run_id: int, query: Select[Any]) -> Select[Any]:
        run = self._run(s, run_id)
        query = query.where(Pair.dataset_id == run.dataset_id).order_by(Pair.idx)
        if s.scalar(select(Margin.pair_id).where(Margin.run_id == run_id).limit(1)) is None:
            return query  # a new run: no margin to look up per pair
        has_margin = exists().where(Margin.run_id == run_id, Margin.pair_id == Pair.id)
        return query.where(~has_margin)

    def pair_texts(self, pair_ids: Sequence[int]) -> list[PairText]:
        """The texts of stored pairs, in the order asked.

        Raises:
            NotFoundError: A pair id is not stored.
        """
        ids = [int(p) for p in pair_ids]
        found: dict[int, PairText] = {}
        with self._session() as s:
            conn = s.connection()
            for chunk in chunks(sorted(set(ids)), BULK_IN_CHUNK):
                query = select(Pair.id, Pair.idx, Pair.prompt, Pair.chosen, Pair.rejected)
                for row in conn.execute(query.where(Pair.id.in_(chunk))):
                    found[row[0]] = PairText(*row)
        lost = [p for p in ids if p not in found]
        if lost:
            raise NotFoundError(f"no pairs {lost[:5]}")
        return [found[p] for p in ids]

    def add_margins(
        self,
        run_id: int,
        pair_ids: Sequence[int],
        values: Sequence[float],
        refresh_statistics: bool = True,
    ) -> None:
        """Store computed margins (one transaction); pairs that already have one keep it.

        A large batch refreshes PostgreSQL's planner statistics (the review queue's plan
        needs them); ``refresh_statistics=False`` leaves that to the caller, as
        ``annotate_dataset`` does: its :meth:`finish_run` refreshes them once, not once per
        chunk (a tenth of a second each on a table of millions of margins).

        Raises:
            ValueError: Lengths differ, a value is not finite, a pair id repeats, or a pair
                is not in the run's data set.
        """
        ids = [int(p) for p in pair_ids]
        vals = [float(v) for v in values]
        if len(ids) != len(vals):
            raise ValueError(f"{len(ids)} pair ids but {len(vals)} values")
        if not all(map(math.isfinite, vals)):
            raise ValueError("margins must be finite numbers")
        if len(set(ids)) != len(ids):
            raise ValueError("a pair id appears twice")

        def work() -> None:
            with self._session() as s, s.begin():
                dataset_id = self._run(s, run_id).dataset_id
                conn = s.connection()
                bad = _strangers(conn, dataset_id, ids)
                if bad:
                    raise ValueError(f"pairs {bad[:5]} are not in run {run_id}'s data set")
                # A pair that already has a margin keeps it: another writer of the same run
                # (a second process, a resumed job) computed it from the same vectors.
                # Tuples to the driver: binding 100,000 dicts cost as much as the insert.
                insert_rows_or_skip(
                    conn,
                    Margin.__table__,
                    ("run_id", "pair_id", "value"),
                    list(zip(repeat(int(run_id)), ids, vals)),
                )

        _retry(work)
        if refresh_statistics and len(ids) >= BIG_INSERT:
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
