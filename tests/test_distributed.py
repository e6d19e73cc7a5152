"""The Ray engine on a local Ray instance (CPU, tiny model): same margins as one process."""

from __future__ import annotations

import numpy as np
import pytest

from legend_core import config
from legend_core.data.formats import read_contrast_set
from legend_core.data.store import Store
from legend_core.method.pipeline import build_direction
from legend_core.workflows.annotate import annotate_dataset
from tests.test_annotate_store import CountingEngine, synthetic_pairs

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_engine_gives_the_single_process_margins_and_resumes(tmp_path, tiny_lm, local_ray):
    from legend_core.method.distributed import ray_engine

    items = read_contrast_set(config.DEMO_CONTRAST)[:16]
    direction = build_direction(tiny_lm, items, layer=2).direction
    stores = {}
    for name in ("local", "ray"):
        store = Store(f"sqlite:///{tmp_path / name}.db")
        stores[name] = (
            store,
            store.add_dataset("s", synthetic_pairs(200)),
            store.add_direction(direction),
        )

    store, dataset_id, direction_id = stores["local"]
    local_run = annotate_dataset(store, tiny_lm, dataset_id, direction_id, chunk_size=64)

    store, dataset_id, direction_id = stores["ray"]
    # A first run in this process dies after one chunk; Ray finishes the rest.
    crashing = CountingEngine(tiny_lm, direction, crash_after=1)
    with pytest.raises(KeyboardInterrupt):
        annotate_dataset(
            store, None, dataset_id, direction_id, engine=crashing, model_dtype="float32"
        )
    engine = ray_engine(store.get_direction(direction_id), actors=2, chunk_size=64, dtype="float32")
    seen = []

    def counting(pairs):
        for chunk, c, r in engine(pairs):
            seen.append(len(chunk))
            yield chunk, c, r

    ray_run = annotate_dataset(
        store, None, dataset_id, direction_id, engine=counting, model_dtype="float32"
    )
    assert sum(seen) == 200 - 64, "Ray only encodes what the crashed run left"

    local = stores["local"][0].run_frame(local_run).sort_values("idx")["computed_margin"]
    remote = store.run_frame(ray_run).sort_values("idx")["computed_margin"]
    assert len(remote) == 200
    np.testing.assert_array_equal(local.to_numpy(), remote.to_numpy())


def test_legend_annotate_engine_ray_records_one_dtype(tmp_path, tiny_lm, local_ray, capsys):
    """The command line's Ray path: the dtype is resolved once, on the driver, and the run
    (and its cache) names it; the margins equal one process's."""
    from legend_core.cli import main

    items = read_contrast_set(config.DEMO_CONTRAST)[:16]
    direction = build_direction(tiny_lm, items, layer=2).direction
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    store = Store(db)
    dataset_id = store.add_dataset("s", synthetic_pairs(40))
    direction_id = store.add_direction(direction)
    args = ["annotate", "--dataset", str(dataset_id), "--direction-id", str(direction_id)]
    args += ["--engine", "ray", "--actors", "1", "--dtype", "float32", "--db", db]
    assert main(args) == 0
    (run,) = store.list_runs()
    assert run.settings["model_dtype"] == "float32" and run.n_margins == 40

    local_store = Store(f"sqlite:///{tmp_path / 'local.db'}")
    local_run = annotate_dataset(
        local_store,
        tiny_lm,
        local_store.add_dataset("s", synthetic_pairs(40)),
        local_store.add_direction(direction),
    )
    got = store.run_frame(run.id).sort_values("idx")["computed_margin"].to_numpy()
    want = local_store.run_frame(local_run).sort_values("idx")["computed_margin"].to_numpy()
    np.testing.assert_array_equal(got, want)


def test_actor_dtype_is_resolved_on_the_driver():
    from legend_core.method.distributed import actor_dtype
    from legend_core.method.models import ModelLoadError, resolve_dtype

    assert actor_dtype("float16", "cpu") == "float16"
    assert actor_dtype("auto", "cuda") == "bfloat16"
    assert actor_dtype("auto", "cpu") == str(resolve_dtype("auto", "cpu")).removeprefix("torch.")
    with pytest.raises(ModelLoadError, match="Unknown dtype"):
        actor_dtype("float8", "cpu")
