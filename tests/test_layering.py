"""Imports go one way (ARCHITECTURE.md): every module's imports, parsed with ``ast``.

Every import counts: at module level, inside functions and under ``TYPE_CHECKING`` (a type
hint that names a higher layer is a dependency on it all the same). The checks read source
files only; nothing is imported, so a violation cannot hide behind an import error.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "legend_core"

#: Packages of ``legend_core`` and their layer; the modules at the top are the base.
LAYER_OF_PACKAGE = {
    "method": "method",
    "review": "review",
    "data": "data",
    "workflows": "workflows",
    "evaluation": "evaluation",
    "app": "app",
    "cli": "cli",
}
BASE_MODULES = {"legend_core", "legend_core.config", "legend_core.types", "legend_core.util"}
#: ``python -m legend_core`` runs the command line.
TOP_LEVEL = {"legend_core.__main__": "cli"}
#: New files written while the layout was made; their authors move them into it and then
#: delete their line here (ARCHITECTURE.md, "Pending moves").
PENDING: dict[str, str] = {}

_BELOW_APP = {"base", "method", "review", "data", "workflows", "evaluation"}
#: Which layers each layer may import (itself included).
ALLOWED = {
    "base": {"base"},
    "method": {"base", "method"},
    "review": {"base", "review"},
    "data": {"base", "review", "method", "data"},
    "workflows": {"base", "method", "review", "data", "workflows"},
    "evaluation": {"base", "method", "review", "data", "workflows", "evaluation"},
    "app": _BELOW_APP | {"app"},
    "cli": _BELOW_APP | {"app", "cli"},
}
#: Third-party packages a layer never imports.
TORCH = {"torch", "transformers", "safetensors.torch", "accelerate"}
FORBIDDEN = {
    "base": TORCH | {"sqlalchemy", "alembic", "streamlit", "pandas"},
    "method": {"sqlalchemy", "alembic", "streamlit"},
    "review": TORCH | {"sqlalchemy", "alembic", "streamlit"},
    "data": TORCH | {"streamlit"},
    "workflows": {"streamlit"},
    "evaluation": {"streamlit"},
    "app": {"streamlit"},
    "cli": {"streamlit"},
}
#: What the pages never import: the database and the model directly, and the store's insides.
PAGE_FORBIDDEN = TORCH | {"sqlalchemy", "alembic"}
PAGE_FORBIDDEN_OWN = (
    "legend_core.cli",
    "legend_core.__main__",
    "legend_core.data.schema",
    "legend_core.data.migrations",
    "legend_core.data.store.engine",
)

#: Size limits (ARCHITECTURE.md): a longer module or class says why in a line starting with
#: one of these markers.
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300
LONG_MODULE = "# Long module:"
LONG_CLASS = "# Long class:"


# --- reading the tree ----------------------------------------------------------------------


def module_name(path: Path) -> str:
    """``legend_core/data/store/__init__.py`` -> ``legend_core.data.store``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def library_files() -> dict[str, Path]:
    """Every module of ``legend_core`` by its dotted name."""
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def is_package(name: str, modules: dict[str, Path]) -> bool:
    return name in modules and modules[name].name == "__init__.py"


def imports(name: str, source: str, package: bool) -> Iterator[str]:
    """Every module ``source`` imports, as dotted names (``from a import b`` yields ``a.b``
    too: ``b`` may be a module), relative imports resolved against ``name``."""
    here = name if package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            for alias in node.names:
                yield f"{base}.{alias.name}"


