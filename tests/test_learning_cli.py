"""Directions learned from labels through the `legend` command (tiny model, real files, a
real SQLite store): provenance, cross-fitted margins for the training pairs, and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from legend_core import config
from legend_core.cli import main
from legend_core.data.formats import read_pairs
from legend_core.data.store import Store
from legend_core.method.directions import load_direction
from legend_core.method.margins import margins
from legend_core.util import pair_hash
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def learned(tmp_path_factory, tiny_model_dir):
    """A direction learned from the 52 labelled demo pairs (built once for the module)."""
    out = tmp_path_factory.mktemp("learned") / "d"
    args = ["build-direction", "--out", str(out), "--model", str(tiny_model_dir)]
    args += ["--labelled", str(config.DEMO_PAIRS)]
    return out, args


def test_build_direction_learns_from_a_labelled_file(learned, capsys, tiny_model_dir):
    out, args = learned
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "cv_auroc" in printed  # the contrastive table says what the layer is chosen on
    assert "learning from 52 labelled pairs" in printed
    assert "learned (CV)" in printed and "contrastive" in printed
    assert "baseline, the shorter response is safer" in printed
    assert "choice never saw (nested CV)" in printed
    direction = load_direction(out)
    assert direction.method == "probe" and direction.n_train == 52
    labels = direction.labels
    assert labels["n_labels"] == 52 and labels["k_folds"] == 5
    assert labels["source"] == {"kind": "file", "name": "demo_pairs.jsonl", "format": "trl"}
    pairs = read_pairs(config.DEMO_PAIRS).pairs
    keys = {pair_hash(p.prompt, p.chosen, p.rejected)[:16] for p in pairs}
    assert set(labels["fold_of"]) == keys
    assert sorted(set(labels["fold_of"].values())) == [0, 1, 2, 3, 4]
    assert np.asarray(labels["fold_vectors"]).shape == (5, direction.vector.shape[0])
    assert 0 <= labels["nested"]["agreement"]["estimate"] <= 1
    # The contrastive quality stays with it, as for every direction.
    assert [q.layer for q in direction.quality] == list(range(1, len(direction.quality) + 1))


def test_annotating_the_training_pairs_cross_fits_them(learned, tmp_path, capsys, tiny_model_dir):
    out, args = learned
    if not out.with_suffix(".json").exists():
        assert main(args) == 0
    direction = load_direction(out)
    result = tmp_path / "m.jsonl"
    annotate = ["annotate", "--pairs", str(config.DEMO_PAIRS), "--direction", str(out)]
    assert main([*annotate, "--out", str(result)]) == 0
    assert "52 pairs were among the labels" in capsys.readouterr().out
    rows = [json.loads(line) for line in result.read_text(encoding="utf-8").splitlines()]
    pairs = read_pairs(config.DEMO_PAIRS).pairs
    assert [r["prompt"] for r in rows] == [p.prompt for p in pairs]  # input order
    assert all(isinstance(r["margin"], float) for r in rows)

    from legend_core.method.models import load_model
    from legend_core.method.pipeline import pair_embeddings

    lm = load_model(str(tiny_model_dir))  # as the command loads it (dtype auto)
    chosen, rejected = pair_embeddings(lm, pairs, direction)
    folds = [
        direction.labels["fold_of"][pair_hash(p.prompt, p.chosen, p.rejected)[:16]] for p in pairs
    ]
    vectors = np.asarray(direction.labels["fold_vectors"], dtype=np.float32)
    expected = [
        float(margins(chosen[i : i + 1], rejected[i : i + 1], vectors[f])[0])
        for i, f in enumerate(folds)
    ]
    np.testing.assert_allclose([r["margin"] for r in rows], expected, rtol=1e-4, atol=1e-5)
    in_sample = margins(chosen, rejected, direction.vector)
    assert not np.allclose(in_sample, expected)  # the final vector saw them: not used

    # Pairs the direction never saw get the direction itself, and no note.
    other = tmp_path / "other.jsonl"
    other.write_text(
        json.dumps({"prompt": "Hi", "chosen": "Hello there.", "rejected": "Go away."}) + "\n",
        encoding="utf-8",
    )
    assert main([*annotate[:1], "--pairs", str(other), *annotate[3:], "--out", str(result)]) == 0
    assert "among the labels" not in capsys.readouterr().out


def test_stored_data_set_learned_from_its_own_labels_is_cross_fitted(
    tmp_path, capsys, tiny_model_dir
):
    db = f"sqlite:///{tmp_path / 'l.db'}"
    store = Store(db)
    dataset_id, _ = store.import_file(config.DEMO_PAIRS)
    out = tmp_path / "d"
    build = ["build-direction", "--out", str(out), "--model", str(tiny_model_dir), "--db"]
    build += [db, "--db-save", "--labelled-dataset", str(dataset_id), "--no-nested"]
    assert main(build) == 0
    printed = capsys.readouterr().out
    direction_id = int(printed.rsplit("stored as direction ", 1)[1].split()[0])
    assert "choice never saw" not in printed  # --no-nested
    stored = store.get_direction(direction_id)
    assert stored.labels["source"]["kind"] == "dataset"
    assert stored.labels["source"]["dataset_id"] == dataset_id

    annotate = ["annotate", "--dataset", str(dataset_id), "--direction-id", str(direction_id)]
    assert main([*annotate, "--model", str(tiny_model_dir), "--db", db]) == 0
    assert "52 pairs were among the labels" in capsys.readouterr().out
    run = store.list_runs(dataset_id)[-1]
    assert run.settings["crossfit"]["pairs"] == 52 and run.settings["crossfit"]["k"] == 5
    assert main(["evaluate", "--run", str(run.id), "--db", db, "--no-reward-check"]) == 0
    assert "margins are cross-fitted" in capsys.readouterr().out

    # The stored margins are the fold directions' (not the final vector's) projections.
    from legend_core.evaluation.reports import load_run

    data = load_run(store, run.id)
    frame = store.run_frame(run.id)
    vectors = np.asarray(stored.labels["fold_vectors"], dtype=np.float32)
    folds = [
        stored.labels["fold_of"][pair_hash(p, c, r)[:16]]
        for p, c, r in zip(frame["prompt"], frame["chosen"], frame["rejected"])
    ]
    expected = [
        float(margins(data.chosen[i : i + 1], data.rejected[i : i + 1], vectors[f])[0])
        for i, f in enumerate(folds)
    ]
    np.testing.assert_allclose(data.margins, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--labelled", "x.jsonl", "--labelled-dataset", "1"], None),  # argparse: one of
        (["--labelled", str(ROOT / "tests/hostile/bad_json_line3.jsonl")], "line 3"),
        (["--labelled", "FEW"], "at least 10 labelled pairs"),
        (["--labelled", str(config.DEMO_PAIRS), "--folds", "1"], "at least 2 folds"),
    ],
)
def test_labelled_errors_are_one_line(extra, expected, tmp_path, capsys, tiny_model_dir):
    few = tmp_path / "few.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": "No.", "rejected": "Sure."} for i in range(4)]
    few.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    extra = [str(few) if e == "FEW" else e for e in extra]
    args = ["build-direction", "--out", str(tmp_path / "d"), "--model", str(tiny_model_dir)]
    if expected is None:
        with pytest.raises(SystemExit) as stop:
            main([*args, *extra])
        assert stop.value.code == 2
        assert "not allowed with" in capsys.readouterr().err
        return
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("legend: error:") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "d.json").exists()
