"""Reviews: append-only, they belong to the pair (every run of it reads them all).

What they add up to is decided by :mod:`legend_core.review.policy` (the one place the
policy is written); the store only fetches the reviews and hands the policy the admins'
names it is given (it never reads the users file).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from legend_core.data.schema import DirectionRow, Margin, MarginRun, Pair, Review, utcnow
from legend_core.data.store.engine import IN_CHUNK, NotFoundError, StoreBase, _retry
from legend_core.data.store.records import ReviewInfo
from legend_core.data.store.verdicts import _has_verdict
from legend_core.review.policy import (
    AnnotatorState,
    Resolution,
    ReviewEvent,
    check_action,
    own_state,
    resolve,
)
from legend_core.util import chunks

if TYPE_CHECKING:
    import pandas as pd


def _review_events(
    s: Session, pair_filter: Any, run: MarginRun | None, annotator: str | None = None
) -> dict[int, list[ReviewEvent]]:
    """The reviews of the pairs matching ``pair_filter`` (by ``annotator``, if given),
    oldest first, as the policy reads them in ``run``.

    An override is on the run's scale when it was made without a run, or in a run of
    the same direction. Direction ids may be reused once deleted (SQLite), so a review
    older than the run's direction cannot have been made on it.
    """
    query = (
        select(
            Review.id,
            Review.pair_id,
            Review.annotator,
            Review.action,
            Review.value,
            Review.direction_id,
            Review.created_at,
        )
        .join(Pair, Pair.id == Review.pair_id)
        .where(pair_filter)
        .order_by(Review.id)
    )
    if annotator is not None:
        query = query.where(Review.annotator == annotator)
    since = None
    if run is not None:
        since = s.scalar(select(DirectionRow.created_at).where(DirectionRow.id == run.direction_id))
    events: dict[int, list[ReviewEvent]] = {}
    for review_id, pair_id, name, action, value, direction_id, created in s.execute(query):
        on_scale = (
            action != "override"
            or run is None
            or direction_id is None
            or (
                direction_id == run.direction_id
                and (since is None or created is None or created >= since)
            )
        )
        events.setdefault(pair_id, []).append(ReviewEvent(review_id, name, action, value, on_scale))
    return events


class ReviewsMixin(StoreBase):
    """Reviews of pairs and what they add up to."""

    def pair_state(
        self,
        pair_id: int,
        run_id: int | None = None,
        admins: Collection[str] = frozenset(),
        annotator: str | None = None,
    ) -> Resolution:
        """What a pair's reviews add up to (every run's reviews), read in ``run_id``: its
        computed margin and its direction's scale for overrides (without a run: no computed
        margin, every override on scale). With ``annotator``, that annotator's reviews only.
        """
        with self._session() as s:
            pair = s.get(Pair, pair_id)
            if pair is None:
                raise NotFoundError(f"no pair {pair_id}")
            run, computed = None, None
            if run_id is not None:
                run = self._run(s, run_id)
                if run.dataset_id != pair.dataset_id:
                    raise ValueError(f"pair {pair_id} is not in margin run {run_id}'s data set")
                computed = s.scalar(
                    select(Margin.value).where(Margin.run_id == run_id, Margin.pair_id == pair_id)
                )
            events = _review_events(s, Pair.id == pair_id, run, annotator)
        return resolve(events.get(pair_id, []), computed, admins)

    def resolutions(
        self,
        run_id: int,
        admins: Collection[str] = frozenset(),
        annotator: str | None = None,
    ) -> dict[int, Resolution]:
        """What the reviews add up to for each reviewed pair of the run (pairs without a
        review are left out: they keep their label and computed margin). Reads reviews and
        margins only, no texts: cheap where :meth:`run_frame` is not."""
        with self._session() as s:
            run = self._run(s, run_id)
            events = _review_events(s, Pair.dataset_id == run.dataset_id, run, annotator)
            computed: dict[int, float] = {}
            for chunk in chunks(sorted(events), IN_CHUNK):
                query = select(Margin.pair_id, Margin.value).where(
                    Margin.run_id == run_id, Margin.pair_id.in_(chunk)
                )
                computed.update((pair_id, value) for pair_id, value in s.execute(query))
        return {p: resolve(e, computed.get(p), admins) for p, e in events.items()}

    def annotator_state(self, pair_id: int, annotator: str) -> AnnotatorState:
        """One annotator's own current verdict and flag on a pair."""
        with self._session() as s:
            events = _review_events(s, Pair.id == pair_id, None, annotator.strip())
        return own_state(events.get(pair_id, []), annotator.strip())

    def add_review(
        self,
        pair_id: int,
        annotator: str,
        action: str,
        value: float | None = None,
        note: str = "",
        run_id: int | None = None,
    ) -> int:
        """Append a review; returns its id. Lock contention is retried transparently.

        The meanings of the actions are :mod:`legend_core.review.policy`'s. ``run_id`` is
        the run the pair was seen in: the review counts in every run of the pair, and an
        override's number is read on the scale of that run's direction.

        Raises:
            ValueError: Unknown action, empty or over-long annotator, an override without a
                finite value, a value on another action, a pair outside the run's data set,
                or a withdraw without a verdict to withdraw.
        """
        value = check_action(action, value)
        if not isinstance(annotator, str) or not annotator.strip():
            raise ValueError("a review needs a non-empty annotator name")
        name = annotator.strip()
        if len(name) > 255:
            raise ValueError("an annotator name has at most 255 characters")
        direction_id = None
        with self._session() as s:
            pair = s.get(Pair, pair_id)
            if pair is None:
                raise NotFoundError(f"no pair {pair_id}")
            if run_id is not None:
                run = self._run(s, run_id)
                if run.dataset_id != pair.dataset_id:
                    raise ValueError(f"pair {pair_id} is not in margin run {run_id}'s data set")
                direction_id = run.direction_id
            if action == "withdraw" and not s.scalar(select(_has_verdict(pair_id, name))):
                raise ValueError(f"{name} has no verdict on pair {pair_id} to withdraw")

        def work() -> int:
            with self._session() as s, s.begin():
                review = Review(
                    pair_id=pair_id,
                    run_id=run_id,
                    direction_id=direction_id,
                    annotator=name,
                    action=action,
                    value=value,
                    note=note or "",
                    created_at=utcnow(),
                )
                s.add(review)
                s.flush()
                return review.id

        return _retry(work)

    def pair_history(self, pair_id: int) -> list[ReviewInfo]:
        """All reviews of a pair (every run), oldest first."""
        with self._session() as s:
            rows = s.scalars(select(Review).where(Review.pair_id == pair_id).order_by(Review.id))
            return [
                ReviewInfo(
                    r.id,
                    r.pair_id,
                    r.run_id,
                    r.annotator,
                    r.action,
                    r.value,
                    r.note,
                    r.created_at,
                    r.direction_id,
                )
                for r in rows
            ]

    def reviews_frame(self, dataset_id: int) -> pd.DataFrame:
        """Every review of a data set's pairs, oldest first (for agreement between annotators).

        Columns: id, pair_id, run_id, direction_id, annotator, action, value, note, created_at.
        """
        import pandas as pd

        query = (
            select(
                Review.id,
                Review.pair_id,
                Review.run_id,
                Review.direction_id,
                Review.annotator,
                Review.action,
                Review.value,
                Review.note,
                Review.created_at,
            )
            .join(Pair, Pair.id == Review.pair_id)
            .where(Pair.dataset_id == dataset_id)
            .order_by(Review.id)
        )
        with self._session() as s:
            rows = s.execute(query).all()
        columns = ["id", "pair_id", "run_id", "direction_id", "annotator", "action", "value"]
        columns += ["note", "created_at"]
        return pd.DataFrame(rows, columns=columns)
