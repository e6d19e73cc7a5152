"""`legend evaluate` on a stored synthetic run and on a file with the tiny model."""

from __future__ import annotations

import json

from legend_core import config
from legend_core.cli import main
from tests.app_support import large_db


def test_evaluate_a_stored_run(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    ids = large_db(url, n=300)
    out = tmp_path / "eval.json"
    code = main(
        ["evaluate", "--run", str(ids["run_id"]), "--db", url, "--seeds", "5", "--json", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "margin run" in printed and "300 pairs with a margin" in printed
    assert "baseline: shorter response is safer" in printed
    assert "baseline: random direction" in printed
    assert "margin loss, margins shuffled (control)" in printed
    assert "margin - shuffled" in printed
    saved = json.loads(out.read_text())
    assert saved["agreement"][0]["n"] == 300
    assert len(saved["reward_check"]["variants"]["margin"]) == 5
    # The check scales margins as the export does by default, or as asked.
    assert f"margins scaled: {config.DEFAULT_MARGIN_SCALE}" in printed
    assert saved["reward_check"]["settings"]["margin_scale"] == config.DEFAULT_MARGIN_SCALE
    run = ["evaluate", "--run", str(ids["run_id"]), "--db", url, "--seeds", "1"]
    assert main([*run, "--scale", "bins", "--scale-bins", "3", "--boot", "100"]) == 0
    assert "margins scaled: bins" in capsys.readouterr().out


def test_evaluate_a_file_and_reuse_its_embeddings(tmp_path, capsys, tiny_model_dir):
    direction = tmp_path / "d"
    assert main(["build-direction", "--out", str(direction), "--model", str(tiny_model_dir)]) == 0
    cache = tmp_path / "emb.npz"
    args = [
        "evaluate",
        "--pairs",
        str(config.DEMO_PAIRS),
        "--direction",
        str(direction),
        "--embeddings",
        str(cache),
        "--no-reward-check",
        "--boot",
        "200",
    ]
    capsys.readouterr()
    assert main(args) == 0
    first = capsys.readouterr().out
    assert cache.exists() and "52 pairs" in first and "embeddings from" not in first
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "embeddings from" in second
    # Same embeddings, same numbers.
    table = lambda text: text[text.index("agreement with") :]  # noqa: E731
    assert table(first) == table(second)
    assert "reward-model check" not in second


def test_evaluate_needs_one_source(capsys):
    assert main(["evaluate"]) == 2
    assert "either --run" in capsys.readouterr().err
