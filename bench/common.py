"""What every benchmark shares: the machine, timers, the data, JSON results, subprocesses.

Timings on a shared machine are noisy, so every benchmark times its baseline in the same
run, interleaved with the thing measured, and reports ratios of medians. Each timing
records wall-clock seconds and the CPU seconds of the whole process (all threads): on a
machine where other jobs compete for the cores, CPU time moves less than wall time.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"
HH_DEV = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base" / "dev.jsonl"


# --- the machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, load, library versions and thread counts."""
    import numpy as np

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "bf16_instructions": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile"}),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        pass
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def print_machine(info: dict[str, Any] | None = None) -> dict[str, Any]:
    info = info or machine()
    threads = info.get("torch_threads", "?")
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info.get('memory_gib', '?')} GiB, "
        f"bf16 instructions {','.join(info['bf16_instructions']) or 'none'}, "
        f"load average {info['load_average_1m']}"
    )
    print(
        f"software: python {info['python']}, torch {info.get('torch', '-')} "
        f"({info.get('torch_cpu_capability', '-')}, {threads} threads), "
        f"transformers {info.get('transformers', '-')}, numpy {info['numpy']}"
    )
    return info


# --- timing -----------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process, every thread, user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Timing:
    """Repeated measurements of one thing: wall and process CPU seconds per repeat."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall_s": [round(x, 4) for x in self.wall],
            "cpu_s": [round(x, 4) for x in self.cpu],
            "median_wall_s": round(self.median_wall, 4),
            "median_cpu_s": round(self.median_cpu, 4),
        }


def timed(fn: Callable[[], Any], timing: Timing | None = None) -> tuple[Any, float, float]:
    """Run ``fn`` once; return its result, wall seconds and CPU seconds (added to ``timing``)."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    if timing is not None:
        timing.add(wall, cpu)
    return result, wall, cpu


def interleave(
    runs: dict[str, Callable[[], Any]], repeats: int, timings: dict[str, Timing] | None = None
) -> dict[str, Timing]:
    """Time each run ``repeats`` times, round-robin (A B A B ...), so that changes in the
    machine's load hit every contender alike; the order alternates between rounds."""
    timings = timings if timings is not None else {name: Timing() for name in runs}
    names = list(runs)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            timed(runs[name], timings.setdefault(name, Timing()))
    return timings


# --- data -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def hh_pairs(n: int = 256) -> list[Any]:
    """The first ``n`` pairs of the HH-RLHF harmless dev file, split by ``formats``."""
    from legend_core.data.formats import read_pairs

    if not HH_DEV.is_file():
        raise SystemExit(f"benchmark data missing: {HH_DEV}")
    return read_pairs(HH_DEV, format="hh-rlhf").pairs[:n]


@lru_cache(maxsize=4)
def model(dtype: str = "auto") -> Any:
    """The default model, loaded once per process and dtype."""
    from legend_core.method.models import load_model

    return load_model("default", device="cpu", dtype=dtype)


# --- results ----------------------------------------------------------------------------------


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``bench/out/NAME.json`` (with the machine) and return its path."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    payload = {"benchmark": name, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **result}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n", encoding="utf-8")
    print(f"-> {path.relative_to(ROOT)}")
    return path


def fmt(x: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, no exponent for ordinary sizes."""
    if x == 0 or not (1e-3 <= abs(x) < 1e7):
        return f"{x:.{digits}g}"
    return f"{x:,.{max(0, digits - 1 - int(f'{abs(x):e}'.split('e')[1]))}f}"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain fixed-width table for the terminal."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- subprocesses for peak memory ---------------------------------------------------------------


def in_subprocess(module: str, *args: str, timeout: float = 900) -> dict[str, Any]:
    """Run ``python -m MODULE ARGS`` in a fresh interpreter; it prints one JSON line last.

    The child measures its own peak resident memory (``VmHWM``) and its memory before the
    operation, so a result's memory is that of one operation, not of this process.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB.

    ``VmHWM`` of /proc/self/status, which starts afresh at ``exec``: ``ru_maxrss`` does
    not (Linux keeps the forking parent's peak in it), so in a child started by a large
    benchmark process it would report the parent's memory.
    """
    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident memory now, MiB."""
    now = _status_mib("VmRSS")
    return now if now is not None else peak_rss_mib()
