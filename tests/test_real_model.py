"""The real default model on our demo data and on real public data (slower tests).

The public files are read from ../shared/data, never copied into the project.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from legend_core import config
from legend_core.cli import main
from legend_core.data.formats import read_contrast_set, read_pairs
from legend_core.method.pipeline import build_direction
from tests.conftest import ADVBENCH, HH_DEV

pytestmark = pytest.mark.slow

# Enough pairs to say something, few enough for 2 CPU cores in CI.
HH_PAIRS_IN_CI = 150


def test_direction_from_demo_data_separates_its_held_out_part(default_lm):
    items = read_contrast_set(config.DEMO_CONTRAST)
    result = build_direction(default_lm, items, test_fraction=0.3, seed=1)
    q = result.direction.layer_quality
    assert q.auroc > 0.9 and q.accuracy > 0.8, q
    pos, neg = result.held_out_projections()
    assert np.mean(pos > neg) > 0.9
    # Length must not be what the direction measures.
    assert q.length_r2 < 0.3


@pytest.mark.skipif(not HH_DEV.exists(), reason="shared data not present")
def test_annotate_hh_rlhf_with_an_advbench_direction(tmp_path, capsys, default_lm):
    direction = tmp_path / "advbench"
    code = main(
        [
            "build-direction",
            "--out",
            str(direction),
            "--contrast",
            str(ADVBENCH),
            "--refusal",
            config.PAPER_REFUSAL,
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "layer" in out and "saved" in out

    subset = tmp_path / "hh.jsonl"
    lines = HH_DEV.read_text(encoding="utf-8").splitlines()[:HH_PAIRS_IN_CI]
    subset.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = tmp_path / "margins.jsonl"
    code = main(
        [
            "annotate",
            "--pairs",
            str(subset),
            "--direction",
            str(direction),
            "--out",
            str(result),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in result.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == HH_PAIRS_IN_CI
    expected = read_pairs(subset).pairs
    assert [r["prompt"] for r in rows] == [p.prompt for p in expected]
    assert all(isinstance(r["margin"], float) and np.isfinite(r["margin"]) for r in rows)
    positive = np.mean([r["margin"] > 0 for r in rows])
    # Printed for the README's results section; a 135M model is weak, so only sanity
    # bounds are asserted (a constant or broken margin would sit at 0 or 1).
    print(
        f"\nHH-RLHF harmless dev, first {HH_PAIRS_IN_CI} pairs, AdvBench direction: "
        f"{positive:.1%} positive margins"
    )
    assert 0.2 < positive < 0.9
    assert np.std([r["margin"] for r in rows]) > 0
