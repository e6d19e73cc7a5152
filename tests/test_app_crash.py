"""The app's margin job killed with SIGKILL mid-run, then resumed from the app: the margins
equal an uninterrupted run's, bit for bit (the app runs the job in a thread of its server
process, so killing that process is what a crash or an OOM kill does)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from legend_core import config
from legend_core.data.formats import read_contrast_set
from legend_core.data.store import Store
from legend_core.method.models import load_model
from legend_core.method.pipeline import build_direction
from legend_core.workflows.annotate import annotate_dataset
from tests import app_support as support
from tests.conftest import ROOT
from tests.test_annotate_store import synthetic_pairs

N_PAIRS = 800

#: A separate interpreter that opens the app's Explore page and presses "Compute margins",
#: then idles while the job runs in its thread, until it is killed.
CLICK_AND_WAIT = textwrap.dedent(
    """
    import time
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file({app!r}, default_timeout=180)
    at.run()
    at.switch_page("app_pages/explore.py").run()
    [b for b in at.button if b.label == "Compute margins"][0].click().run()
    print("clicked", flush=True)
    time.sleep(600)
    """
)


def test_the_apps_margin_job_killed_then_resumed_equals_a_quiet_run(
    tmp_path, monkeypatch, tiny_model_dir, tiny_lm
):
    db = f"sqlite:///{tmp_path / 'app.db'}"
    store = Store(db)
    dataset_id = store.add_dataset("big", synthetic_pairs(N_PAIRS))
    items = read_contrast_set(config.DEMO_CONTRAST)[:16]
    direction = build_direction(tiny_lm, items, layer=3).direction
    direction_id = store.add_direction(direction)

    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LEGEND_DB": db,
        "LEGEND_MODEL": str(tiny_model_dir),
        "HF_HUB_OFFLINE": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", CLICK_AND_WAIT.format(app=support.APP)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "clicked"
        deadline = time.time() + 180
        while time.time() < deadline and store.counts()["embeddings"] < 300:
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    partial = store.counts()["embeddings"]
    assert 0 < partial < 2 * N_PAIRS, "the kill must land midway"
    assert store.counts()["margins"] == 0

    at = support.app(monkeypatch, db, tiny_model_dir)
    at.run()
    support.goto(at, "explore")
    # Killed while encoding, the run has no margin yet: the same button starts the resume
    # (it reads "Resume" once some margins exist).
    [b for b in at.button if b.label.startswith(("Compute margins", "Resume"))][0].click().run()
    support.wait_until(at, lambda: store.counts()["margins"] == N_PAIRS, timeout=300)
    (run,) = store.list_runs(dataset_id)
    resumed = store.run_frame(run.id)["computed_margin"].to_numpy()

    # The quiet run: same model in the dtype the app ran it in (its "auto" choice).
    same_dtype = load_model(str(tiny_model_dir), device="cpu", dtype=run.settings["model_dtype"])
    clean = Store(f"sqlite:///{tmp_path / 'clean.db'}")
    clean_run = annotate_dataset(
        clean,
        same_dtype,
        clean.add_dataset("big", synthetic_pairs(N_PAIRS)),
        clean.add_direction(direction),
    )
    expected = clean.run_frame(clean_run)["computed_margin"].to_numpy()
    np.testing.assert_array_equal(resumed, expected)
    assert run.direction_id == direction_id
