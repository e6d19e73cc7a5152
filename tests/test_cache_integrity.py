"""The embedding cache takes only vectors a correct forward pass can give, and a run never
stores a margin computed from any other (on SQLite, and on PostgreSQL when configured)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from legend_core import config
from legend_core.data.formats import read_contrast_set
from legend_core.data.store import EmbeddingSpace, Store
from legend_core.method.pipeline import build_direction, local_engine
from legend_core.util import text_key
from legend_core.workflows.annotate import annotate_dataset
from tests.test_annotate_store import synthetic_pairs
from tests.test_store import fresh_db_url

SPACE = EmbeddingSpace("tiny", "fp", "alpaca", "last", 1, 64, "float32")


@pytest.fixture
def store(tmp_path: Path):
    with fresh_db_url(tmp_path) as url, Store(url) as s:
        yield s


@pytest.mark.parametrize(
    ("vector", "words"),
    [
        (np.zeros(8, np.float32), "all zeros"),
        (np.array([1.0, np.nan] + [0.0] * 6, np.float32), "NaN or infinite"),
        (np.array([np.inf] * 8, np.float32), "NaN or infinite"),
        (np.zeros(0, np.float32), "empty"),
    ],
)
def test_the_cache_refuses_impossible_vectors_and_writes_nothing(store, vector, words):
    good = {text_key("p", f"ok{i}"): np.full(8, i + 1, np.float32) for i in range(3)}
    bad_key = text_key("p", "bad")
    with pytest.raises(ValueError, match=words) as raised:
        store.put_embeddings(SPACE, {**good, bad_key: vector})
    assert bad_key.hex()[:16] in str(raised.value), "the error names the text's key"
    assert store.counts()["embeddings"] == 0, "all or nothing"


@pytest.fixture
def annotated_setup(store, tiny_lm):
    dataset_id = store.add_dataset("synthetic", synthetic_pairs(40))
    items = read_contrast_set(config.DEMO_CONTRAST)[:12]
    direction = build_direction(tiny_lm, items, layer=2).direction
    return dataset_id, store.add_direction(direction), direction


def test_a_pass_that_yields_zeros_stores_no_margin(store, tiny_lm, annotated_setup):
    """What two jobs on one model without its lock produced: a pass stopped early leaves
    a row of zeros. The run refuses it, names the text, and stores no margin for it."""
    dataset_id, direction_id, direction = annotated_setup
    inner = local_engine(tiny_lm, direction, chunk_size=16)

    def broken(pairs):
        for n, (chunk, chosen, rejected) in enumerate(inner(pairs)):
            if n == 1:
                rejected = rejected.copy()
                rejected[3] = 0.0
            yield chunk, chosen, rejected

    with pytest.raises(ValueError, match="all zeros") as raised:
        annotate_dataset(
            store, None, dataset_id, direction_id, engine=broken, model_dtype="float32"
        )
    pair = synthetic_pairs(40)[16 + 3]
    assert "pair 19's rejected response" in str(raised.value)
    assert repr(pair.rejected[:20])[1:-1] in str(raised.value)
    assert store.counts()["margins"] == 0
    assert store.counts()["embeddings"] == 2 * 16, "only the chunk before the bad one"


def test_zero_vectors_cached_by_an_older_version_are_encoded_again(
    store, tiny_lm, annotated_setup, tmp_path
):
    dataset_id, direction_id, direction = annotated_setup
    run_id = annotate_dataset(store, tiny_lm, dataset_id, direction_id)
    expected = store.run_frame(run_id)["computed_margin"].to_numpy()

    # Another run on a second store whose cache holds zero rows, as written before the
    # cache checked its input (bypassing put_embeddings' check on purpose).
    with fresh_db_url(tmp_path / "second") as url, Store(url) as other:
        other_dataset = other.add_dataset("synthetic", synthetic_pairs(40))
        other_direction = other.add_direction(direction)
        run_settings_space = EmbeddingSpace.from_settings(
            {**_settings(direction), "model_dtype": tiny_lm.dtype_name}
        )
        pairs = synthetic_pairs(40)
        from legend_core.data.store.blocks import insert_block

        other.put_embeddings(run_settings_space, {text_key("x", "y"): np.ones(32)})
        space_id = other.counts()["embedding_spaces"]
        with other.engine.begin() as conn:
            zero_keys = sorted(text_key(p.prompt, p.chosen) for p in pairs[:5])
            insert_block(conn, space_id, zero_keys, np.zeros((5, 32), "<f2"))
        run = annotate_dataset(other, tiny_lm, other_dataset, other_direction)
        got = other.run_frame(run)["computed_margin"].to_numpy()
    np.testing.assert_array_equal(got, expected)


def _settings(direction):
    from legend_core.workflows.annotate import run_settings

    return {k: v for k, v in run_settings(direction, "").items() if k != "model_dtype"}
