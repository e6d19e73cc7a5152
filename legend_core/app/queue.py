"""Stepping through the review queue the Review page shows: where the current pair is,
the previous and next ones, the next unreviewed one, and pairs picked on a chart.

The queue's order is the store's (:meth:`legend_core.data.store.Store.review_queue`);
these functions only walk the list it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def queue_position(queue: Sequence[int], current: int | None) -> int | None:
    """Index of ``current`` in the queue, or None."""
    if current is None:
        return None
    try:
        return list(queue).index(current)
    except ValueError:
        return None


def step(queue: Sequence[int], current: int | None, delta: int) -> int | None:
    """The pair ``delta`` places from ``current`` (clamped to the ends).

    When ``current`` is not in the queue, the first pair (None for an empty queue).
    """
    if not queue:
        return None
    pos = queue_position(queue, current)
    if pos is None:
        return queue[0]
    return queue[min(len(queue) - 1, max(0, pos + delta))]


def next_unreviewed(
    queue: Sequence[int], current: int | None, unreviewed: set[int] | Sequence[int]
) -> int | None:
    """The first unreviewed pair after ``current``, wrapping around; None if there is none."""
    todo = set(unreviewed)
    if not queue or not todo:
        return None
    pos = queue_position(queue, current)
    start = 0 if pos is None else pos + 1
    ordered = list(queue[start:]) + list(queue[:start])
    return next((p for p in ordered if p in todo and p != current), None)


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
