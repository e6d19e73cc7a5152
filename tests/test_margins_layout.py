"""Margins are stored by run (revision 0007): nothing ordered by pair first, so writing a
run touches only that run's rows; margins still go with their data set and their run.

Run on SQLite, and on PostgreSQL when ``LEGEND_TEST_PG_URL`` is set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command

from legend_core.data.migrations import HEAD, alembic_config
from legend_core.data.schema import Margin
from legend_core.data.store import Store, make_engine
from legend_core.data.store.keyset import walks
from tests.test_migrations import revision_of, upgrade_to
from tests.test_pair_keys import new_run, odd_pairs
from tests.test_store import fresh_db_url


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with fresh_db_url(tmp_path) as u:
        yield u


def margins_layout(url: str) -> dict[str, object]:
    """The margins table's indexes, foreign keys and (SQLite) whether it has row ids."""
    engine = make_engine(url)
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        layout: dict[str, object] = {
            "indexes": sorted(
                (i["name"], tuple(i["column_names"])) for i in inspector.get_indexes("margins")
            ),
            "foreign_keys": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"])
                for f in inspector.get_foreign_keys("margins")
            ),
            "primary_key": tuple(inspector.get_pk_constraint("margins")["constrained_columns"]),
        }
        if conn.dialect.name == "sqlite":
            sql = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'margins'")
            ).scalar()
            layout["without_rowid"] = "WITHOUT ROWID" in sql.upper()
    engine.dispose()
    return layout


def all_margins(url: str) -> list[tuple[int, int, float]]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT run_id, pair_id, value FROM margins ORDER BY run_id, pair_id")
        ).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def test_a_new_database_keeps_margins_by_run_only(url: str) -> None:
    Store(url).close()
    layout = margins_layout(url)
    assert layout["indexes"] == [("ix_margins_run_value", ("run_id", "value", "pair_id"))]
    assert layout["foreign_keys"] == [(("run_id",), "margin_runs")]
    assert layout["primary_key"] == ("run_id", "pair_id")
    if url.startswith("sqlite"):
        assert layout["without_rowid"] is True


def test_upgrade_to_0007_keeps_every_margin_and_downgrade_restores_the_pair_index(
    url: str,
) -> None:
    upgrade_to(url, "0006")
    with_pair_index = margins_layout(url)
    assert ("ix_margins_pair_id", ("pair_id",)) in with_pair_index["indexes"]
    # Two data sets and three runs, written as a 0006 database held them.
    values = np.random.default_rng(3).standard_normal(700)
    values[:4] = [5e-324, -1.7976931348623157e308, 1 / 3, -0.0]
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO datasets (id, name, source, format, created_at, n_pairs) "
                "VALUES (1, 'a', '', '', '2026-12-01 00:00:00', 350), "
                "(2, 'b', '', '', '2026-12-01 00:00:00', 350)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO pairs (id, dataset_id, idx, prompt, chosen, rejected, meta, "
                "content_hash) VALUES (:id, :d, :idx, 'p', 'c', 'r', '{}', :h)"
            ),
            [
                {"id": 1 + i, "d": 1 + i // 350, "idx": i % 350, "h": f"{i:064x}"}
                for i in range(700)
            ],
        )
        conn.execute(
            sa.text(
                "INSERT INTO directions (id, name, model, layer, pooling, method, dim, vector, "
                "meta, created_at) VALUES "
                "(1, 'd', 'm', 1, 'mean', 'mean_diff', 1, :v, '{}', '2026-12-01 00:00:00')"
            ),
            {"v": b"\0\0\0\0"},
        )
        conn.execute(
            sa.text(
                "INSERT INTO margin_runs (id, dataset_id, direction_id, settings, settings_key, "
                "status, created_at) VALUES (:id, :d, 1, '{}', :k, 'finished', "
                "'2026-12-01 00:00:00')"
            ),
            [{"id": 1, "d": 1, "k": "a"}, {"id": 2, "d": 1, "k": "b"}, {"id": 3, "d": 2, "k": "c"}],
        )
        rows = [
            {"r": run, "p": pair, "v": float(values[(pair - 1 + 7 * run) % 700])}
            for run, pairs in [(1, range(1, 351)), (2, range(1, 351, 3)), (3, range(351, 701))]
            for pair in pairs
        ]
        conn.execute(
            sa.text("INSERT INTO margins (run_id, pair_id, value) VALUES (:r, :p, :v)"), rows
        )
    engine.dispose()
    before = all_margins(url)
    assert len(before) == len(rows)

    with Store(url) as store:  # upgrades to head
        assert revision_of(url) == HEAD
        assert all_margins(url) == before  # every margin, bit for bit (floats compare exactly)
        # The queue still reads them: a run's margins in value order.
        frame = store.run_frame(2)
        assert frame["computed_margin"].notna().sum() == 117
    layout = margins_layout(url)
    assert layout["indexes"] == [("ix_margins_run_value", ("run_id", "value", "pair_id"))]
    assert layout["foreign_keys"] == [(("run_id",), "margin_runs")]

    engine = make_engine(url)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0006")
    engine.dispose()
    assert margins_layout(url) == with_pair_index
    assert all_margins(url) == before
    Store(url).close()  # and up again
    assert all_margins(url) == before


