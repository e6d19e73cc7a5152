"""`legend evaluate` on a stored synthetic run and on a file with the tiny model."""

from __future__ import annotations

import argparse
import json

import numpy as np

from legend_core import config
from legend_core.cli import main
from legend_core.cli.common import model_dtype
from legend_core.data.formats import read_contrast_set, read_pairs
from legend_core.data.store import EmbeddingSpace, Store
from legend_core.method.directions import load_direction
from legend_core.method.encode import EncodeSettings
from legend_core.util import text_key
from legend_core.workflows.annotate import run_settings
from legend_core.workflows.embeddings import cached_pair_embeddings
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
    """The pair embeddings go to the database's cache: a second run encodes nothing."""
    direction = tmp_path / "d"
    assert main(["build-direction", "--out", str(direction), "--model", str(tiny_model_dir)]) == 0
    url = f"sqlite:///{tmp_path / 'e.db'}"
    args = [
        "evaluate",
        "--pairs",
        str(config.DEMO_PAIRS),
        "--direction",
        str(direction),
        "--db",
        url,
        "--no-reward-check",
        "--boot",
        "200",
    ]
    capsys.readouterr()
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "52 pairs" in first
    assert "embeddings: 0 pairs from the database's cache, 52 encoded" in first
    pairs = read_pairs(config.DEMO_PAIRS).pairs
    keys = [text_key(p.prompt, t) for p in pairs for t in (p.chosen, p.rejected)]
    loaded = load_direction(direction)
    dtype = model_dtype(argparse.Namespace(device="auto", dtype="auto"))
    settings = run_settings(loaded, dtype)
    assert Store(url).cached_keys(EmbeddingSpace.from_settings(settings), keys) == set(keys)
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "embeddings: 52 pairs from the database's cache, 0 encoded" in second
    # Same embeddings, same numbers.
    table = lambda text: text[text.index("agreement with") :]  # noqa: E731
    assert table(first) == table(second)
    assert "reward-model check" not in second
    # The old --embeddings FILE is accepted, ignored, and says so.
    assert main([*args, "--embeddings", str(tmp_path / "emb.npz")]) == 0
    captured = capsys.readouterr()
    assert "--embeddings is deprecated and ignored" in captured.err
    assert table(captured.out) == table(first)
    assert not (tmp_path / "emb.npz").exists()


def test_cached_pair_embeddings_run_no_forward_pass_the_second_time(tmp_path, tiny_lm):
    """The workflow behind ``evaluate --pairs``: forward passes counted with a pre-hook (the
    encoder stops a pass after the layer it needs, so a hook after the forward never runs)."""
    from legend_core.method.pipeline import build_direction

    items = read_contrast_set(config.DEMO_CONTRAST)
    direction = build_direction(tiny_lm, items, EncodeSettings(max_length=64), layer=1).direction
    pairs = read_pairs(config.DEMO_PAIRS).pairs[:12]
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    passes, loads = [], []
    hook = tiny_lm.model.register_forward_pre_hook(lambda *_: passes.append(1))

    def load():
        loads.append(1)
        return tiny_lm

    try:
        first = cached_pair_embeddings(store, pairs, direction, tiny_lm.dtype_name, load)
        n_first = len(passes)
        second = cached_pair_embeddings(store, pairs, direction, tiny_lm.dtype_name, load)
    finally:
        hook.remove()
    assert first.encoded == 12 and n_first > 0 and loads == [1]
    assert second.encoded == 0 and len(passes) == n_first and loads == [1]
    np.testing.assert_array_equal(first.chosen, second.chosen)
    np.testing.assert_array_equal(first.rejected, second.rejected)
    assert first.chosen.shape == (12, tiny_lm.hidden_size)
    # Half the pairs new: only those are encoded, the rest come from the cache.
    more = read_pairs(config.DEMO_PAIRS).pairs[6:18]
    third = cached_pair_embeddings(store, more, direction, tiny_lm.dtype_name, load)
    assert third.encoded == 6
    np.testing.assert_array_equal(third.chosen[:6], first.chosen[6:])


def test_evaluate_needs_one_source(capsys):
    assert main(["evaluate"]) == 2
    assert "either --run" in capsys.readouterr().err
