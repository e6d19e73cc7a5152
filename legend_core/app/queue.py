"""Stepping through the review queue the Review page shows: where the current pair is,
the previous and next ones, the next unreviewed one, and pairs picked on a chart.

The queue's order is the store's. A run's whole queue is stepped through by the store
itself, by keys (:meth:`legend_core.data.store.Store.queue_step`), never listed; a queue of
chosen pairs (a selection, the disputed pairs) is listed once in that order
(:func:`ordered_queue`) and stepped through here (:func:`list_step`), with the reviews read
from the database at every step.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from legend_core.data.store.records import QueueStep

if TYPE_CHECKING:
    from legend_core.data.store import Store

#: Pairs asked about at once when looking for the next unreviewed one in a listed queue:
#: a few first (it is usually close), then more and more.
FIRST_CHUNK, MAX_CHUNK = 64, 4_096


def queue_position(queue: Sequence[int], current: int | None) -> int | None:
    """Index of ``current`` in the queue, or None."""
    if current is None:
        return None
    try:
        return list(queue).index(current)
    except ValueError:
        return None


def ordered_queue(
    store: Store,
    run_id: int,
    order: str,
    pair_ids: Sequence[int],
    n_margins: int,
    memo: MutableMapping[str, Any],
) -> list[int]:
    """``pair_ids`` in the run's queue order, sorted once and kept in ``memo`` (the page's
    session state) while the run, its number of margins, the order and the pairs stay the
    same. A margin never changes once computed, so the kept order cannot go stale; a run
    still computing margins adds pairs, hence ``n_margins`` in the key. Reviews are not
    kept: :func:`list_step` reads them at every step."""
    key = (run_id, n_margins, order, tuple(pair_ids))
    kept = memo.get("review_queue_memo")
    if kept is not None and kept[0] == key:
        return list(kept[1])
    queue = store.review_queue(run_id, order, pair_ids=pair_ids)  # type: ignore[arg-type]
    memo["review_queue_memo"] = (key, tuple(queue))
    return queue


def list_step(
    store: Store,
    run_id: int,
    queue: Sequence[int],
    current: int | None,
    annotator: str | None = None,
) -> QueueStep | None:
    """Where ``current`` stands in a listed queue, as
    :meth:`~legend_core.data.store.Store.queue_step` says it for a run's whole queue.

    The next unreviewed pair is read from the database now (whoever reviewed since), a
    chunk of the pairs after ``current`` at a time, wrapping around to the front.
    """
    if not queue:
        return None
    pos = queue_position(queue, current)
    if pos is None:
        pos = 0
    here = queue[pos]
    ahead = list(queue[pos + 1 :]) + list(queue[:pos])  # never ``here`` itself
    todo, start, size = None, 0, FIRST_CHUNK
    while todo is None and start < len(ahead):
        part = ahead[start : start + size]
        unreviewed = set(
            store.review_queue(run_id, pair_ids=part, unreviewed_only=True, annotator=annotator)
        )
        todo = next((p for p in part if p in unreviewed), None)
        start, size = start + size, min(MAX_CHUNK, size * 4)
    return QueueStep(
        current=here,
        position=pos,
        size=len(queue),
        previous=queue[pos - 1] if pos > 0 else None,
        next=queue[pos + 1] if pos + 1 < len(queue) else None,
        next_unreviewed=todo,
    )


def selected_pairs(points: Sequence[dict[str, Any]]) -> list[int]:
    """Pair ids of selected chart points (their ``customdata[0]``), unique, in order."""
    out: dict[int, None] = {}
    for point in points:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)) and data:
            data = data[0]
        try:
            out[int(float(data))] = None
        except (TypeError, ValueError):
            continue
    return list(out)
