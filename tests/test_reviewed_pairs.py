"""The reviewed-pairs counts a store keeps up to date (``data/store/reviewed.py``) always
equal a count read from scratch in SQL: with other writers, withdrawals, deletions that
free review ids, reviews committed late below the last id seen, and runs still growing.

Run on SQLite, and on PostgreSQL when ``LEGEND_TEST_PG_URL`` is set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from legend_core.data.schema import Margin
from legend_core.data.store import Store, make_engine
from legend_core.data.store.verdicts import _VERDICT, _current_verdict
from tests.test_pair_keys import new_run, odd_pairs
from tests.test_store import fresh_db_url, make_direction

ANNOTATORS = (None, "ann", "bob", "cy")


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with fresh_db_url(tmp_path) as u:
        yield u


def counted_afresh(store: Store, run_id: int, annotator: str | None) -> tuple[int, int]:
    """(reviewed, remaining) read from scratch: the SQL count the tracker replaces."""
    verdicts = select(_VERDICT.pair_id).where(_current_verdict(_VERDICT))
    if annotator is not None:
        verdicts = verdicts.where(_VERDICT.annotator == annotator)
    with store.engine.connect() as conn:
        total = conn.scalar(select(func.count()).where(Margin.run_id == run_id))
        done = conn.scalar(
            select(func.count()).where(Margin.run_id == run_id, Margin.pair_id.in_(verdicts))
        )
    return done, total - done


def annotated(store: Store, name: str, n: int, seed: int = 0) -> tuple[int, int, list[int]]:
    dataset_id = store.add_dataset(name, odd_pairs(n, name))
    run_id = new_run(store, dataset_id, seed=seed)
    ids = store.missing_margin_keys(run_id).ids
    store.add_margins(run_id, ids, np.linspace(-1, 1, n))
    return dataset_id, run_id, ids


def check(store: Store, run_id: int) -> None:
    for annotator in ANNOTATORS:
        assert store.review_counts(run_id, annotator) == counted_afresh(store, run_id, annotator)


def test_counts_follow_every_review_by_any_writer(url: str) -> None:
    """Two stores (two processes' worth) review at random; each one's counts, read after
    every review, equal a fresh count, for everyone and for each annotator."""
    with Store(url) as one, Store(url) as two:
        _, run_id, ids = annotated(one, "a", 40)
        rng = np.random.default_rng(11)
        actions = ["accept", "flip", "override", "flag", "unflag", "withdraw", "withdraw"]
        for i in range(160):
            writer, reader = (one, two) if i % 3 else (two, one)
            action = str(rng.choice(actions))
            try:
                writer.add_review(
                    int(rng.choice(ids)),
                    str(rng.choice(ANNOTATORS[1:])),
                    action,
                    value=0.5 if action == "override" else None,
                    run_id=run_id,
                )
            except ValueError:  # a withdraw with nothing to withdraw is refused
                assert action == "withdraw"
            if i % 7 == 0:
                check(reader, run_id)
            check(writer, run_id)
        check(one, run_id)
        check(two, run_id)


def test_a_deleted_data_set_that_frees_review_ids_is_noticed(url: str) -> None:
    """On SQLite, deleting the reviews with the highest ids lets new reviews take those
    ids again: the count below the last id seen changes, and everything is read again."""
    with Store(url) as store:
        _, run_a, ids_a = annotated(store, "a", 20)
        other, run_b, ids_b = annotated(store, "b", 20, seed=1)
        store.add_review(ids_a[0], "ann", "accept", run_id=run_a)
        for p in ids_b[:6]:
            store.add_review(p, "ann", "accept", run_id=run_b)
        check(store, run_a)
        store.delete_dataset(other)
        for p in ids_a[1:7]:  # may reuse the deleted reviews' ids
            store.add_review(p, "ann", "accept", run_id=run_a)
        check(store, run_a)
        assert store.review_counts(run_a) == (7, 13)


def test_a_review_committed_late_below_the_last_id_is_noticed(url: str) -> None:
    """PostgreSQL gives a review its id before it commits, so one with a lower id can
    appear after a higher one was read; written here with an explicit id."""
    with Store(url) as store:
        _, run_id, ids = annotated(store, "a", 12)
        store.add_review(ids[0], "ann", "accept", run_id=run_id)
        with store.engine.connect() as conn:
            first = conn.scalar(sa.text("SELECT max(id) FROM reviews"))
        store.add_review(ids[1], "ann", "accept", run_id=run_id)
        store.add_review(ids[1], "ann", "withdraw", run_id=run_id)  # ids first+1, first+2
        check(store, run_id)
        with store.engine.begin() as conn:  # free first+1, as a rolled-back insert would
            conn.execute(sa.text("DELETE FROM reviews WHERE id = :i"), {"i": first + 1})
        check(store, run_id)
        with store.engine.begin() as conn:  # and commit a verdict into it, late
            conn.execute(
                sa.text(
                    "INSERT INTO reviews (id, pair_id, annotator, action, note, created_at) "
                    "VALUES (:i, :p, 'bob', 'accept', '', '2026-12-01 00:00:00')"
                ),
                {"i": first + 1, "p": ids[5]},
            )
        check(store, run_id)
        assert store.review_counts(run_id, "bob") == (1, 11)


def test_a_run_still_being_computed_is_counted_as_it_grows(url: str) -> None:
    with Store(url) as store:
        dataset_id = store.add_dataset("a", odd_pairs(30, "a"))
        run_id = new_run(store, dataset_id)
        ids = store.missing_margin_keys(run_id).ids
        store.add_margins(run_id, ids[:10], np.zeros(10) + 0.5)
        store.add_review(ids[3], "ann", "accept", run_id=run_id)
        store.add_review(ids[20], "ann", "flip", run_id=run_id)  # no margin in the run yet
        check(store, run_id)
        assert store.review_counts(run_id) == (1, 9)
        store.add_margins(run_id, ids[10:], np.zeros(20) - 0.5)
        check(store, run_id)
        assert store.review_counts(run_id) == (2, 28)


def test_next_unreviewed_among_the_few_left_sees_other_writers(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from legend_core.data.store.reviewed import ReviewedPairs

    asked: list[int] = []
    look = ReviewedPairs.look

    def spy(self, s, run_id, annotator=None, at_most=None):  # type: ignore[no-untyped-def]
        now = look(self, s, run_id, annotator, at_most)
        if at_most is not None and now.unreviewed is not None:  # queue_step's look
            asked.append(run_id)
        return now

    monkeypatch.setattr(ReviewedPairs, "look", spy)
    with Store(url) as one, Store(url) as two:
        _, run_id, ids = annotated(one, "a", 10)
        queue = one.review_queue(run_id)

        def next_unreviewed(current: int) -> int | None:
            step = one.queue_step(run_id, current=current)
            assert step.counts == one.review_counts(run_id)
            return step.next_unreviewed

        for p in queue[:-2]:
            two.add_review(p, "ann", "accept", run_id=run_id)
        assert next_unreviewed(queue[0]) == queue[-2]
        two.add_review(queue[-2], "bob", "accept", run_id=run_id)
        assert next_unreviewed(queue[0]) == queue[-1]
        two.add_review(queue[-2], "bob", "withdraw", run_id=run_id)
        assert next_unreviewed(queue[-1]) == queue[-2]
        two.add_review(queue[-1], "cy", "accept", run_id=run_id)
        two.add_review(queue[-2], "cy", "accept", run_id=run_id)
        assert next_unreviewed(queue[0]) is None
        assert one.review_counts(run_id) == (10, 0)
    assert len(asked) == 4  # every step found "next unreviewed" among the pairs left


def test_review_ids_are_not_reused_after_the_upgrade(tmp_path: Path) -> None:
    """Revision 0008 (SQLite): reviews written before it keep their ids, and once the
    highest are deleted the next review still gets a new id."""
    from tests.test_migrations import revision_of, upgrade_to

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade_to(url, "0007")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO datasets (id, name, source, format, created_at, n_pairs) "
                "VALUES (1, 'a', '', '', '2026-12-01 00:00:00', 1)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO pairs (id, dataset_id, idx, prompt, chosen, rejected, meta, "
                "content_hash) VALUES (1, 1, 0, 'p', 'c', 'r', '{}', :h)"
            ),
            {"h": "0" * 64},
        )
        conn.execute(
            sa.text(
                "INSERT INTO reviews (id, pair_id, annotator, action, note, created_at) "
                "VALUES (:i, 1, 'ann', 'flag', '', '2026-12-01 00:00:00')"
            ),
            [{"i": i} for i in (1, 2, 3)],
        )
    engine.dispose()
    with Store(url) as store:  # upgrades
        assert revision_of(url) == "0008"
        with store.engine.begin() as conn:
            assert conn.scalars(sa.text("SELECT id FROM reviews ORDER BY id")).all() == [1, 2, 3]
            conn.execute(sa.text("DELETE FROM reviews WHERE id >= 2"))
            sql = conn.scalar(sa.text("SELECT sql FROM sqlite_master WHERE name = 'reviews'"))
        assert "AUTOINCREMENT" in sql.upper()
        assert store.add_review(1, "ann", "accept") == 4


def test_a_run_id_given_again_to_a_run_of_another_data_set_is_noticed(url: str) -> None:
    """A deleted run's id may be handed to a new run (SQLite); if that run has as many
    margins as the old one, the pair ids of its margins still tell them apart."""
    with Store(url) as store:
        a = store.add_dataset("a", odd_pairs(12, "a"))
        b = store.add_dataset("b", odd_pairs(12, "b"))
        direction = store.add_direction(make_direction(seed=3))
        old_run = store.start_run(a, direction, {"s": 1})
        ids_a = store.missing_margin_keys(old_run).ids
        store.add_margins(old_run, ids_a, np.linspace(-1, 1, 12))
        for p in ids_a[:5]:
            store.add_review(p, "ann", "accept", run_id=old_run)
        assert store.review_counts(old_run) == (5, 7)
        assert store.queue_step(old_run).next_unreviewed is not None
        store.delete_direction(direction)
        new_run_id = store.start_run(b, store.add_direction(make_direction(seed=4)), {"s": 2})
        if url.startswith("sqlite"):
            assert new_run_id == old_run  # the case this test is about
        ids_b = store.missing_margin_keys(new_run_id).ids
        store.add_margins(new_run_id, ids_b, np.linspace(-1, 1, 12))
        check(store, new_run_id)
        assert store.review_counts(new_run_id) == (0, 12)
        step = store.queue_step(new_run_id, current=store.review_queue(new_run_id)[0])
        assert step.next_unreviewed in ids_b


def test_threads_sharing_one_store_end_with_the_right_counts(url: str) -> None:
    """The app's sessions share one store: threads stepping and counting while another
    writes reviews never fail, and the counts after equal a fresh count."""
    import threading

    with Store(url) as store:
        _, run_id, ids = annotated(store, "a", 60)
        errors: list[BaseException] = []
        done = threading.Event()

        def write() -> None:
            rng = np.random.default_rng(2)
            try:
                for p in rng.permutation(ids)[:50]:
                    store.add_review(int(p), str(rng.choice(ANNOTATORS[1:])), "accept")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                done.set()

        def read(annotator: str | None) -> None:
            try:
                while not done.is_set():
                    step = store.queue_step(run_id, annotator=annotator)
                    assert step is not None and sum(step.counts or (0, 0)) == 60
                    store.review_counts(run_id, annotator)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write)] + [
            threading.Thread(target=read, args=(a,)) for a in ANNOTATORS
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        check(store, run_id)
        assert store.review_counts(run_id)[1] == len(
            store.review_queue(run_id, unreviewed_only=True)
        )
