"""Benchmark: "Compute margins" in the app, served as ``make run`` serves it, against
``legend annotate --dataset`` on the same pairs (issue 12: the file watcher took the CPU).

Both start from a database holding the first ``N_PAIRS`` HH-RLHF dev pairs and the demo
direction (built once, default model), and both include loading the model. The command
line runs ``legend annotate --dataset ID --direction-id ID``; the app runs through
``python -m legend_core.app.serve`` (the launcher of ``scripts/serve.sh``), driven by Debian's
Chromium: open Annotate and explore, press "Compute margins", wait until every margin is
stored. The two runs alternate, each on its own fresh copy of the database.

``python -m bench.app_bench [--quick]``; results in ``bench/out/app.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Timing, fmt, hh_pairs, print_machine, table, write_result

N_PAIRS = 300
REPEATS = 2
CHROMIUM = os.environ.get("LEGEND_CHROMIUM", "/usr/bin/chromium")


def _prepare(folder: Path, n: int) -> tuple[Path, int, int]:
    """A database with ``n`` pairs and the demo direction; returns (file, data set, direction)."""
    from legend_core import config
    from legend_core.data.formats import read_contrast_set
    from legend_core.data.store import Store
    from legend_core.method.models import load_model
    from legend_core.method.pipeline import build_direction

    db = folder / "template.db"
    with Store(f"sqlite:///{db}") as store:
        dataset_id = store.add_dataset("hh", hh_pairs(n))
        lm = load_model("default", device="cpu")
        items = read_contrast_set(config.DEMO_CONTRAST)
        direction = build_direction(lm, items, method=config.DEFAULT_METHOD).direction
        direction_id = store.add_direction(direction)
    return db, dataset_id, direction_id


def _margins(db: Path) -> int:
    from legend_core.data.store import Store

    with Store(f"sqlite:///{db}") as store:
        return store.counts()["margins"]


def _cli(db: Path, dataset_id: int, direction_id: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "legend"),
            "annotate",
            "--dataset",
            str(dataset_id),
            "--direction-id",
            str(direction_id),
            "--db",
            f"sqlite:///{db}",
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    return time.perf_counter() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _app(db: Path, n: int) -> float:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEGEND_", "STREAMLIT_"))}
    env |= {"LEGEND_DB": f"sqlite:///{db}", "LEGEND_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    env["STREAMLIT_SERVER_HEADLESS"] = "true"
    server = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "legend_core.app.serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page()
            deadline = time.time() + 120
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}/explore", timeout=5000)
                    break
                except Exception:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.5)
            button = page.get_by_role("button", name="Compute margins")
            button.wait_for(timeout=120_000)
            start = time.perf_counter()
            button.click()
            while _margins(db) < n:
                time.sleep(0.25)
            took = time.perf_counter() - start
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int, default=N_PAIRS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()
    n, repeats = (16, 1) if args.quick else (args.pairs, args.repeats)
    info = print_machine()
    folder = Path(tempfile.mkdtemp(prefix="legend-app-bench-"))
    try:
        template, dataset_id, direction_id = _prepare(folder, n)
        timings = {"legend annotate --dataset": Timing(), "app: Compute margins": Timing()}
        for round_ in range(repeats):
            order = list(timings) if round_ % 2 == 0 else list(timings)[::-1]
            for name in order:
                db = folder / f"{round_}-{name.split()[0]}.db"
                shutil.copy(template, db)
                took = (
                    _cli(db, dataset_id, direction_id) if name.startswith("legend") else _app(db, n)
                )
                assert _margins(db) == n
                timings[name].add(took, 0.0)
                print(f"{name}: {took:.1f} s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    base = timings["legend annotate --dataset"].median_wall
    rows = [[k, fmt(t.median_wall), fmt(t.median_wall / base)] for k, t in timings.items()]
    print(table(rows, ["run (model loading included)", "median wall s", "ratio to CLI"]))
    write_result(
        "app",
        {
            "machine": info,
            "pairs": n,
            "timings": {k: t.as_dict() for k, t in timings.items()},
            "ratio_app_to_cli": timings["app: Compute margins"].median_wall / base,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
