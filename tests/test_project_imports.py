"""Every name the benchmarks, scripts, app pages and tests import from the library exists.

The benchmarks and scripts run outside the test suite (``make bench``, evaluations), so a
module split can break them unseen: ``bench/flops.py`` imported ``encode_pairs`` from
``method.encode`` for a whole session after it moved to ``method.packing``. Checked from
the source (``ast``), so nothing heavy is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "legend_core"


def module_path(module: str) -> Path | None:
    """The file of a library module (``legend_core.a.b``), or None if there is none."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def defined_names(path: Path) -> set[str]:
    """Names a module binds at its top level: defs, classes, assignments and imports."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.If | ast.Try):  # TYPE_CHECKING blocks, optional imports
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    names |= {(a.asname or a.name).split(".")[0] for a in inner.names}
    return names


def missing_imports(path: Path) -> list[str]:
    """``file:line module.name`` for each library import in ``path`` that does not resolve."""
    problems = []
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE and module_path(alias.name) is None:
                    problems.append(f"{where}:{node.lineno} {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != PACKAGE:
                continue
            source = module_path(node.module)
            if source is None:
                problems.append(f"{where}:{node.lineno} {node.module}")
                continue
            names = defined_names(source)
            for alias in node.names:
                submodule = module_path(f"{node.module}.{alias.name}")
                if alias.name != "*" and alias.name not in names and submodule is None:
                    problems.append(f"{where}:{node.lineno} {node.module}.{alias.name}")
    return problems


def checked_files() -> list[Path]:
    folders = ("bench", "scripts", "app_pages", "tests", PACKAGE)
    files = [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]
    return files + [ROOT / "app.py"]


def test_every_library_import_outside_the_library_resolves() -> None:
    files = checked_files()
    assert all(path.is_file() for path in files)
    assert {path.parent.name for path in files} >= {"bench", "scripts", "app_pages", "tests"}
    problems = [p for path in files for p in missing_imports(path)]
    assert problems == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from legend_core.method.encode import encode_pairs\n", "method.encode.encode_pairs"),
        ("from legend_core.method.nowhere import x\n", "legend_core.method.nowhere"),
        ("import legend_core.nowhere\n", "legend_core.nowhere"),
    ],
)
def test_the_check_reports_a_name_that_moved(tmp_path: Path, source: str, expected: str) -> None:
    path = tmp_path / "moved.py"
    path.write_text(source, encoding="utf-8")
    problems = missing_imports(path)
    assert len(problems) == 1 and problems[0].endswith(expected)


def test_the_check_accepts_names_that_exist(tmp_path: Path) -> None:
    path = tmp_path / "present.py"
    path.write_text(
        "from legend_core.method.packing import encode_pairs\n"
        "from legend_core.data import store\n"
        "from legend_core.data.store import Store\n"
        "import legend_core.util\n",
        encoding="utf-8",
    )
    assert missing_imports(path) == []
