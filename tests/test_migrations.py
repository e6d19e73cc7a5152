"""Alembic migrations shipped in the package: upgrade keeps data, schema matches the models."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from legend_core.data.migrations import HEAD, MIGRATIONS_DIR, alembic_config
from legend_core.data.schema import Base
from legend_core.data.store import EmbeddingSpace, Store, make_engine
from legend_core.types import PreferencePair
from legend_core.util import text_key


def revision_of(url: str) -> str | None:
    engine = make_engine(url)
    with engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
    engine.dispose()
    return revision


def upgrade_to(url: str, revision: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)
    engine.dispose()


def test_migrations_ship_inside_the_package() -> None:
    assert MIGRATIONS_DIR.parent == Path(__import__("legend_core.data").data.__file__).parent
    for name in ("env.py", "script.py.mako", "alembic.ini"):
        assert (MIGRATIONS_DIR / name).is_file()
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_current_head() == HEAD
    assert [r.revision for r in script.walk_revisions()] == [
        "0008",
        "0007",
        "0006",
        "0005",
        "0004",
        "0003",
        "0002",
        "0001",
    ]


def test_fresh_database_is_at_head_and_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    store = Store(url)
    assert revision_of(url) == HEAD
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    store.close()


def test_upgrade_from_0001_keeps_data_and_enables_new_features(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade_to(url, "0001")
    assert revision_of(url) == "0001"

    # Fill the 0001 schema the way the 0001 code did: no reviews.run_id, no cache tables.
    now = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    engine = make_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    assert "run_id" not in meta.tables["reviews"].c and "embeddings" not in meta.tables
    t = meta.tables
    vector = np.arange(4, dtype=np.float32)
    with engine.begin() as conn:
        conn.execute(
            t["datasets"].insert(),
            [dict(id=1, name="old", source="x.jsonl", format="trl", created_at=now, n_pairs=3)],
        )
        conn.execute(
            t["pairs"].insert(),
            [
                dict(
                    id=10 + i,
                    dataset_id=1,
                    idx=i,
                    prompt=f"p{i}",
                    chosen=f"c{i}",
                    rejected=f"r{i}",
                    meta={"i": i},
                    content_hash=f"{i:064d}",
                )
                for i in range(3)
            ],
        )
        conn.execute(
            t["directions"].insert(),
            [
                dict(
                    id=1,
                    name="v",
                    model="tiny",
                    layer=2,
                    pooling="last",
                    method="mean_diff",
                    dim=4,
                    vector=vector.tobytes(),
                    created_at=now,
                    meta={
                        "model": "tiny",
                        "layer": 2,
                        "pooling": "last",
                        "template": "alpaca",
                        "method": "mean_diff",
                        "quality": [],
                    },
                )
            ],
        )
        conn.execute(
            t["margin_runs"].insert(),
            [
                dict(
                    id=1,
                    dataset_id=1,
                    direction_id=1,
                    settings={"layer": 2},
                    settings_key="k",
                    status="finished",
                    created_at=now,
                    finished_at=now,
                )
            ],
        )
        conn.execute(
            t["margins"].insert(),
            [
                dict(run_id=1, pair_id=10, value=-1.0),
                dict(run_id=1, pair_id=11, value=0.5),
                dict(run_id=1, pair_id=12, value=2.0),
            ],
        )
        conn.execute(
            t["reviews"].insert(),
            [
                dict(
                    id=1,
                    pair_id=10,
                    annotator="ann",
                    action="flip",
                    value=None,
                    note="",
                    created_at=now,
                ),
                dict(
                    id=2,
                    pair_id=11,
                    annotator="ann",
                    action="override",
                    value=0.25,
                    note="old",
                    created_at=now,
                ),
            ],
        )
    engine.dispose()

    store = Store(url)  # upgrades to head
    assert revision_of(url) == HEAD
    assert store.counts() == {
        "datasets": 1,
        "pairs": 3,
        "contrast_sets": 0,
        "contrast_items": 0,
        "directions": 1,
        "runs": 1,
        "margins": 3,
        "reviews": 2,
        "embedding_spaces": 0,
        "embeddings": 0,
    }
    history = store.pair_history(11)
    assert (history[0].value, history[0].note, history[0].run_id) == (0.25, "old", None)
    assert history[0].created_at == now
    assert store.get_direction(1).vector.tobytes() == vector.tobytes()
    # Old reviews (no run) count in the run; the state is what 0001 meant.
    frame = store.run_frame(1).set_index("pair_id")
    assert frame.loc[10, "flipped"] and frame.loc[10, "effective_margin"] == 1.0
    assert frame.loc[11, "effective_margin"] == 0.25
    # New in 0002: run-scoped reviews, the queue index, the embedding cache.
    review_id = store.add_review(12, "bob", "accept", run_id=1)
    assert store.pair_history(12)[0].run_id == 1 and review_id == 3
    assert store.review_queue(1, unreviewed_only=True) == []  # all three reviewed now
    assert store.review_queue(1) == [10, 11, 12]
    space = EmbeddingSpace("tiny", "fp", "alpaca", "last", 2, 512)
    store.put_embeddings(space, {text_key("p", "c"): np.ones(4)})
    assert list(store.get_embeddings(space, [text_key("p", "c")])) == [text_key("p", "c")]
    with store.engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert "ix_margins_run_value" in {ix["name"] for ix in inspector.get_indexes("margins")}
        checks = inspector.get_check_constraints("reviews")
        assert any("override" in c["sqltext"] for c in checks)  # kept through the table copy
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    # The check constraint still guards the table.
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO reviews (pair_id, annotator, action, note, created_at) "
                "VALUES (10, 'x', 'bogus', '', '2025-01-01')"
            )
        )
    store.close()


def test_upgrade_to_0003_keeps_old_cache_apart_from_new_dtypes(tmp_path: Path) -> None:
    """Vectors cached by 0002 (dtype not recorded) stay readable by their old runs, and a
    run that names its dtype never reuses them."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade_to(url, "0002")
    legacy = EmbeddingSpace("tiny", "fp", "alpaca", "last", 2, 512)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO embedding_spaces (id, key, model, model_fingerprint, template, "
                "pooling, layer, max_length) VALUES (1, :key, 'tiny', 'fp', 'alpaca', 'last', "
                "2, 512)"
            ),
            {"key": legacy.key()},
        )
        conn.execute(
            sa.text(
                "INSERT INTO embeddings (space_id, key, dtype, vector) VALUES (1, :k, '<f2', :v)"
            ),
            {"k": text_key("p", "c"), "v": np.ones(4, "<f2").tobytes()},
        )
    engine.dispose()

    with Store(url) as store:
        assert revision_of(url) == HEAD
        old_run = {"model": "tiny", "model_fingerprint": "fp", "template": "alpaca"}
        old_run |= {"pooling": "last", "layer": 2, "max_length": 512}
        found = store.get_embeddings(EmbeddingSpace.from_settings(old_run), [text_key("p", "c")])
        assert found[text_key("p", "c")].tolist() == [1.0] * 4
        for dtype in ("float32", "bfloat16"):
            space = EmbeddingSpace.from_settings(old_run | {"model_dtype": dtype})
            assert space.key() != legacy.key()
            assert store.get_embeddings(space, [text_key("p", "c")]) == {}


