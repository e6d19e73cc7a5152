"""2-D maps: deterministic samples, PCA, UMAP with a seed, and the fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from legend_core.app import maps


def test_sample_indices_are_sorted_unique_and_deterministic():
    a = maps.sample_indices(10_000, 500, seed=3)
    assert len(a) == 500 and len(set(a)) == 500 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, maps.sample_indices(10_000, 500, seed=3))
    assert not np.array_equal(a, maps.sample_indices(10_000, 500, seed=4))
    assert np.array_equal(maps.sample_indices(7, 500), np.arange(7))
    with pytest.raises(ValueError):
        maps.sample_indices(10, 0)


def test_pca_finds_the_main_axis_with_a_fixed_sign():
    rng = np.random.default_rng(0)
    x = np.zeros((200, 5))
    x[:, 2] = rng.normal(size=200) * 10
    x[:, 4] = rng.normal(size=200)
    coords = maps.pca(x)
    assert coords.shape == (200, 2) and coords.dtype == np.float32
    assert abs(np.corrcoef(coords[:, 0], x[:, 2])[0, 1]) > 0.999
    assert np.allclose(coords, maps.pca(x))
    assert np.array_equal(maps.pca(np.ones((1, 4))), np.zeros((1, 2), dtype=np.float32))
    assert maps.pca(np.ones((3, 1))).shape == (3, 2)  # rank below 2: zero-padded


def test_pca_in_chunks_matches_a_full_svd():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(maps.PCA_CHUNK + 1_500, 24)) * np.linspace(5, 0.1, 24)).astype(np.float32)
    got = maps.pca(x, 3)
    centred = x.astype(np.float64) - x.astype(np.float64).mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:3].T
    for j in range(3):  # the same components up to the sign convention
        sign = np.sign(got[:, j] @ expected[:, j])
        np.testing.assert_allclose(got[:, j], sign * expected[:, j], rtol=1e-4, atol=1e-3)
    assert got.dtype == np.float32


def test_small_sets_fall_back_to_pca_and_say_so():
    x = np.random.default_rng(0).normal(size=(10, 8))
    layout = maps.embed_2d(x, "umap", what="texts")
    assert layout.method == "pca" and layout.coords.shape == (10, 2)
    assert "too few for UMAP" in layout.note and "10 texts" in layout.note


def test_pca_lays_out_every_point():
    x = np.random.default_rng(0).normal(size=(5000, 4))
    layout = maps.embed_2d(x, "pca", max_points=100)
    assert layout.method == "pca" and len(layout.index) == 5000 and not layout.sampled
    assert layout.note == "PCA of all 5,000 points."


def test_umap_is_seeded_and_samples_large_sets():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (60, 64)), rng.normal(6, 1, (60, 64))])
    first = maps.embed_2d(x, "umap", max_points=80, seed=1, what="responses")
    second = maps.embed_2d(x, "umap", max_points=80, seed=1, what="responses")
    assert first.method == "umap" and first.sampled and len(first.index) == 80
    assert np.array_equal(first.index, second.index)
    assert np.allclose(first.coords, second.coords)
    assert "random sample of 80 of 120 responses" in first.note
    # The two clusters stay apart.
    group = first.index >= 60
    gap = np.linalg.norm(first.coords[group].mean(0) - first.coords[~group].mean(0))
    assert gap > 2 * first.coords[~group].std(0).max()


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        maps.embed_2d(np.zeros(5))
    with pytest.raises(ValueError):
        maps.embed_2d(np.zeros((5, 2)), "tsne")


def test_nearest_neighbours_are_exact_with_each_point_first():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    x[7] = x[3]  # a duplicate: its twin comes right after itself, at distance ~0
    indices, distances = maps.nearest_neighbours(x, 6)
    assert indices.shape == distances.shape == (300, 6) and indices.dtype == np.int32
    assert np.array_equal(indices[:, 0], np.arange(300)) and not distances[:, 0].any()
    full = np.linalg.norm(x[:, None, :].astype(np.float64) - x[None, :, :], axis=-1)
    np.fill_diagonal(full, np.inf)
    expected = np.sort(full, axis=1)[:, :5]
    np.testing.assert_allclose(distances[:, 1:], expected, rtol=1e-5, atol=1e-6)
    picked = full[np.arange(300)[:, None], indices[:, 1:]]  # the indices match the distances
    np.testing.assert_allclose(picked, distances[:, 1:], rtol=1e-5, atol=1e-6)
    assert indices[3, 1] == 7 and indices[7, 1] == 3 and distances[3, 1] < 1e-6


def test_umap_with_exact_neighbours_is_seeded_and_keeps_clusters(monkeypatch):
    # The path taken above EXACT_MAX points, tried on a small set by lowering the bound.
    monkeypatch.setattr(maps, "EXACT_MAX", 50)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (150, 64)), rng.normal(6, 1, (150, 64))])
    first, second = maps.umap(x, seed=3), maps.umap(x, seed=3)
    assert first.shape == (300, 2) and np.isfinite(first).all()
    assert np.array_equal(first, second)
    gap = np.linalg.norm(first[150:].mean(0) - first[:150].mean(0))
    assert gap > 2 * first[:150].std(0).max()
    # The exact neighbours are what UMAP was given: pynndescent's graph is not used.
    calls = []
    real = maps.nearest_neighbours
    monkeypatch.setattr(maps, "nearest_neighbours", lambda x, k: calls.append(k) or real(x, k))
    maps.umap(x, seed=3, n_neighbors=10)
    assert calls == [10]
    monkeypatch.setattr(maps, "EXACT_KNN_MAX", 100)  # above it: pynndescent, as before
    maps.umap(x, seed=3)
    assert calls == [10]
