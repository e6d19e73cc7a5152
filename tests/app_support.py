"""Helpers for the app's tests: an AppTest on a fresh database, waiting on background jobs,
error checks, and a large synthetic database built in seconds (no model involved)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from legend_core.data.store import EmbeddingSpace, Store
from legend_core.method.directions import Direction, LayerQuality
from legend_core.types import PreferencePair
from legend_core.util import text_key

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PAGES = ["home", "data", "directions", "explore", "review", "evaluate", "export"]
TIMEOUT = 180


def app(monkeypatch, db_url: str, model: str | Path = "default"):
    """An AppTest of app.py on ``db_url`` with ``model`` as LEGEND_MODEL (not yet run)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LEGEND_DB", db_url)
    monkeypatch.setenv("LEGEND_MODEL", str(model))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def problems(at) -> list[str]:
    """Every exception and error element on the page, as text."""
    out = [f"exception: {e.value}" for e in at.exception]
    out += [f"error: {e.value}" for e in at.error]
    return out


def goto(at, page: str):
    """Switch to ``app_pages/<page>.py`` and run it; fail on any exception or error element."""
    at.switch_page(f"app_pages/{page}.py").run()
    assert not problems(at), problems(at)
    return at


def button(at, label: str, startswith: bool = False):
    """The button with this label (or label prefix)."""
    found = [
        b for b in at.button if (b.label.startswith(label) if startswith else b.label == label)
    ]
    assert found, f"no button {label!r}; have {[b.label for b in at.button]}"
    return found[0]


def wait_until(at, done: Callable[[], bool], timeout: float = 120.0, step: float = 0.25):
    """Rerun the page until ``done()`` (a background job has finished and shown its result)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if done():
            return at
        time.sleep(step)
        at.run()
    raise AssertionError(f"timed out; page shows {problems(at)} {[m.label for m in at.metric]}")


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def large_db(url: str, n: int = 20_000, dim: int = 32, seed: int = 0) -> dict[str, int]:
    """A database with ``n`` synthetic pairs, a direction, a finished run with margins, a
    few reviews, and cached embeddings for every response (what the map reads)."""
    rng = np.random.default_rng(seed)
    store = Store(url)
    pairs = [
        PreferencePair(
            f"Question {i} about topic {i % 97}: how do I do thing {i}?",
            f"Answer {i}. " + "Here is a careful reply. " * (1 + i % 6),
            f"Bad answer {i}. " + "Sure, do the risky thing. " * (1 + i % 4),
        )
        for i in range(n)
    ]
    dataset_id = store.add_dataset("synthetic 20k", pairs, source="synthetic", format="trl")
    vector = rng.normal(size=dim).astype(np.float32)
    vector /= np.linalg.norm(vector)
    quality = [LayerQuality(k, 0.8, 0.85, 1.2, 0.9, 0.05, 0.8) for k in range(1, 4)]
    direction = Direction(
        vector=vector,
        model="synthetic",
        layer=2,
        pooling="mean",
        template="alpaca",
        method="mean_diff",
        model_fingerprint="synthetic",
        name="synthetic direction",
        quality=quality,
    )
    direction_id = store.add_direction(direction)
    settings = {
        "model": "synthetic",
        "model_fingerprint": "synthetic",
        "layer": 2,
        "template": "alpaca",
        "pooling": "mean",
        "max_length": 512,
        "model_dtype": "float32",
    }
    space = EmbeddingSpace.from_settings(settings)
    run_id = store.start_run(dataset_id, direction_id, settings)
    ids = store.dataset_frame(dataset_id)["id"].tolist()
    chosen = rng.normal(size=(n, dim)).astype(np.float32) + 0.3 * vector
    rejected = rng.normal(size=(n, dim)).astype(np.float32)
    cache = {text_key(p.prompt, p.chosen): c for p, c in zip(pairs, chosen)}
    cache |= {text_key(p.prompt, p.rejected): r for p, r in zip(pairs, rejected)}
    store.put_embeddings(space, cache)
    values = (chosen - rejected) @ vector
    store.add_margins(run_id, ids, values.tolist())
    store.finish_run(run_id)
    store.add_review(ids[0], "ann", "accept", run_id=run_id)
    store.add_review(ids[1], "ann", "flip", run_id=run_id)
    store.add_review(ids[2], "ann", "override", value=1.5, run_id=run_id)
    store.close()
    return {"dataset_id": dataset_id, "direction_id": direction_id, "run_id": run_id}