def test_deleting_a_data_set_takes_its_margins_and_no_others(url: str) -> None:
    with Store(url) as store:
        a = store.add_dataset("a", odd_pairs(30, "a"))
        b = store.add_dataset("b", odd_pairs(30, "b"))
        runs = {}
        for name, dataset_id in (("a", a), ("b", b)):
            for seed in (0, 1):
                run_id = new_run(store, dataset_id, seed=seed)
                ids = store.missing_margin_keys(run_id).ids
                store.add_margins(run_id, ids, np.linspace(-1, 1, len(ids)))
                runs[name, seed] = run_id
        kept = [m for m in all_margins(url) if m[0] in (runs["b", 0], runs["b", 1])]
        store.delete_dataset(a)
        assert all_margins(url) == kept
        # The same through SQL alone: the data set's runs cascade to their margins.
        with store.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM datasets WHERE id = :id"), {"id": b})
        assert all_margins(url) == []


def test_a_reviewed_pair_is_looked_up_by_the_primary_key(tmp_path: Path) -> None:
    """The queue finds the keys of a selection of pairs by (run_id, pair_id), never by
    reading the run's whole index (SQLite keeps no statistics to tell it otherwise)."""
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    with Store(url) as store:
        dataset_id = store.add_dataset("a", odd_pairs(50))
        run_id = new_run(store, dataset_id)
        ids = store.missing_margin_keys(run_id).ids
        store.add_margins(run_id, ids, np.linspace(-1, 1, len(ids)))
        queries: list[tuple[str, object]] = []

        def record(conn, cursor, statement, parameters, context, many) -> None:
            if "margins" in statement and "IN (" in statement:
                queries.append((statement, parameters))

        for order in ("disagreement", "least_sure", "index"):
            found = []
            for walk in walks(order, dataset_id):
                queries.clear()
                sa.event.listen(store.engine, "before_cursor_execute", record)
                try:
                    with store._session() as s:
                        found += walk.keys_of(s, run_id, ids[5:9])
                finally:
                    sa.event.remove(store.engine, "before_cursor_execute", record)
                with store.engine.connect() as conn:
                    raw = conn.connection.driver_connection
                    statement, parameters = queries[0]
                    plan = raw.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()
                details = " | ".join(row[-1] for row in plan)
                assert "margins USING PRIMARY KEY (run_id=? AND pair_id=?)" in details, details
            assert sorted(p for _, p in found) == ids[5:9]
        assert Margin.__table__.dialect_options["sqlite"]["with_rowid"] is False
