"""The `legend` command on a tiny model: defaults, outputs, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from legend_core import config
from legend_core.cli import main
from legend_core.data.store import Store
from legend_core.method.directions import load_direction
from tests.conftest import ROOT


def test_build_direction_then_annotate_a_file(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "d"
    assert main(["build-direction", "--out", str(out), "--model", str(tiny_model_dir)]) == 0
    printed = capsys.readouterr().out
    assert "layer  accuracy  auroc" in printed and "*" in printed
    direction = load_direction(out)
    assert direction.contrast_name == config.DEMO_CONTRAST.name
    assert direction.pooling == config.DEFAULT_POOLING and direction.method == config.DEFAULT_METHOD
    assert direction.model == str(tiny_model_dir)

    result = tmp_path / "m.jsonl"
    code = main(
        [
            "annotate",
            "--pairs",
            str(config.DEMO_PAIRS),
            "--direction",
            str(out),
            "--out",
            str(result),
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in result.read_text(encoding="utf-8").splitlines()]
    source = [json.loads(line) for line in config.DEMO_PAIRS.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [s["prompt"] for s in source]
    assert all(set(r) == {"prompt", "chosen", "rejected", "margin"} for r in rows)
    assert all(isinstance(r["margin"], float) for r in rows)
    assert "positive margin" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            [
                "annotate",
                "--pairs",
                "tests/hostile/bad_json_line3.jsonl",
                "--direction",
                "x",
                "--out",
                "o.jsonl",
            ],
            "line 3",
        ),
        (["build-direction", "--out", "d", "--contrast", "no/such/file.csv"], "file.csv"),
        (["build-direction", "--out", "d", "--model", "/no/such/model"], "does not exist"),
        (
            [
                "build-direction",
                "--out",
                "d",
                "--contrast",
                "../shared/data/advbench/harmful_behaviors.csv",
            ],
            "refusal",
        ),
    ],
)
def test_errors_are_one_line_without_traceback(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "legend_core", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert expected in done.stderr
    assert done.stderr.strip().startswith("legend: error:")


@pytest.mark.skipif(not (ROOT / "../shared/data/advbench").is_dir(), reason="no shared data")
def test_import_advbench_with_our_varied_refusals(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    advbench = ROOT / "../shared/data/advbench/harmful_behaviors.csv"
    args = ["import", str(advbench), "--contrast", "--refusal", "varied", "--db", db]
    assert main(args) == 0
    store = Store(db)
    (info,) = store.list_contrast_sets()
    harmless = [i.harmless for i in store.get_contrast_items(info.id)]
    n = len(config.VARIED_REFUSALS)
    assert len(harmless) == 520 and harmless[:n] == list(config.VARIED_REFUSALS)
    assert harmless[n] == config.VARIED_REFUSALS[0]
    assert config.refusals("paper") == config.PAPER_REFUSAL
    assert config.refusals("Nope.") == "Nope."


def test_import_review_export_through_the_shell(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["import", str(config.DEMO_PAIRS), "--name", "demo", "--db", db]) == 0
    assert "data set 1: 52 pairs (trl)" in capsys.readouterr().out
    assert (
        main(
            [
                "review",
                "--pair",
                "1",
                "--action",
                "flag",
                "--annotator",
                "ana",
                "--note",
                "check",
                "--db",
                db,
            ]
        )
        == 0
    )
    history = capsys.readouterr().out
    assert "ana  flag" in history and "(check)" in history
    assert main(["review", "--pair", "1", "--action", "flag", "--db", db]) == 2


def test_review_verdicts_from_the_shell_follow_the_policy(tmp_path, capsys, monkeypatch):
    """accept|flip|override|withdraw mean the same from the shell: absolute verdicts, the
    latest per annotator, several annotators resolved, an admin named in the users file."""
    import numpy as np

    from legend_core.app.auth import add_user
    from legend_core.method.directions import Direction
    from legend_core.types import PreferencePair

    monkeypatch.delenv("LEGEND_AUTH_FILE", raising=False)
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    with Store(db) as store:
        pairs = [PreferencePair(f"p{i}", f"c{i}", f"r{i}") for i in range(3)]
        dataset_id = store.add_dataset("d", pairs)
        direction = Direction(np.ones(4, np.float32), "tiny", 1, "last", "alpaca", "mean_diff")
        run_id = store.start_run(dataset_id, store.add_direction(direction), {})
        ids = [p.id for p in store.pairs_missing_margins(run_id)]
        store.add_margins(run_id, ids, [1.0, 2.0, 3.0])

    def review(pair: int, action: str, who: str, *extra: str) -> str:
        args = ["review", "--pair", str(pair), "--action", action, "--annotator", who]
        assert main([*args, "--run", str(run_id), *extra, "--db", db]) == 0
        return capsys.readouterr().out.strip().splitlines()[-1]

    assert review(ids[0], "flip", "ana").startswith("label: swapped (single, decided by ana")
    assert review(ids[0], "flip", "ana").startswith("label: swapped (single")  # no toggle
    assert "unanimous, decided by ana, bob; 2 verdicts" in review(ids[0], "flip", "bob")
    assert review(ids[1], "override", "ana", "--value", "-0.5").endswith(
        "margin +0.5000 (relative to the exported chosen)"
    )
    assert review(ids[1], "flip", "ana").endswith(
        "margin -2.0000 (relative to the exported chosen)"
    )
    assert review(ids[2], "flip", "ana").startswith("label: swapped")
    assert review(ids[2], "accept", "bob").startswith("label: as imported (disputed; 2 verdicts")
    assert review(ids[2], "withdraw", "bob").startswith("label: swapped (single")
    assert review(ids[2], "accept", "boss").startswith("label: as imported (disputed")

    out = tmp_path / "out.jsonl"
    export = ["export", "--run", str(run_id), "--out", str(out), "--scale", "none"]
    assert main([*export, "--db", db]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], r["chosen"], r["margin"]) for r in rows] == [
        ("p0", "r0", -1.0),
        ("p1", "r1", -2.0),
    ]  # p2 is disputed: left out
    assert main([*export, "--include-disputed", "--provenance", "--db", db]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["disputed"] for r in rows] == [False, False, True]

    users = tmp_path / "users.json"
    add_user(users, "boss", "boss-password", "admin")
    monkeypatch.setenv("LEGEND_AUTH_FILE", str(users))
    assert main([*export, "--provenance", "--db", db]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert (rows[2]["label_source"], rows[2]["decided_by"], rows[2]["chosen"]) == (
        "admin",
        "boss",
        "c2",
    )
    assert json.loads(out.with_name("out.jsonl.manifest.json").read_text())["reviews"][
        "admins"
    ] == ["boss"]
    assert (
        main(
            [
                "review",
                "--pair",
                str(ids[0]),
                "--action",
                "withdraw",
                "--annotator",
                "cy",
                "--db",
                db,
            ]
        )
        == 2
    )  # cy has no verdict to withdraw: a one-line error