def own_module(target: str, modules: dict[str, Path]) -> str | None:
    """The ``legend_core`` module that ``target`` names (the longest known prefix)."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def layer(name: str) -> str | None:
    """The layer of a ``legend_core`` module (None: not placed yet, which is a failure)."""
    if name in BASE_MODULES:
        return "base"
    if name in TOP_LEVEL:
        return TOP_LEVEL[name]
    if name in PENDING:
        return PENDING[name]
    parts = name.split(".")
    if len(parts) >= 2 and parts[1] in LAYER_OF_PACKAGE:
        return LAYER_OF_PACKAGE[parts[1]]
    return None


def third_party(target: str, banned: set[str]) -> str | None:
    """The banned package ``target`` belongs to, if any."""
    return next((b for b in banned if target == b or target.startswith(b + ".")), None)


def violations(name: str, source: str, modules: dict[str, Path]) -> list[str]:
    """What ``name`` (a ``legend_core`` module with this source) imports against the rules."""
    mine = layer(name)
    if mine is None:
        return [f"{name} belongs to no layer: put it in a package (ARCHITECTURE.md)"]
    found = []
    for target in set(imports(name, source, is_package(name, modules))):
        banned = third_party(target, FORBIDDEN[mine])
        if banned:
            found.append(f"{name} ({mine}) imports {banned}")
        own = own_module(target, modules)
        if own is None or own == PACKAGE and target != PACKAGE:
            continue
        theirs = layer(own)
        if theirs is not None and theirs not in ALLOWED[mine]:
            found.append(f"{name} ({mine}) imports {own} ({theirs})")
    return sorted(set(found))


def sources() -> dict[str, str]:
    return {name: path.read_text(encoding="utf-8") for name, path in library_files().items()}


# --- the rules -------------------------------------------------------------------------------


def test_every_module_has_a_layer_and_imports_only_below_it() -> None:
    modules = library_files()
    found = [v for name, text in sources().items() for v in violations(name, text, modules)]
    assert not found, "\n".join(found)


def test_storage_never_reaches_torch_even_through_the_method() -> None:
    """A data module imports no module that imports torch (directly or further down)."""
    modules = library_files()
    texts = sources()
    graph = {
        name: {
            own
            for target in imports(name, text, is_package(name, modules))
            if (own := own_module(target, modules)) and own != name
        }
        for name, text in texts.items()
    }
    torchy = {
        name
        for name, text in texts.items()
        if any(third_party(t, TORCH) for t in imports(name, text, is_package(name, modules)))
    }
    found = []
    for name in texts:
        if layer(name) != "data":
            continue
        seen, todo = set(), [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            todo.extend(graph.get(current, ()))
        found += [f"{name} reaches torch through {m}" for m in sorted(seen & torchy)]
    assert not found, "\n".join(found)


def page_files() -> list[Path]:
    return [ROOT / "app.py", *sorted((ROOT / "app_pages").glob("*.py"))]


def test_pages_import_only_the_app_layer_and_below() -> None:
    modules = library_files()
    found = []
    for path in page_files():
        name = module_name(path)
        for target in imports(name, path.read_text(encoding="utf-8"), False):
            banned = third_party(target, PAGE_FORBIDDEN)
            if banned:
                found.append(f"{path.name} imports {banned}")
            own = own_module(target, modules)
            if own and own.startswith(PAGE_FORBIDDEN_OWN):
                found.append(f"{path.name} imports {own}")
    assert not found, "\n".join(sorted(set(found)))


def test_only_the_pages_import_streamlit() -> None:
    found = [
        name
        for name, text in sources().items()
        if any(third_party(t, {"streamlit"}) for t in imports(name, text, False))
    ]
    assert not found


def sized_files() -> list[Path]:
    """Library, pages, scripts and benchmarks (tests may be long: they are lists of cases)."""
    files = [*(ROOT / PACKAGE).rglob("*.py"), *page_files()]
    files += [*(ROOT / "scripts").glob("*.py"), *(ROOT / "bench").glob("*.py")]
    pending = {ROOT / (name.replace(".", "/") + ".py") for name in PENDING}
    return sorted(p for p in files if p not in pending)


def test_no_long_module_or_class_without_a_reason() -> None:
    found = []
    for path in sized_files():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        where = path.relative_to(ROOT)
        if len(lines) > MAX_MODULE_LINES and not any(
            line.lstrip().startswith(LONG_MODULE) for line in lines
        ):
            found.append(f"{where}: {len(lines)} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                body = lines[node.lineno - 1 : node.end_lineno]
                if len(body) > MAX_CLASS_LINES and not any(
                    line.lstrip().startswith(LONG_CLASS) for line in body
                ):
                    found.append(f"{where}: class {node.name}, {len(body)} lines")
    assert not found, "\n".join(found)


# --- the checker itself finds what it should ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [
        (
            "legend_core.method.margins",
            "def f():\n    from legend_core.data.store import Store\n",
            "legend_core.method.margins (method) imports legend_core.data.store (data)",
        ),
        (
            "legend_core.data.exports",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n",
            "legend_core.data.exports (data) imports torch",
        ),
        (
            "legend_core.method.encode",
            "from legend_core import app\n",
            "legend_core.method.encode (method) imports legend_core.app (app)",
        ),
        (
            "legend_core.review.policy",
            "from ..data import schema\n",
            "legend_core.review.policy (review) imports legend_core.data.schema (data)",
        ),
        ("legend_core.stray", "", "legend_core.stray belongs to no layer"),
    ],
)
def test_the_checker_reports_a_wrong_import(name: str, source: str, expected: str) -> None:
    found = violations(name, source, library_files())
    assert any(v.startswith(expected) for v in found), found


def test_the_checker_accepts_an_import_downward() -> None:
    source = "from legend_core.method.margins import margins\nimport numpy\n"
    assert violations("legend_core.data.exports", source, library_files()) == []
