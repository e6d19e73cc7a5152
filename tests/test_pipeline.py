"""The method end to end on a tiny random model: build a direction, annotate pairs."""

from __future__ import annotations

import numpy as np
import pytest

from legend_core.method.encode import EncodeSettings, encode
from legend_core.method.margins import margins
from legend_core.method.pipeline import annotate_pairs, build_direction, check_compatible
from legend_core.types import ContrastItem, PreferencePair

ITEMS = [
    ContrastItem(f"request number {i} about the fox", f"Sure, here is how {i}.", "Sorry, no.")
    for i in range(12)
]


def test_build_direction_measures_every_layer_and_picks_the_best(tiny_lm):
    result = build_direction(tiny_lm, ITEMS, EncodeSettings(pooling="last"), test_fraction=0.25)
    d = result.direction
    assert [q.layer for q in d.quality] == list(range(1, tiny_lm.num_layers + 1))
    # Chosen on cross-validation inside the training split, never on the held-out numbers.
    assert all(q.cv_auroc is not None and q.cv_separation is not None for q in d.quality)
    assert (
        d.layer
        == max(d.quality, key=lambda q: (round(q.cv_auroc, 3), q.cv_separation, q.layer)).layer
    )
    assert set(result.vectors) == {q.layer for q in d.quality}
    np.testing.assert_array_equal(result.vectors[d.layer], d.vector)
    assert d.n_train + d.n_test == len(ITEMS) and d.n_test == 3
    assert d.model == tiny_lm.name and d.model_fingerprint == tiny_lm.fingerprint
    assert d.pooling == "last" and d.template == "alpaca" and d.method == "mean_diff"
    assert result.harmless.shape == (12, tiny_lm.hidden_size)
    # The training split alone defines the vector: refitting it gives the same one.
    from legend_core.method.directions import fit

    train = result.train
    np.testing.assert_allclose(
        fit(result.harmless[train], result.harmful[train]), d.vector, atol=1e-6
    )
    pos, neg = result.held_out_projections()
    assert len(pos) == len(neg) == 3


def test_fixed_layer_and_methods(tiny_lm):
    for method in ("pca", "logistic"):
        d = build_direction(tiny_lm, ITEMS, method=method, layer=2).direction
        assert d.layer == 2 and d.method == method
    with pytest.raises(ValueError, match="layer"):
        build_direction(tiny_lm, ITEMS, layer=9)
    with pytest.raises(ValueError, match="at least 4"):
        build_direction(tiny_lm, ITEMS[:3])


def test_annotate_pairs_equals_projection_of_encoded_difference(tiny_lm):
    direction = build_direction(tiny_lm, ITEMS, layer=3).direction
    pairs = [
        PreferencePair("how do I do X?", "I won't help.", "Sure, easy."),
        PreferencePair("a longer prompt " * 5, "Fine, here you go", ""),
    ]
    values = annotate_pairs(tiny_lm, pairs, direction)
    settings = EncodeSettings(direction.template, direction.pooling, direction.max_length)
    c = encode(tiny_lm, [p.prompt for p in pairs], [p.chosen for p in pairs], [3], settings)
    r = encode(tiny_lm, [p.prompt for p in pairs], [p.rejected for p in pairs], [3], settings)
    expected = (c.vectors[3] - r.vectors[3]) @ direction.vector / np.linalg.norm(direction.vector)
    np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        values, margins(c.vectors[3], r.vectors[3], direction.vector), atol=1e-5
    )


def test_direction_from_another_model_is_refused(tiny_lm, tmp_path):
    from legend_core.method.models import load_model
    from tests.conftest import make_tiny_model

    other = load_model(str(make_tiny_model(tmp_path / "o", seed=5)), device="cpu")
    direction = build_direction(other, ITEMS, layer=1).direction
    with pytest.raises(ValueError, match="weights"):
        check_compatible(tiny_lm, direction)
