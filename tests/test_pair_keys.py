"""Pairs carry the cache keys of their texts (revision 0006), and margins are written on the
fast paths of ``add_margins`` (on SQLite, and on PostgreSQL when configured)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from legend_core.data.migrations import HEAD
from legend_core.data.store import NotFoundError, Store, make_engine
from legend_core.types import PreferencePair
from legend_core.util import pair_text_keys, text_key
from tests.test_migrations import revision_of, upgrade_to
from tests.test_store import fresh_db_url, make_direction

#: Texts a hash could get wrong: non-ASCII, the separator itself, empty, long.
ODD_TEXTS = [
    ("Grüße, 你好 🙂", "ja", "nein"),
    ("a\x1fb", "c", "b\x1fc"),
    ("", "", "x"),
    ("p" * 5_000, "c" * 3_000, "r"),
]


def odd_pairs(n: int, tag: str = "") -> list[PreferencePair]:
    return [
        PreferencePair(f"{p} {tag}{i}", f"{c}{i}", f"{r}{i}")
        for i in range(n)
        for p, c, r in [ODD_TEXTS[i % len(ODD_TEXTS)]]
    ]


@pytest.mark.parametrize(("prompt", "chosen", "rejected"), ODD_TEXTS)
def test_pair_text_keys_are_the_text_keys(prompt: str, chosen: str, rejected: str) -> None:
    keys = pair_text_keys(prompt, chosen, rejected)
    assert keys == (text_key(prompt, chosen), text_key(prompt, rejected))
    with pytest.raises(UnicodeEncodeError):  # as text_key: no text that is not UTF-8
        pair_text_keys(prompt, chosen, "\ud800")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with fresh_db_url(tmp_path) as url, Store(url) as s:
        yield s


def new_run(store: Store, dataset_id: int, seed: int = 0) -> int:
    return store.start_run(dataset_id, store.add_direction(make_direction(seed=seed)), {"s": seed})


def test_missing_margin_keys_are_the_text_keys_of_the_missing_pairs(store: Store) -> None:
    pairs = odd_pairs(9)
    dataset_id = store.add_dataset("odd", pairs)
    run_id = new_run(store, dataset_id)
    missing = store.pairs_missing_margins(run_id)
    keys = store.missing_margin_keys(run_id)
    assert keys.ids == [p.id for p in missing]
    assert keys.chosen == [text_key(p.prompt, p.chosen) for p in pairs]
    assert keys.rejected == [text_key(p.prompt, p.rejected) for p in pairs]
    store.add_margins(run_id, keys.ids[2:5], [0.5, -0.5, 1.5])
    rest = store.missing_margin_keys(run_id)
    assert rest.ids == keys.ids[:2] + keys.ids[5:]
    assert rest.chosen == keys.chosen[:2] + keys.chosen[5:]
    assert rest.rejected == keys.rejected[:2] + keys.rejected[5:]


def test_a_pair_without_stored_keys_gets_them_from_its_texts(store: Store) -> None:
    """Rows not written by the store (by hand, by another tool) have NULL keys."""
    pairs = odd_pairs(6)
    dataset_id = store.add_dataset("odd", pairs)
    run_id = new_run(store, dataset_id)
    ids = store.missing_margin_keys(run_id).ids
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE pairs SET chosen_key = NULL WHERE id = :a"), {"a": ids[1]})
        conn.execute(
            sa.text("UPDATE pairs SET rejected_key = NULL WHERE id IN (:a, :b)"),
            {"a": ids[3], "b": ids[5]},
        )
    keys = store.missing_margin_keys(run_id)
    assert keys.chosen == [text_key(p.prompt, p.chosen) for p in pairs]
    assert keys.rejected == [text_key(p.prompt, p.rejected) for p in pairs]


def test_pair_texts_come_in_the_order_asked(store: Store) -> None:
    pairs = odd_pairs(5)
    dataset_id = store.add_dataset("odd", pairs)
    ids = store.missing_margin_keys(new_run(store, dataset_id)).ids
    got = store.pair_texts([ids[3], ids[0], ids[3]])
    assert [(p.id, p.idx, p.prompt, p.chosen) for p in got] == [
        (ids[3], 3, pairs[3].prompt, pairs[3].chosen),
        (ids[0], 0, pairs[0].prompt, pairs[0].chosen),
        (ids[3], 3, pairs[3].prompt, pairs[3].chosen),
    ]
    assert store.pair_texts([]) == []
    with pytest.raises(NotFoundError, match=str(max(ids) + 7)):
        store.pair_texts([ids[0], max(ids) + 7])


class Statements:
    """The SQL a store sends, to tell which path ``add_margins`` took."""

    def __init__(self, store: Store) -> None:
        self.seen: list[str] = []
        sa.event.listen(store.engine, "before_cursor_execute", self._record)

    def _record(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.seen.append(" ".join(statement.split()).upper())

    def reads_of_pairs(self) -> list[str]:
        return [s for s in self.seen if s.startswith("SELECT") and "FROM PAIRS" in s]


@pytest.fixture
def two_sets(store: Store) -> tuple[Store, int, list[int], list[int]]:
    """Data sets ``a`` and ``b`` of 10 pairs each (ids consecutive, ``b`` after ``a``) and a
    run on ``a``."""
    a = store.add_dataset("a", odd_pairs(10, "a"))
    b = store.add_dataset("b", odd_pairs(10, "b"))
    run_id = new_run(store, a)
    ids_a = store.missing_margin_keys(run_id).ids
    ids_b = store.missing_margin_keys(new_run(store, b, seed=1)).ids
    assert ids_b[0] > ids_a[-1]
    return store, run_id, ids_a, ids_b


@pytest.mark.parametrize(
    ("case", "path"),
    [
        ("a range running into b", "BETWEEN"),
        ("one pair of b", "BETWEEN"),
        ("a gap, then b", "BETWEEN"),
        ("ids no pair has, after a", "BETWEEN"),
        ("far apart, b among them", " IN ("),
        ("far apart, none stored", " IN ("),
    ],
)
def test_add_margins_refuses_pairs_of_another_data_set_on_every_path(two_sets, case, path):
    store, run_id, a, b = two_sets
    given = {
        "a range running into b": a[6:] + b[:3],
        "one pair of b": [b[4]],
        "a gap, then b": [a[7], a[9], b[0]],
        "ids no pair has, after a": a[8:] + [b[9] + 1, b[9] + 2],
        "far apart, b among them": [a[0], b[9]],
        "far apart, none stored": [a[0], b[9] + 1_000],
    }[case]
    strangers = [p for p in given if p not in a]
    before = store.counts()
    statements = Statements(store)
    with pytest.raises(ValueError, match=re.escape(f"pairs {strangers} are not in run {run_id}'")):
        store.add_margins(run_id, given, [0.25] * len(given))
    assert any(path in s for s in statements.reads_of_pairs()), statements.reads_of_pairs()
    assert store.counts() == before, "nothing is written"


@pytest.mark.parametrize(
    ("case", "path"),
    [
        ("contiguous", "BETWEEN"),
        ("with gaps", "BETWEEN"),
        ("far apart", " IN ("),
    ],
)
def test_add_margins_takes_pairs_of_the_run_on_every_path(two_sets, case, path):
    store, run_id, a, _ = two_sets
    given = {"contiguous": a[2:8], "with gaps": a[1:9:2], "far apart": [a[9], a[0]]}[case]
    values = [0.125 * (i + 1) for i in range(len(given))]
    statements = Statements(store)
    store.add_margins(run_id, given, values)
    assert any(path in s for s in statements.reads_of_pairs())
    # A pair keeps its first margin: a second writer's values are skipped, not an error.
    store.add_margins(run_id, a, [9.0] * len(a))
    frame = store.run_frame(run_id).set_index("pair_id")["computed_margin"]
    assert frame.loc[given].tolist() == values
    assert frame.drop(index=given).eq(9.0).all()
    assert store.counts()["margins"] == len(a)


def test_margins_keep_every_bit_of_their_values(store: Store) -> None:
    dataset_id = store.add_dataset("odd", odd_pairs(50))
    run_id = new_run(store, dataset_id)
    ids = store.missing_margin_keys(run_id).ids
    rng = np.random.default_rng(3)
    values = rng.standard_normal(46) * 10.0 ** rng.integers(-300, 300, 46)
    values = np.concatenate([values, [5e-324, 1.7976931348623157e308, -1e-310, 1 / 3]])
    store.add_margins(run_id, ids, values)
    got = store.run_frame(run_id)["computed_margin"].to_numpy()
    assert got.tobytes() == values.astype(np.float64).tobytes()


# --- revision 0006 ----------------------------------------------------------------------------


def _insert_at_0005(url: str, n: int) -> list[PreferencePair]:
    """A data set, a run and a few margins and reviews, written as a 0005 database held them."""
    pairs = odd_pairs(n)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO datasets (id, name, source, format, created_at, n_pairs) "
                "VALUES (1, 'old', '', '', :t, :n)"
            ),
            {"t": "2026-11-30 00:00:00", "n": n},
        )
        conn.execute(
            sa.text(
                "INSERT INTO pairs (id, dataset_id, idx, prompt, chosen, rejected, meta, "
                "content_hash) VALUES (:id, 1, :idx, :p, :c, :r, '{}', :h)"
            ),
            [
                {"id": 10 + 3 * i, "idx": i, "p": p.prompt, "c": p.chosen, "r": p.rejected}
                | {"h": f"{i:064x}"}
                for i, p in enumerate(pairs)
            ],
        )
    engine.dispose()
    return pairs


def test_upgrade_to_0006_stores_every_pairs_keys_and_downgrade_drops_them(tmp_path: Path) -> None:
    n = 2_345  # more than one page of the backfill (2,000)
    with fresh_db_url(tmp_path) as url:
        upgrade_to(url, "0005")
        pairs = _insert_at_0005(url, n)
        with Store(url) as store:
            assert revision_of(url) == HEAD
            with store.engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT idx, chosen_key, rejected_key FROM pairs ORDER BY idx")
                ).all()
            assert [bytes(r[1]) for r in rows] == [text_key(p.prompt, p.chosen) for p in pairs]
            assert [bytes(r[2]) for r in rows] == [text_key(p.prompt, p.rejected) for p in pairs]
            # And the store uses them: a run finds the same keys as from the texts.
            run_id = new_run(store, 1)
            keys = store.missing_margin_keys(run_id)
            assert keys.chosen == [text_key(p.prompt, p.chosen) for p in pairs]
            store.add_margins(run_id, keys.ids, np.linspace(-1, 1, n))
            before = store.counts()
        engine = make_engine(url)
        with engine.begin() as conn:
            from alembic import command

            from legend_core.data.migrations import alembic_config

            command.downgrade(alembic_config(conn), "0005")
        with engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("pairs")}
        engine.dispose()
        assert {"chosen_key", "rejected_key"}.isdisjoint(columns)
        assert revision_of(url) == "0005"
        with Store(url) as store:  # upgraded again: the keys are back, nothing else moved
            assert store.counts() == before
            assert store.missing_margin_keys(new_run(store, 1, seed=5)).rejected == [
                text_key(p.prompt, p.rejected) for p in pairs
            ]


# --- a run reads ids and keys, and texts only of the pairs it encodes ---------------------------


@pytest.mark.parametrize("stored_keys", [True, False])
def test_a_run_reads_texts_only_of_the_pairs_it_encodes(store, tiny_lm, monkeypatch, stored_keys):
    from legend_core import config
    from legend_core.data.formats import read_contrast_set
    from legend_core.data.store import EmbeddingSpace
    from legend_core.method.margins import projections
    from legend_core.method.pipeline import build_direction
    from legend_core.workflows.annotate import annotate_dataset, run_settings
    from tests.test_annotate_store import synthetic_pairs

    pairs = synthetic_pairs(60)
    items = read_contrast_set(config.DEMO_CONTRAST)[:12]
    direction = build_direction(tiny_lm, items, layer=2).direction
    first = store.add_dataset("first", pairs[:40])
    annotate_dataset(store, tiny_lm, first, store.add_direction(direction), chunk_size=16)
    second = store.add_dataset("second", pairs[20:])  # 20 pairs cached, 20 new
    ids = store.dataset_frame(second)["id"].tolist()
    if not stored_keys:  # as if written by another tool: keys come from the texts
        with store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE pairs SET chosen_key = NULL, rejected_key = NULL"))
    asked: list[list[int]] = []
    read = Store.pair_texts
    monkeypatch.setattr(Store, "pair_texts", lambda s, p: asked.append(list(p)) or read(s, p))
    other = build_direction(tiny_lm, items, layer=2, method="pca").direction
    run_id = annotate_dataset(store, tiny_lm, second, store.add_direction(other), chunk_size=16)
    # Texts of the cached pairs are never read to encode them (nor at all, with keys).
    assert asked == ([] if stored_keys else [ids]) + [ids[20:]]

    # The margins are the cached vectors' projections, bit for bit.
    space = EmbeddingSpace.from_settings(run_settings(other, tiny_lm.dtype_name))
    chosen = [text_key(p.prompt, p.chosen) for p in pairs[20:]]
    rejected = [text_key(p.prompt, p.rejected) for p in pairs[20:]]
    cached = store.get_embeddings(space, chosen + rejected)
    expected = projections(np.stack([cached[k] for k in chosen]), other.vector) - projections(
        np.stack([cached[k] for k in rejected]), other.vector
    )
    frame = store.run_frame(run_id)
    assert frame["computed_margin"].to_numpy().tobytes() == expected.tobytes()
