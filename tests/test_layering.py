"""Layering: dependencies point one way (DESIGN.md, "Layout").

``schemas`` <- ``store`` <- ``ingest``, ``training`` <- ``embeddings`` <- ``instruments``:
nothing imports upward, not even inside a function or under ``TYPE_CHECKING``. The CLI and
the demo in ``aivc/`` sit above every package (they may import them all; no package
imports them). Every ``.py`` file of the packages is parsed, not imported, so an import
that only runs on some path is caught too.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: the subpackages of ``aivc`` and their folders (pyproject.toml's package-dir)
PACKAGES: dict[str, str] = {
    "aivc.schemas": "schemas",
    "aivc.store": "store",
    "aivc.ingest": "ingest",
    "aivc.training": "training",
    "aivc.embeddings": "embeddings",
    "aivc.instruments": "instruments",
    "aivc.portal": "portal",
}

#: package -> the packages above it, which it must never import
FORBIDDEN: dict[str, frozenset[str]] = {
    "aivc.schemas": frozenset({"aivc.store", "aivc.ingest", "aivc.training", "aivc.embeddings", "aivc.instruments"}),
    "aivc.store": frozenset({"aivc.ingest", "aivc.training", "aivc.embeddings", "aivc.instruments"}),
    "aivc.ingest": frozenset({"aivc.training", "aivc.embeddings", "aivc.instruments"}),
    "aivc.training": frozenset({"aivc.ingest", "aivc.embeddings", "aivc.instruments"}),  # a sibling of ingest
    "aivc.embeddings": frozenset({"aivc.instruments"}),
    "aivc.instruments": frozenset(),
    "aivc.portal": frozenset(),  # the web front end: above every layer, like the CLI (which alone imports it)
}

#: deliberate exceptions, (importing module, imported package) -> why; keep it empty
EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    """The import name of a file under one of the package folders."""
    rel = path.relative_to(ROOT)
    package = next(p for p, d in PACKAGES.items() if rel.parts[0] == d)
    parts = [*rel.parts[1:-1]] + ([] if rel.name == "__init__.py" else [rel.stem])
    return ".".join([package, *parts])


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` may import: ``import``/``from`` statements anywhere (relative
    ones resolved against ``module``), ``from X import name`` also as ``X.name``, and
    ``importlib.import_module``/``__import__`` of a string (an f-string by its fixed start)."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
        elif isinstance(node, ast.Call) and node.args:
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name not in ("import_module", "__import__"):
                continue
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.add(arg.value)
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                out.add(str(arg.values[0].value).rstrip("."))
    return out


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _is_top(name: str) -> bool:
    """The front ends: the CLI and demo modules of ``aivc/`` (``aivc.cli``, ``aivc.cli_*``,
    ``aivc.demo``, ``aivc.demo_*``) and the portal (``aivc.portal``)."""
    return _within(name, "aivc.cli") or _within(name, "aivc.demo") or name.startswith(("aivc.cli_", "aivc.demo_")) or _within(name, "aivc.portal")


def violations() -> list[tuple[str, str]]:
    """(importing module, imported package or module) for every import against the layering."""
    found: list[tuple[str, str]] = []
    for package, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            mod = module_name(path)
            names = imported_names(path.read_text(encoding="utf-8"), mod, is_package=path.name == "__init__.py")
            bad = {up for up in FORBIDDEN[package] for n in names if _within(n, up)}
            if package != "aivc.portal":  # the portal is a front end: it may use the CLI's shapes and itself
                bad |= {n for n in names if _is_top(n)}
            found.extend((mod, b) for b in sorted(bad))
    return found


def test_packages_match_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_dir = dict(cfg["tool"]["setuptools"]["package-dir"])
    assert package_dir.pop("aivc") == "aivc"
    assert package_dir == PACKAGES and set(FORBIDDEN) == set(PACKAGES)


def test_every_package_is_scanned():
    for folder in PACKAGES.values():
        assert list((ROOT / folder).rglob("*.py")), folder


def test_nothing_imports_upward():
    found = [v for v in violations() if v not in EXCEPTIONS]
    assert not found, "imports against DESIGN.md's layering (schemas <- store <- ingest, training <- embeddings <- instruments):\n" + "\n".join(
        f"  {mod} imports {up}" for mod, up in found
    )


def test_exceptions_are_still_needed():
    found = set(violations())
    assert not [e for e in EXCEPTIONS if e not in found], "an exception no longer occurs: remove it from EXCEPTIONS"


@pytest.mark.parametrize(
    ("source", "module", "want"),
    [
        ("def f():\n    from aivc.embeddings.store import get_version\n", "aivc.training.trainer", {"aivc.embeddings.store"}),
        ("import aivc.instruments.report as r\n", "aivc.store.lake", {"aivc.instruments.report"}),
        ("from aivc import embeddings\n", "aivc.training.data", {"aivc.embeddings"}),
        ("from ..embeddings import store\n", "aivc.training.trainer", {"aivc.embeddings.store"}),
        ("from .. import embeddings\n", "aivc.training.models.cell_vae", {"aivc.training.embeddings"}),
        ("import importlib\nimportlib.import_module('aivc.embeddings.store')\n", "aivc.training.trainer", {"aivc.embeddings.store"}),
        ("import importlib\nimportlib.import_module(f'aivc.instruments.{x}')\n", "aivc.embeddings.sql", {"aivc.instruments"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from aivc.cli_common import run_command\n", "aivc.store.sql", {"aivc.cli_common"}),
    ],
)
def test_imports_are_found_wherever_they_are(source: str, module: str, want: set[str]):
    names = imported_names(source, module)
    assert want <= names, names


#: the shared modules of ``aivc/`` every layer may import; they sit below all packages
SHARED = ("errors", "ontology", "progress", "ray_local", "term_search")


def test_shared_modules_import_no_layer():
    """``aivc.errors``, ``aivc.ontology`` (with its ``aivc.term_search``), ``aivc.progress``, ``aivc.ray_local`` are imported by
    every layer, so they import none (else store -> aivc.ontology -> instruments would pass)."""
    layers = set(PACKAGES)
    found = []
    for name in SHARED:
        path = ROOT / "aivc" / f"{name}.py"
        names = imported_names(path.read_text(encoding="utf-8"), f"aivc.{name}")
        found += [(name, n) for n in sorted(names) if any(_within(n, p) for p in layers) or _is_top(n)]
    assert not found, found
    assert sorted(p.stem for p in (ROOT / "aivc").glob("*.py") if not _is_top(f"aivc.{p.stem}") and p.stem != "__init__") == sorted(SHARED)


# -- the store's doors: nothing outside store/ locates a dataset version's files ------------------
#: what finds a committed version's tables on disk: the catalog's path method and the layout's names
_ARTIFACT_DOORS = ("artifacts_path",)
_ARTIFACT_NAMES = ("obs_submitted.parquet", "catalog/datasets", "cells.parquet", "genes.parquet")


def artifact_access(source: str) -> list[str]:
    """Where ``source`` reaches dataset-version files itself: ``artifacts_path`` (attribute or
    name), or a path built with ``/`` from a layout name, or ``.artifacts`` joined to a path."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in _ARTIFACT_DOORS:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in _ARTIFACT_DOORS:
            found.append(f"line {node.lineno}: {node.id}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and isinstance(side.value, str) and any(n in side.value for n in _ARTIFACT_NAMES[:2]):
                    found.append(f"line {node.lineno}: / {side.value!r}")
                if isinstance(side, ast.Attribute) and side.attr == "artifacts":
                    found.append(f"line {node.lineno}: / .artifacts")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("read_parquet", "read_table", "ParquetFile"):
            for arg in node.args[:1]:
                if isinstance(arg, ast.BinOp) and isinstance(arg.right, ast.Constant) and arg.right.value in _ARTIFACT_NAMES[2:]:
                    if not (isinstance(arg.left, ast.Name) and arg.left.id == "folder"):  # a training run's own plan files
                        found.append(f"line {node.lineno}: reads {arg.right.value!r}")
    return found


def test_only_the_store_opens_dataset_files():
    """Training, embeddings, instruments, ingest, the CLI and benchmarks read committed versions
    through aivc.store.read and write them through aivc.store.artifacts (DESIGN.md: the read API
    and the versioned collection are the only doors)."""
    folders = [d for d in PACKAGES.values() if d != "store"] + ["aivc", "benchmarks"]
    found = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += [f"{path.relative_to(ROOT)} {w}" for w in artifact_access(path.read_text(encoding="utf-8"))]
    assert not found, "dataset-version files opened outside store/:\n" + "\n".join(f"  {f}" for f in found)


#: local work folders outside the lake's published state (``Lake.root`` is the lake folder, or an
#: S3 lake's local work folder): a training run's scratch and the demo's generated inputs
_WORK_FOLDERS = ("'models' / '.runs'", "DEMO_INPUTS")


def lake_path_access(source: str) -> list[str]:
    """Where ``source`` builds a path into the lake itself (``<lake>.root / …``) or reaches for
    its storage, instead of going through the store's APIs (which work on every backend)."""
    found: list[str] = []
    tree = ast.parse(source)
    inner = {id(n.left) for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "storage" and getattr(node.value, "id", getattr(node.value, "attr", "")) in ("lake", "lk"):
            found.append(f"line {node.lineno}: .storage")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and id(node) not in inner:
            left = node.left
            while isinstance(left, ast.BinOp) and isinstance(left.op, ast.Div):
                left = left.left
            if isinstance(left, ast.Attribute) and left.attr == "root" and getattr(left.value, "id", getattr(left.value, "attr", "")) in ("lake", "lk", "self.lake", "lake_"):
                text = ast.unparse(node).replace('"', "'")
                if not any(w in text for w in _WORK_FOLDERS):
                    found.append(f"line {node.lineno}: {text}")
    return found


def test_only_the_store_opens_lake_files():
    """Outside store/ nothing opens the lake's files by path: a lake may be an S3 prefix, and the
    store's APIs (read, collections, catalog, storage) are what work on every backend."""
    folders = [d for d in PACKAGES.values() if d != "store"] + ["aivc", "benchmarks"]
    found = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += [f"{path.relative_to(ROOT)} {w}" for w in lake_path_access(path.read_text(encoding="utf-8"))]
    assert not found, "lake files opened by path outside store/:\n" + "\n".join(f"  {f}" for f in found)


@pytest.mark.parametrize(
    "source",
    ["p = lake.root / 'access.json'\n", "lk.root / 'features' / 'cell'\n", "lake.storage.read_bytes('lake.json')\n"],
)
def test_lake_path_access_is_found(source: str):
    assert lake_path_access(source), source
    assert not lake_path_access("runs = lake.root / 'models' / '.runs'\nwork = lake.root / DEMO_INPUTS\n")


@pytest.mark.parametrize(
    "source",
    [
        "cat.artifacts_path(v) / 'genes.parquet'\n",
        "pd.read_parquet(folder2 / 'cells.parquet')\n",
        "p = lake.root / v.artifacts\n",
        "p = lake.root / 'catalog/datasets' / d\n",
        "x = art / 'obs_submitted.parquet'\n",
    ],
)
def test_artifact_access_is_found(source: str):
    assert artifact_access(source), source
