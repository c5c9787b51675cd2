"""The rows of ``aivc datasets`` and of a dataset's detail, as one principal sees them.

``aivc datasets --json`` and the portal's ``GET /api/datasets`` / ``GET /api/datasets/{id}``
both build their answers here, so the shapes cannot drift apart. A dataset the principal
may not see is missing: :func:`dataset_detail` raises the same :class:`NotFoundError`
for it as for an id that does not exist.

Example
-------
>>> dataset_rows(lake, "public", tissue="blood")  # doctest: +SKIP
[{'id': 'pbmc68k-part1', 'version': 1, 'title': ..., 'current': True}]
"""

from __future__ import annotations

import json
from typing import Any

from aivc.errors import NotFoundError

#: The keys of one row, in the order the table prints them.
COLUMNS = ("id", "version", "title", "organism", "n_cells", "n_genes", "access", "committed_at", "current")


def dataset_row(v: Any, current: set[str]) -> dict[str, Any]:
    """One row of ``aivc datasets --json`` for the dataset version ``v``."""
    return {
        "id": v.dataset_id,
        "version": v.version,
        "title": v.title,
        "organism": v.organism,
        "n_cells": v.n_cells,
        "n_genes": v.n_genes,
        "access": v.access + (f" until {v.embargo_until}" if v.embargo_until else ""),
        "committed_at": v.committed_at,
        "current": v.ref in current,
    }


def _matches(value: str | None, *candidates: Any) -> bool:
    if value is None or value == "":
        return True
    want = value.strip().lower()
    return any(str(c).strip().lower() == want for c in candidates if c is not None)


def _terms(lake: Any, principal: Any, column: str) -> dict[str, set[str]]:
    """``dataset ref -> {labels and term ids of column}`` over the cells the principal may see."""
    from aivc.store.sql import query

    res = query(lake, f"SELECT DISTINCT dataset_id, dataset_version, {column}, {column}_ontology_term_id FROM cells_all_versions", principal=principal)
    out: dict[str, set[str]] = {}
    for ds, ver, label, term in res.rows:
        out.setdefault(f"{ds}@{ver}", set()).update(str(x).lower() for x in (label, term) if x is not None)
    return out


def dataset_rows(
    lake: Any,
    principal: Any = None,
    *,
    current_only: bool = False,
    organism: str | None = None,
    tissue: str | None = None,
    assay: str | None = None,
    access: str | None = None,
    with_terms: bool = False,
) -> list[dict[str, Any]]:
    """Rows of the dataset versions ``principal`` may see (``None``: the lake owner).

    With ``with_terms`` each row also lists the ``tissues`` and ``assays`` (labels) of its cells.

    ``organism`` matches the NCBITaxon id or the name (``homo_sapiens``); ``tissue`` and
    ``assay`` a label or ontology term id of any of the version's cells; ``access`` the
    access level (``public``, ``consortium``, ``embargoed``). Matching ignores case.
    """
    from aivc.store.access import visible_datasets
    from aivc.store.catalog import Catalog

    cat = Catalog(lake)
    visible = visible_datasets(lake, principal)
    current = {v.ref for v in cat.current()}
    versions = [
        v
        for v in cat.all_versions()
        if v.dataset_id in visible
        and (not current_only or v.ref in current)
        and _matches(organism, v.organism, v.organism_name)
        and _matches(access, v.access)
    ]
    for column, want in (("tissue", tissue), ("assay", assay)):
        if want and versions:
            terms = _terms(lake, principal, column)
            versions = [v for v in versions if want.strip().lower() in terms.get(v.ref, set())]
    rows = [dataset_row(v, current) for v in versions]
    if with_terms and rows:
        for column in ("tissue", "assay"):
            labels = _labels(lake, principal, column)
            for r in rows:
                r[f"{column}s"] = labels.get(f"{r['id']}@{r['version']}", [])
    return rows


def _labels(lake: Any, principal: Any, column: str) -> dict[str, list[str]]:
    """``dataset ref -> sorted labels of column`` over the cells the principal may see."""
    from aivc.store.sql import query

    res = query(lake, f"SELECT DISTINCT dataset_id, dataset_version, {column} FROM cells_all_versions WHERE {column} IS NOT NULL", principal=principal)
    out: dict[str, list[str]] = {}
    for ds, ver, label in res.rows:
        out.setdefault(f"{ds}@{ver}", []).append(str(label))
    return {k: sorted(v) for k, v in out.items()}


def dataset_detail(lake: Any, ref: str, principal: Any = None) -> dict[str, Any]:
    """A dataset's versions and one version's full record and validation report.

    ``ref`` is ``DATASET`` (the current version) or ``DATASET@VERSION``. Returns
    ``{"id", "current_version", "versions": [rows], "version": record + ref, "report": the
    version's report.json or None}``.

    Raises
    ------
    NotFoundError
        No such dataset or version, or one the principal may not see (the same message).
    """
    from aivc.store.access import visible_datasets
    from aivc.store.artifacts import submission_key
    from aivc.store.catalog import Catalog, parse_ref

    dataset_id, _ = parse_ref(ref)
    if dataset_id not in visible_datasets(lake, principal):
        raise NotFoundError(f"no dataset {dataset_id!r} in this lake; `aivc datasets` lists them", where=ref)
    cat = Catalog(lake)
    v = cat.get(ref)
    versions = cat.versions(dataset_id)
    current = {versions[-1].ref}
    try:
        report = json.loads(lake.storage.read_bytes(f"{submission_key(v.submission_id)}/report.json"))
    except (FileNotFoundError, IsADirectoryError, ValueError):
        report = None
    return {
        "id": dataset_id,
        "current_version": versions[-1].version,
        "versions": [dataset_row(x, current) for x in versions],
        "version": v.to_record() | {"ref": v.ref},
        "report": report,
    }
