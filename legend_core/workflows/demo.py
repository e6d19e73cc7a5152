"""The demo: our own contrastive set and preference pairs, loaded into a store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from legend_core import config

if TYPE_CHECKING:
    from legend_core.data.store import Store
    from legend_core.method.encode import Progress
    from legend_core.method.models import LoadedModel

DEMO_DATASET = "demo pairs"
DEMO_CONTRAST_SET = "demo contrastive set"
DEMO_DIRECTION = "demo direction"


@dataclass
class DemoIds:
    """Ids of what :func:`load_demo` stored (None where that step was not asked for)."""

    dataset_id: int
    contrast_set_id: int
    direction_id: int | None = None
    run_id: int | None = None


def load_demo(
    store: Store, lm: LoadedModel | None = None, progress: Progress | None = None
) -> DemoIds:
    """Import the demo data sets once; with a model, also build a direction and annotate.

    Runs again safely: what is already there is reused, not duplicated.
    """
    from legend_core.data.formats import read_contrast_set

    datasets = {d.name: d.id for d in store.list_datasets()}
    dataset_id = datasets.get(DEMO_DATASET)
    if dataset_id is None:
        dataset_id, _ = store.import_file(config.DEMO_PAIRS, name=DEMO_DATASET)
    sets = {s.name: s.id for s in store.list_contrast_sets()}
    set_id = sets.get(DEMO_CONTRAST_SET)
    if set_id is None:
        items = read_contrast_set(config.DEMO_CONTRAST)
        set_id = store.add_contrast_set(DEMO_CONTRAST_SET, items, source=config.DEMO_CONTRAST.name)
    ids = DemoIds(dataset_id=dataset_id, contrast_set_id=set_id)
    if lm is None:
        return ids

    from legend_core.method.encode import EncodeSettings
    from legend_core.method.pipeline import build_direction
    from legend_core.workflows.annotate import annotate_dataset

    existing = [d for d in store.list_directions() if d.name == DEMO_DIRECTION]
    if existing:
        ids.direction_id = existing[0].id
    else:
        result = build_direction(
            lm,
            store.get_contrast_items(set_id),
            EncodeSettings(config.DEFAULT_TEMPLATE, config.DEFAULT_POOLING),
            method=config.DEFAULT_METHOD,
            layer=config.DEFAULT_LAYER,
            name=DEMO_DIRECTION,
            contrast_name=DEMO_CONTRAST_SET,
            progress=progress,
        )
        ids.direction_id = store.add_direction(result.direction)
    ids.run_id = annotate_dataset(store, lm, dataset_id, ids.direction_id, progress=progress)
    return ids
