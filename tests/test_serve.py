"""Serving: the launcher that ``make run`` uses (address, watcher, refusal to open the app to
the network without login), and the one server folder whose files the app may read."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from legend_core import config
from legend_core.app import serve
from legend_core.app.auth import add_user

ROOT = Path(__file__).resolve().parent.parent


# --- the launcher's settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    "address, loopback",
    [
        ("127.0.0.1", True),
        ("127.5.6.7", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.20", False),
        ("myhost.example", False),
    ],
)
def test_loopback_addresses(address, loopback):
    assert serve.is_loopback(address) is loopback


def test_default_is_loopback_and_the_watcher_is_off():
    chosen = serve.settings({})
    assert (chosen.address, chosen.port, chosen.login) == ("127.0.0.1", 8501, False)
    command = serve.command(chosen, python="python")
    assert command[:5] == ["python", "-m", "streamlit", "run", str(ROOT / "app.py")]
    options = dict(zip(command[5::2], command[6::2]))
    assert options == {
        "--server.address": "127.0.0.1",
        "--server.port": "8501",
        "--server.fileWatcherType": "none",
        "--server.runOnSave": "false",
    }
    assert "this machine only" in chosen.describe() and "http://127.0.0.1:8501" in chosen.url


def test_beyond_loopback_needs_login_or_an_explicit_opt_in(tmp_path):
    for address in ("0.0.0.0", "::", "10.1.2.3", "myhost.example"):
        with pytest.raises(serve.ServeError, match="without login mode"):
            serve.settings({"LEGEND_ADDRESS": address})
        with pytest.raises(serve.ServeError, match="without login mode"):
            serve.settings({"LEGEND_ADDRESS": address, "LEGEND_ALLOW_OPEN": "0"})
    opened = serve.settings({"LEGEND_ADDRESS": "0.0.0.0", "LEGEND_ALLOW_OPEN": "1"})
    assert opened.opened and "everyone who reaches it has every power" in opened.describe()

    users = tmp_path / "users.json"
    add_user(users, "ana", "ana-password", "admin")
    team = serve.settings({"LEGEND_ADDRESS": "::", "LEGEND_AUTH_FILE": str(users)})
    assert team.login and team.url == "http://[::]:8501"
    assert "reachable from the network, login mode on" in team.describe()


def test_bad_settings_are_refused_with_the_setting_named(tmp_path):
    with pytest.raises(serve.ServeError, match="LEGEND_PORT must be a number"):
        serve.settings({"LEGEND_PORT": "eighty"})
    with pytest.raises(serve.ServeError, match="between 1 and 65535"):
        serve.settings({"LEGEND_PORT": "70000"})
    with pytest.raises(serve.ServeError, match="LEGEND_AUTH_FILE: users file .* does not exist"):
        serve.settings({"LEGEND_AUTH_FILE": str(tmp_path / "missing.json")})


def test_the_project_config_serves_locally_without_a_watcher():
    """``streamlit run app.py`` from the project folder, without the launcher, is local and
    unwatched too (the launcher's command line only makes it sure)."""
    tomllib = pytest.importorskip("tomllib")

    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["address"] == "127.0.0.1"
    assert server["fileWatcherType"] == "none" and server["runOnSave"] is False


# --- the launcher as make run starts it ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> list[str]:
    """The local addresses of the sockets listening on ``port`` (from /proc/net/tcp*)."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.append(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.append(socket.inet_ntop(socket.AF_INET6, words))
    return found


def _env(**settings: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STREAMLIT_")
        and k not in ("LEGEND_ADDRESS", "LEGEND_ALLOW_OPEN", "LEGEND_AUTH_FILE", "LEGEND_PORT")
    }
    return env | {"STREAMLIT_SERVER_HEADLESS": "true"} | settings


def test_make_run_serves_on_loopback_only_without_a_watcher(tmp_path):
    make = subprocess.run(
        ["make", "--no-print-directory", "-n", "run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        # Under `make test` (CI) the parent make's variables would make this one print
        # "Entering/Leaving directory" lines.
        env={k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")},
    )
    assert make.stdout.strip().splitlines()[-1] == "scripts/serve.sh"

    port = _free_port()
    env = _env(LEGEND_PORT=str(port), LEGEND_DB=f"sqlite:///{tmp_path / 'legend.db'}")
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "serve.sh")], cwd=tmp_path, env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.time() + 60
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health") as r:
                    if r.status == 200:
                        break
            except OSError:
                assert time.time() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.3)
        assert _listening(port) == ["127.0.0.1"]
        # The launcher became the server (exec): its command line is what runs.
        running = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert b"--server.fileWatcherType" in running
        assert running[running.index(b"--server.fileWatcherType") + 1] == b"none"
    finally:
        process.terminate()
        process.wait(20)
        log.close()
    said = (tmp_path / "serve.log").read_text()
    assert f"Legend Studio: listening on http://127.0.0.1:{port} (this machine only" in said


def test_launcher_refuses_to_open_the_app_to_the_network_without_login(tmp_path):
    port = _free_port()
    done = subprocess.run(
        [sys.executable, "-m", "legend_core.app.serve"],
        cwd=tmp_path,
        env=_env(LEGEND_ADDRESS="0.0.0.0", LEGEND_PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Refusing to listen on 0.0.0.0 without login mode" in done.stderr
    assert "LEGEND_AUTH_FILE" in done.stderr and "LEGEND_ALLOW_OPEN=1" in done.stderr
    assert _listening(port) == []


# --- the server's data folder ----------------------------------------------------------------


@pytest.fixture
def data_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "pairs.jsonl").write_text("{}\n")
    (folder / "sub" / "more.jsonl").write_text("{}\n")
    (tmp_path / "secret.jsonl").write_text("{}\n")
    (folder / "link_out.jsonl").symlink_to(tmp_path / "secret.jsonl")
    (folder / "dir_out").symlink_to(tmp_path, target_is_directory=True)
    (folder / "link_in.jsonl").symlink_to(folder / "pairs.jsonl")
    monkeypatch.setenv("LEGEND_DATA_DIR", str(folder))
    return folder


def test_data_file_reads_inside_the_data_folder(data_folder):
    real = data_folder.resolve()
    assert config.data_file("pairs.jsonl") == real / "pairs.jsonl"
    assert config.data_file(" sub/more.jsonl ") == real / "sub" / "more.jsonl"
    assert config.data_file(str(data_folder / "pairs.jsonl")) == real / "pairs.jsonl"
    assert config.data_file("sub/../pairs.jsonl") == real / "pairs.jsonl"
    assert config.data_file("link_in.jsonl") == real / "pairs.jsonl"  # a link that stays in


@pytest.mark.parametrize(
    "name",
    [
        "../secret.jsonl",
        "sub/../../secret.jsonl",
        "link_out.jsonl",
        "dir_out/secret.jsonl",
        "dir_out/data/pairs.jsonl/../../secret.jsonl",
        "/etc/passwd",
        "/etc/no-such-file",
        "~/.ssh/id_rsa",
    ],
)
def test_data_file_refuses_everything_outside(data_folder, name):
    with pytest.raises(ValueError, match="only files inside the data folder"):
        config.data_file(name)


def test_data_file_refuses_missing_files_folders_and_empty_names(data_folder, monkeypatch):
    with pytest.raises(ValueError, match="no such file in the data folder"):
        config.data_file("nope.jsonl")
    with pytest.raises(ValueError, match="no such file in the data folder"):
        config.data_file("sub")
    with pytest.raises(ValueError, match="no file name"):
        config.data_file("  ")
    with pytest.raises(ValueError, match="no file name"):
        config.data_file("pairs\x00.jsonl")
    monkeypatch.setenv("LEGEND_DATA_DIR", str(data_folder / "missing"))
    with pytest.raises(ValueError, match="does not exist"):
        config.data_file("pairs.jsonl")
