"""Start the app the way ``make run`` does: on loopback unless the deployer says otherwise,
never watching source files, and never open to the network without login mode unless asked.

Settings (environment):

| variable           | default     | what                                                   |
|--------------------|-------------|--------------------------------------------------------|
| LEGEND_ADDRESS     | 127.0.0.1   | the address to listen on (``0.0.0.0``: every interface) |
| LEGEND_PORT        | 8501        | the port                                               |
| LEGEND_AUTH_FILE   | (none)      | users file: login mode                                 |
| LEGEND_ALLOW_OPEN  | (none)      | ``1``: allow listening beyond loopback without login   |

Run it as ``scripts/serve.sh`` or ``python -m legend_core.app.serve``. Other Streamlit options
can be given as ``STREAMLIT_*`` variables or in ``.streamlit/config.toml``; the address, the
port and the file watcher are set on the command line, which wins over both.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from legend_core import config

APP = config.PROJECT_ROOT / "app.py"
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8501


class ServeError(Exception):
    """A setting that stops the app from starting; the message says which and why."""


def is_loopback(address: str) -> bool:
    """Whether ``address`` only accepts connections from this machine ("" is every one)."""
    host = address.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost, or "": may be reachable from outside


def allow_open(env: Mapping[str, str]) -> bool:
    """Whether the deployer opted in to serving beyond loopback without login mode."""
    return env.get("LEGEND_ALLOW_OPEN", "").strip().lower() in ("1", "true", "yes")


def exposure_problem(address: str, login: bool, opened: bool) -> str | None:
    """Why serving on ``address`` must be refused, or None when it is allowed."""
    if is_loopback(address) or login or opened:
        return None
    where = address.strip() or "every network interface"
    return (
        f"Refusing to listen on {where} without login mode: anyone who can reach this machine "
        "could read, change and delete its data. Set LEGEND_AUTH_FILE to a users file "
        "(legend user add NAME --role admin --file users.json), or set LEGEND_ALLOW_OPEN=1 if "
        "everyone who can reach this address may use the app with every power."
    )


@dataclass(frozen=True)
class Settings:
    """What the app will listen on, and with which protections."""

    address: str
    port: int
    login: bool
    opened: bool

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    def describe(self) -> str:
        """One line for the terminal: where the app listens and who can reach it."""
        if is_loopback(self.address):
            reach = "this machine only"
        else:
            reach = "reachable from the network"
        login = "login mode on" if self.login else "no login"
        line = f"Legend Studio: listening on {self.url} ({reach}, {login})"
        if not is_loopback(self.address) and not self.login:
            line += "; LEGEND_ALLOW_OPEN is set: everyone who reaches it has every power"
        return line


def settings(env: Mapping[str, str]) -> Settings:
    """Read and check the settings; a bad or unsafe one raises ServeError."""
    address = env.get("LEGEND_ADDRESS", "").strip() or DEFAULT_ADDRESS
    raw_port = env.get("LEGEND_PORT", "").strip() or str(DEFAULT_PORT)
    try:
        port = int(raw_port)
    except ValueError as error:
        raise ServeError(f"LEGEND_PORT must be a number, not {raw_port!r}") from error
    if not 1 <= port <= 65535:
        raise ServeError(f"LEGEND_PORT must be between 1 and 65535, not {port}")
    login = bool(env.get("LEGEND_AUTH_FILE", "").strip())
    if login:
        from legend_core.app import auth

        path = Path(env["LEGEND_AUTH_FILE"].strip()).expanduser()
        try:
            auth.load_config(path)
        except ValueError as error:
            raise ServeError(f"LEGEND_AUTH_FILE: {error}") from error
    opened = allow_open(env)
    problem = exposure_problem(address, login, opened)
    if problem:
        raise ServeError(problem)
    return Settings(address=address, port=port, login=login, opened=opened)


def command(chosen: Settings, python: str = sys.executable) -> list[str]:
    """The ``streamlit run`` command for these settings: served for use, not for editing
    (no file watcher, no rerun on save: watching the project, ``.venv`` included, took the
    CPU from the app's own jobs)."""
    return [
        python,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        chosen.address,
        "--server.port",
        str(chosen.port),
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Check the settings, say where the app listens, then become the Streamlit server."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        print(__doc__, file=sys.stderr)
        return 0 if args[0] in ("-h", "--help") else 2
    try:
        chosen = settings(os.environ)
    except ServeError as error:
        print(f"legend serve: {error}", file=sys.stderr)
        return 2
    print(chosen.describe(), flush=True)
    argv_out = command(chosen)
    os.chdir(config.PROJECT_ROOT)  # .streamlit/config.toml is read from the working folder
    os.execv(argv_out[0], argv_out)
    return 0  # not reached: execv replaces this process


if __name__ == "__main__":
    raise SystemExit(main())
