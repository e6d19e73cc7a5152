"""Forward passes on a Ray cluster: one model replica per actor (a GPU each, or CPUs).

The driver reads pairs (from the store or a file), streams them through Ray Data's
``map_batches`` to actors that each load the model once, and gets back the vectors in
input order. ``workflows.annotate.annotate_dataset`` then caches them and writes margins
chunk by chunk exactly as in one process, so a run can be resumed by either engine and both give
the same margins.

Point it at a cluster with ``address="ray://head:10001"`` (or ``RAY_ADDRESS``); without
one, Ray starts locally.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from legend_core.method.directions import Direction
from legend_core.method.models import resolve_dtype
from legend_core.types import TextPair

if TYPE_CHECKING:
    import pandas as pd


class KeyedPair(TextPair, Protocol):
    """A pair with an id (a stored pair): the Ray engine matches its batches back by it."""

    @property
    def id(self) -> int: ...


class EngineUnavailable(RuntimeError):
    """The engine's library is not installed; the message says how to install it."""


class PairEncoderActor:
    """A Ray Data callable class: loads the model once, then encodes batches of pairs."""

    def __init__(
        self,
        vector: np.ndarray,
        meta: dict[str, Any],
        device: str,
        dtype: str,
        trust_remote_code: bool,
        batch_tokens: int | None,
    ) -> None:
        from legend_core.method.models import load_model
        from legend_core.method.pipeline import check_compatible

        self.direction = Direction.from_metadata(vector, meta)
        self.lm = load_model(
            self.direction.model, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
        check_compatible(self.lm, self.direction)
        self.batch_tokens = batch_tokens

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd

        from legend_core.method.packing import encode_pairs
        from legend_core.method.pipeline import settings_of

        layer = self.direction.layer
        chosen, rejected = encode_pairs(
            self.lm,
            batch["prompt"].tolist(),
            batch["chosen"].tolist(),
            batch["rejected"].tolist(),
            layers=[layer],
            settings=settings_of(self.direction),
            batch_tokens=self.batch_tokens,
        )
        return pd.DataFrame(
            {
                "id": batch["id"].to_numpy(),
                "chosen_vector": [v.tobytes() for v in chosen.vectors[layer]],
                "rejected_vector": [v.tobytes() for v in rejected.vectors[layer]],
            }
        )


def actor_dtype(dtype: str, device: str) -> str:
    """The dtype name every actor loads the model in: ``auto`` is resolved on the driver
    (bfloat16 on GPUs, as for one process; on CPUs by the driver's CPU), so that all
    actors agree and the embedding cache records one dtype."""
    if dtype != "auto":
        resolve_dtype(dtype, device)  # a clear error for an unknown name
        return dtype
    if device == "cuda":
        return "bfloat16"
    return str(resolve_dtype("auto", device)).removeprefix("torch.")


def ray_engine(
    direction: Direction,
    address: str | None = None,
    actors: int = 1,
    device: str = "cpu",
    dtype: str = "auto",
    chunk_size: int = 256,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float = 1,
    trust_remote_code: bool = False,
    batch_tokens: int | None = None,
):
    """An engine for ``workflows.annotate.annotate_dataset`` that runs forward passes on Ray.

    Args:
        direction: The direction whose model, layer and settings to use.
        address: A Ray cluster address; None starts (or joins) a local instance.
        actors: Model replicas, each in its own actor.
        device: ``cpu`` or ``cuda`` inside each actor.
        dtype: Model dtype inside each actor.
        chunk_size: Pairs per batch sent to an actor; equal to the local engine's chunk
            size, batches (and so float rounding) coincide with a one-process run.
        gpus_per_actor: GPUs reserved per actor (default: 1 with ``cuda``, else 0).
        cpus_per_actor: CPUs reserved per actor.
        trust_remote_code: Passed to the model loader in each actor.
        batch_tokens: Padded tokens per forward pass inside an actor; by default the
            encoder's own choice for the actor's device (as in one process).
    """
    gpus = gpus_per_actor if gpus_per_actor is not None else (1 if device == "cuda" else 0)
    meta = direction.metadata()

    def run(pairs: Sequence[KeyedPair]) -> Iterator[tuple[list[KeyedPair], np.ndarray, np.ndarray]]:
        if not pairs:
            return
        import pandas as pd

        try:
            import ray
        except ModuleNotFoundError as error:
            raise EngineUnavailable(
                "the Ray engine needs Ray: pip install -r requirements-cluster.txt"
            ) from error

        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        frame = pd.DataFrame(
            {
                "id": [p.id for p in pairs],
                "prompt": [p.prompt for p in pairs],
                "chosen": [p.chosen for p in pairs],
                "rejected": [p.rejected for p in pairs],
            }
        )
        # One block per chunk: actors share the work, and batches stay chunk-aligned.
        blocks = [frame[i : i + chunk_size] for i in range(0, len(frame), chunk_size)]
        dataset = ray.data.from_pandas(blocks).map_batches(
            PairEncoderActor,
            fn_constructor_args=(
                direction.vector,
                meta,
                device,
                dtype,
                trust_remote_code,
                batch_tokens,
            ),
            batch_size=chunk_size,
            batch_format="pandas",
            concurrency=actors,
            num_gpus=gpus,
            num_cpus=cpus_per_actor,
        )
        by_id = {p.id: p for p in pairs}
        for batch in dataset.iter_batches(batch_size=None, batch_format="pandas"):
            yield (
                [by_id[int(i)] for i in batch["id"]],
                np.stack([np.frombuffer(b, dtype=np.float32) for b in batch["chosen_vector"]]),
                np.stack([np.frombuffer(b, dtype=np.float32) for b in batch["rejected_vector"]]),
            )

    return run
