"""Select cells by a SQL condition over the lake's cell metadata.

``where`` is a DuckDB boolean expression over the columns of the ``cells_all_versions``
view (``cell_type``, ``tissue``, ``donor_id``, ``n_counts``, ``is_primary_data``, …; see
``aivc sql "DESCRIBE cells_all_versions"``), evaluated in the lake's sandboxed, read-only
SQL connection and restricted to the exact dataset versions chosen, so a training run or
an embedding job pinned to ``ds@1`` filters the cells of ``ds@1`` even after ``ds@2``.

Example
-------
>>> joinids = select_joinids(lake, versions, "cell_type = 'B cell' AND n_counts > 500")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aivc.errors import SqlError, UsageError
from aivc.store.lake import Lake
from aivc.store.sql import query, sql_str


def select_joinids(lake: Lake, versions: list[Any], where: str, *, option: str = "--where") -> np.ndarray:
    """``soma_joinid`` of the cells of ``versions`` for which ``where`` is true (sorted)."""
    if not where.strip():
        raise UsageError(f"{option} is empty; give a condition such as \"cell_type = 'B cell'\"", where=option)
    pairs = " OR ".join(f"(dataset_id = {sql_str(v.dataset_id)} AND dataset_version = {int(v.version)})" for v in versions)
    sql = f"SELECT soma_joinid FROM cells_all_versions WHERE ({pairs}) AND ({where})"
    try:
        res = query(lake, sql)
    except SqlError as exc:
        raise UsageError(f"{option} {where!r} is not a valid condition on cells_all_versions ({exc.message})", where=option) from None
    joinids = np.sort(np.array([r[0] for r in res.rows], dtype=np.int64))
    if joinids.size == 0:
        raise UsageError(f"{option} {where!r} selects no cell of {', '.join(v.ref for v in versions)}", where=option)
    return joinids
