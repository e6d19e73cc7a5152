"""Trainable margins: every export scale, its manifest, the shell and the app's defaults,
and the files as `datasets` and TRL's RewardTrainer take them (issue 11, point 4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from legend_core import config
from legend_core.cli import main
from legend_core.data.exports import export_dataset, export_frame
from legend_core.data.store import Store
from legend_core.method.directions import Direction
from legend_core.method.margins import SCALES, scale
from legend_core.types import PreferencePair
from tests.test_store import fresh_db_url

# Raw projections of the size the demo gives (median |m| about 8); pair 4 gets flagged.
RAW = [12.0, -3.0, 0.0, 7.5, -30.0, 4.0, 1.0, 20.0, -6.0, 9.0]
FLAGGED = 4


@pytest.fixture
def run(tmp_path: Path) -> Iterator[tuple[Store, int, str]]:
    """A store with one finished run of len(RAW) pairs, pair FLAGGED flagged: (store, run, url)."""
    with fresh_db_url(tmp_path) as url, Store(url) as store:
        pairs = [
            PreferencePair(f"Question {i}: is this safe?", f"Safe answer {i}.", f"Risky {i}!")
            for i in range(len(RAW))
        ]
        dataset_id = store.add_dataset("scales", pairs)
        direction = Direction(np.ones(8, np.float32), "tiny", 3, "mean", "plain", "logistic")
        run_id = store.start_run(dataset_id, store.add_direction(direction), {"layer": 3})
        ids = [p.id for p in store.pairs_missing_margins(run_id)]
        store.add_margins(run_id, ids, RAW)
        store.finish_run(run_id)
        store.add_review(ids[FLAGGED], "ann", "flag", run_id=run_id)
        yield store, run_id, url


def kept(include_flagged: bool = False) -> np.ndarray:
    return np.array([m for i, m in enumerate(RAW) if include_flagged or i != FLAGGED])


def test_defaults_are_one_constant_each(run) -> None:
    store, run_id, _ = run
    assert config.DEFAULT_MARGIN_SCALE in SCALES
    frame = export_frame(store, run_id)
    expected = scale(kept(not config.DEFAULT_EXCLUDE_FLAGGED), config.DEFAULT_MARGIN_SCALE)
    np.testing.assert_allclose(frame["margin"], expected.values)
    # The CLI's default is the same constant (and so is the Export page's; see the app test).
    from legend_core.cli import build_parser

    args = build_parser().parse_args(["export", "--run", "1", "--out", "x.jsonl"])
    assert args.exclude_flagged is config.DEFAULT_EXCLUDE_FLAGGED and args.scale is None
    flags = build_parser().parse_args(["export", "--run", "1", "--out", "x", "--include-flagged"])
    assert flags.exclude_flagged is False


@pytest.mark.parametrize("how", SCALES)
def test_each_scale_is_computed_on_the_rows_exported(run, tmp_path: Path, how: str) -> None:
    store, run_id, _ = run
    out = tmp_path / f"{how}.jsonl"
    manifest = export_dataset(store, run_id, out, scale=how, provenance=True)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    got = np.array([r["margin"] for r in rows])
    raw = kept()  # the flagged pair is left out before the scale's statistics are taken
    assert len(rows) == len(raw) == manifest["counts"]["rows"]
    assert manifest["margin"]["scale"] == how
    assert manifest["filters"]["scale"] == how
    params = manifest["margin"]["parameters"]
    # Signs are kept by every scale (bins: above its lowest level, which is 0).
    shown = got != 0 if how == "bins" else np.ones(len(got), bool)
    np.testing.assert_array_equal(np.sign(got[shown]), np.sign(raw[shown]))
    if how == "none":
        np.testing.assert_array_equal(got, raw)
        assert params == {} and "margin_unscaled" not in rows[0]
        return
    np.testing.assert_array_equal([r["margin_unscaled"] for r in rows], raw)
    if how == "rms":
        assert params["rms"] == pytest.approx(np.sqrt(np.mean(raw**2)))
        assert np.sqrt(np.mean(got**2)) == pytest.approx(1.0)
        # Not the RMS of every pair: the flagged -30 would have made it larger.
        assert params["rms"] < np.sqrt(np.mean(kept(True) ** 2))
    elif how == "std":
        assert params["std"] == pytest.approx(raw.std()) and params["mean"] == pytest.approx(
            raw.mean()
        )
        assert got.std() == pytest.approx(1.0)
        assert got.mean() == pytest.approx(raw.mean() / raw.std())  # not centred
    elif how == "minmax":
        assert params["max_abs"] == 20.0 and np.abs(got).max() == 1.0
        np.testing.assert_allclose(got, raw / 20.0)
    else:
        assert params["bins"] == config.DEFAULT_MARGIN_BINS
        assert len(params["edges"]) == config.DEFAULT_MARGIN_BINS - 1
        assert set(np.abs(got)) <= set(range(config.DEFAULT_MARGIN_BINS))
        assert manifest["filters"]["bins"] == config.DEFAULT_MARGIN_BINS
    assert manifest["margin"]["definition"]


@pytest.mark.parametrize("how", SCALES)
def test_every_scale_round_trips_through_datasets(run, tmp_path: Path, how: str) -> None:
    datasets = pytest.importorskip("datasets")
    store, run_id, _ = run
    expected = scale(kept(), how).values
    for suffix, builder in (("jsonl", "json"), ("parquet", "parquet")):
        out = tmp_path / f"train-{how}.{suffix}"
        export_dataset(store, run_id, out, scale=how)
        ds = datasets.load_dataset(
            builder, data_files=str(out), split="train", cache_dir=str(tmp_path / "hf")
        )
        assert ds.column_names == ["prompt", "chosen", "rejected", "margin"]
        assert ds.features["margin"].dtype == "float64", (how, suffix)
        np.testing.assert_array_equal(ds["margin"], expected)


def test_bins_and_scale_options(run) -> None:
    store, run_id, _ = run
    # The older bins=N means the bins scale with N levels.
    binned = export_frame(store, run_id, bins=3)
    assert set(np.abs(binned["margin"])) <= {0.0, 1.0, 2.0}
    np.testing.assert_array_equal(
        binned["margin"], export_frame(store, run_id, scale="bins", bins=3)["margin"]
    )
    with pytest.raises(ValueError, match="bins"):
        export_frame(store, run_id, scale="rms", bins=3)
    with pytest.raises(ValueError, match="bins"):
        export_frame(store, run_id, bins=1)
    with pytest.raises(ValueError, match="unknown margin scale"):
        export_frame(store, run_id, scale="zscore")
    # The range filter is in the margins' own units, applied before the scale.
    ranged = export_frame(store, run_id, margin_range=(0.0, 10.0), scale="minmax")
    np.testing.assert_allclose(ranged["margin"], np.array([0.0, 7.5, 4.0, 1.0, 9.0]) / 9.0)


def test_export_command_scale_and_flagged(run, tmp_path: Path, capsys) -> None:
    _, run_id, url = run
    out = tmp_path / "cli.jsonl"
    base = ["export", "--run", str(run_id), "--out", str(out), "--db", url]
    assert main([*base, "--scale", "bins", "--bins", "3"]) == 0
    manifest = json.loads(Path(f"{out}.manifest.json").read_text(encoding="utf-8"))
    assert manifest["margin"]["scale"] == "bins" and manifest["margin"]["parameters"]["bins"] == 3
    assert (
        manifest["counts"]["rows"] == len(RAW) - 1 and manifest["counts"]["flagged_excluded"] == 1
    )
    printed = capsys.readouterr().out
    assert "bins scale" in printed and "--include-flagged" in printed

    assert main([*base, "--include-flagged"]) == 0
    manifest = json.loads(Path(f"{out}.manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["rows"] == len(RAW) and not manifest["filters"]["exclude_flagged"]
    assert manifest["margin"]["scale"] == config.DEFAULT_MARGIN_SCALE
    assert f"{config.DEFAULT_MARGIN_SCALE} scale" in capsys.readouterr().out

    assert main([*base, "--scale", "std", "--bins", "3"]) == 2
    assert "bins" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--scale", "log"])


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("how", SCALES)
def test_reward_trainer_step_uses_the_exported_margin(
    run, tmp_path: Path, tiny_model_dir: Path, how: str
) -> None:
    """One RewardTrainer step on each scale's export: the loss is finite, and it is TRL's
    -log σ(r_c - r_r - margin) with the exported margin, not the loss without it."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    store, run_id, _ = run
    out = tmp_path / f"rm-{how}.jsonl"
    export_dataset(store, run_id, out, scale=how)
    ds = datasets.load_dataset(
        "json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf")
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)  # the score head is new: the same start for every scale
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = trl.RewardConfig(
        output_dir=str(tmp_path / "rm"),
        max_steps=1,
        per_device_train_batch_size=len(ds),  # one batch holds every row
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        max_length=128,
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    trainer = trl.RewardTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tokenizer
    )
    batch = next(iter(trainer.get_train_dataloader()))
    np.testing.assert_allclose(
        sorted(batch["margin"].tolist()), sorted(ds["margin"]), rtol=1e-6, atol=1e-6
    )

    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()
        zero = trainer.compute_loss(model, {**batch, "margin": torch.zeros_like(batch["margin"])})
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        rewards = model(**inputs).logits.squeeze(-1)
    r_c, r_r = torch.chunk(rewards, 2)
    expected = -torch.nn.functional.logsigmoid(r_c - r_r - batch["margin"]).mean().item()
    assert np.isfinite(loss) and loss == pytest.approx(expected, rel=1e-5)
    assert loss != pytest.approx(zero.item(), rel=1e-6)  # the margin is in the loss
    model.train()
    result = trainer.train()
    assert np.isfinite(result.training_loss)
