"""A real Streamlit server and a real Chromium (Debian's, driven by Playwright).

``playwright install`` cannot download browsers here, so the system Chromium is used.
Screenshots go to tests/artifacts/screenshots/ (git-ignored).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "tests" / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("LEGEND_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


SERVE_SETTINGS = (
    "LEGEND_ADDRESS",
    "LEGEND_PORT",
    "LEGEND_ALLOW_OPEN",
    "LEGEND_AUTH_FILE",
    "LEGEND_DATA_DIR",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The app as ``make run`` serves it (``python -m legend_core.app.serve``, the launcher of
    scripts/serve.sh) on a free port, with its own database and model."""

    def __init__(
        self, db_url: str, model: Path, log: Path, extra_env: dict[str, str] | None = None
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = db_url
        env = {
            key: value
            for key, value in os.environ.items()
            # The launcher's and the app's access settings come from the test only (the
            # default address is one of the things tested).
            if key not in SERVE_SETTINGS and not key.startswith("STREAMLIT_")
        }
        env |= {
            "LEGEND_DB": db_url,
            "LEGEND_MODEL": str(model),
            "LEGEND_PORT": str(self.port),
            "STREAMLIT_SERVER_HEADLESS": "true",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            **(extra_env or {}),
        }
        command = [sys.executable, "-m", "legend_core.app.serve"]
        self.log = log.open("w")
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamlit exited; see {log}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"streamlit did not start; see {log}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="session")
def browser_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("browser-model"))


@pytest.fixture
def server(tmp_path: Path, browser_model: Path) -> Iterator[Server]:
    srv = Server(f"sqlite:///{tmp_path / 'legend.db'}", browser_model, tmp_path / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    sync_playwright = sync_api.sync_playwright
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, tmp_path: Path) -> Iterator[object]:
    context = chromium.new_context(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    folder = SHOTS / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
