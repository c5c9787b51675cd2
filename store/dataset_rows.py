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


_TERM_COLUMNS = ("tissue", "assay")


def _terms(lake: Any, principal: Any) -> dict[str, dict[str, dict[str, str]]]:
    """``dataset ref -> column -> {term id or label: label}`` of the tissue and assay of the
    cells the principal may see: one query for the filters and the listed labels alike."""
    from aivc.store.sql import query

    cols = ", ".join(f"{c}, {c}_ontology_term_id" for c in _TERM_COLUMNS)
    res = query(lake, f"SELECT DISTINCT dataset_id, dataset_version, {cols} FROM cells_all_versions", principal=principal)
    out: dict[str, dict[str, dict[str, str]]] = {}
    for ds, ver, *values in res.rows:
        entry = out.setdefault(f"{ds}@{ver}", {c: {} for c in _TERM_COLUMNS})
        for i, column in enumerate(_TERM_COLUMNS):
            label, term = values[2 * i], values[2 * i + 1]
            for key in (label, term):
                if key is not None:
                    entry[column][str(key).lower()] = "" if label is None else str(label)
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
    wanted = {c: w.strip().lower() for c, w in (("tissue", tissue), ("assay", assay)) if w}
    terms = _terms(lake, principal) if versions and (wanted or with_terms) else {}
    empty: dict[str, dict[str, str]] = {c: {} for c in _TERM_COLUMNS}
    versions = [v for v in versions if all(w in terms.get(v.ref, empty)[c] for c, w in wanted.items())]
    rows = [dataset_row(v, current) for v in versions]
    if with_terms:
        for r, v in zip(rows, versions, strict=True):
            for c in _TERM_COLUMNS:
                r[f"{c}s"] = sorted({label for label in terms.get(v.ref, empty)[c].values() if label})
    return rows


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