def test_upgrade_from_0003_keeps_review_history_and_reads_it_with_new_meanings(
    tmp_path: Path,
) -> None:
    """A database of the schema before 0004, with reviews made in runs of two directions:
    every review row comes through unchanged, each learns its run's direction, and the
    history is read with the new meanings (flip, flip by one annotator is flipped)."""
    url = f"sqlite:///{tmp_path / 'v3.db'}"
    upgrade_to(url, "0003")
    t0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    engine = make_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    t = meta.tables
    assert "direction_id" not in t["reviews"].c
    vector = np.ones(4, dtype=np.float32).tobytes()
    direction_meta = {"model": "tiny", "layer": 2, "pooling": "last", "template": "alpaca"}
    direction_meta |= {"method": "mean_diff", "quality": []}
    with engine.begin() as conn:
        conn.execute(
            t["datasets"].insert(),
            [dict(id=1, name="d", source="", format="trl", created_at=t0, n_pairs=3)],
        )
        conn.execute(
            t["pairs"].insert(),
            [
                dict(id=10 + i, dataset_id=1, idx=i, prompt=f"p{i}", chosen=f"c{i}")
                | dict(rejected=f"r{i}", meta={}, content_hash=f"{i:064d}")
                for i in range(3)
            ],
        )
        conn.execute(
            t["directions"].insert(),
            [
                dict(id=d, name=f"v{d}", model="tiny", layer=2, pooling="last")
                | dict(method="mean_diff", dim=4, vector=vector, meta=direction_meta)
                | dict(created_at=t0)
                for d in (1, 2)
            ],
        )
        conn.execute(
            t["margin_runs"].insert(),
            [
                dict(id=r, dataset_id=1, direction_id=r, settings={}, settings_key=f"k{r}")
                | dict(status="finished", created_at=t0, finished_at=t0)
                for r in (1, 2)
            ],
        )
        conn.execute(
            t["margins"].insert(),
            [
                dict(run_id=r, pair_id=10 + i, value=v * r)
                for r in (1, 2)
                for i, v in enumerate([1.0, -2.0, 3.0])
            ],
        )
        old_reviews = [
            (1, 10, 1, "ann", "flip", None, "first"),
            (2, 10, 1, "ann", "flip", None, "second"),  # once a toggle back
            (3, 11, 1, "ann", "override", 0.5, ""),
            (4, 11, 2, "bob", "accept", None, ""),
            (5, 12, None, "ann", "flag", None, "odd"),
        ]
        conn.execute(
            t["reviews"].insert(),
            [
                dict(id=i, pair_id=p, run_id=r, annotator=a, action=act, value=v, note=n)
                | dict(created_at=t0 + timedelta(seconds=i))
                for i, p, r, a, act, v, n in old_reviews
            ],
        )
    engine.dispose()

    with Store(url) as store:
        assert revision_of(url) == HEAD
        stored = [
            (h.id, h.pair_id, h.run_id, h.annotator, h.action, h.value, h.note)
            for p in (10, 11, 12)
            for h in store.pair_history(p)
        ]
        assert stored == old_reviews
        times = [h.created_at for p in (10, 11, 12) for h in store.pair_history(p)]
        assert times == [t0 + timedelta(seconds=i) for i in range(1, 6)]
        directions = [h.direction_id for p in (10, 11, 12) for h in store.pair_history(p)]
        assert directions == [1, 1, 1, 2, None]

        run_2 = store.run_frame(2).set_index("pair_id")
        # Two flips by one annotator: flipped (the new meaning), in both runs.
        assert run_2.loc[10, "flipped"] and run_2.loc[10, "effective_margin"] == -2.0
        assert store.run_frame(1).set_index("pair_id").loc[10, "flipped"]
        # ann's override was typed on direction 1: in direction 2's run it sides with accept;
        # bob accepts: unanimous, direction 2's computed margin stands.
        assert run_2.loc[11, "label_source"] == "unanimous"
        assert run_2.loc[11, "effective_margin"] == -4.0
        assert store.run_frame(1).set_index("pair_id").loc[11, "effective_margin"] == 0.5
        assert run_2.loc[12, "flagged"] and run_2.loc[12, "n_verdicts"] == 0

        # New in 0004: withdraw is an action the database accepts.
        store.add_review(10, "ann", "withdraw", run_id=2)
        assert not store.run_frame(2).set_index("pair_id").loc[10, "flipped"]
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO reviews (pair_id, annotator, action, note, created_at) "
                    "VALUES (10, 'x', 'bogus', '', '2025-01-01')"
                )
            )


def test_downgrade_from_0004_refuses_to_drop_withdraws(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with Store(url) as store:
        dataset_id = store.add_dataset("d", [PreferencePair("p", "c", "r")])
        (pair,) = store.dataset_frame(dataset_id)["id"].tolist()
        store.add_review(pair, "ann", "accept")
        store.add_review(pair, "ann", "withdraw")
    engine = make_engine(url)
    with pytest.raises(RuntimeError, match="withdraw"), engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0003")
    engine.dispose()
    assert revision_of(url) == HEAD


def test_upgrade_never_drops_foreign_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    Store(url).close()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
        conn.execute(sa.text("INSERT INTO notes (body) VALUES ('mine')"))
    engine.dispose()
    with Store(url) as store:
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT body FROM notes")).scalar() == "mine"


def test_downgrade_and_upgrade_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with Store(url) as store:
        store.add_dataset("kept", [])
    engine = make_engine(url)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0001")
    engine.dispose()
    assert revision_of(url) == "0001"
    with Store(url) as store:
        assert [d.name for d in store.list_datasets()] == ["kept"]
    assert revision_of(url) == HEAD


def test_command_line_config_works(tmp_path: Path, monkeypatch) -> None:
    """``alembic -c legend_core/migrations/alembic.ini upgrade head`` with $LEGEND_DB."""
    url = f"sqlite:///{tmp_path / 'cli' / 'x.db'}"
    monkeypatch.setenv("LEGEND_DB", url)
    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    command.upgrade(cfg, "head")
    assert revision_of(url) == HEAD
