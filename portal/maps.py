"""2-D maps of embedding versions: a UMAP computed once per version and cached in the lake.

The cache is ``<lake>/.portal/maps/<ref-safe>.parquet`` (columns ``id``, ``dataset_id``, ``x``,
``y``), written to a temporary file and renamed (atomic). The map holds every cell of the
version; :func:`visible_map` keeps only the datasets the principal may see, so a hidden
dataset's cells never reach a page.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()


def cache_path(lake: Any, ref: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", ref)
    return Path(lake.root) / ".portal" / "maps" / f"{safe}.parquet"


def _compute(lake: Any, v: Any) -> Any:
    import numpy as np
    import pyarrow as pa

    from aivc.store.features import read_vectors

    try:
        table, mat = read_vectors(lake, v, columns=("id", "dataset_id"))
    except Exception:  # noqa: BLE001 - a version without a dataset_id column
        table, mat = read_vectors(lake, v)
    n = mat.shape[0]
    if n >= 4:
        import umap

        xy = umap.UMAP(n_neighbors=min(15, n - 1), n_components=2, random_state=0, init="random" if n < 50 else "spectral").fit_transform(np.asarray(mat, np.float32))
    else:
        xy = np.zeros((n, 2), np.float32)
    ds = table.column("dataset_id") if "dataset_id" in table.column_names else pa.array([""] * n)
    return pa.table({"id": table.column("id"), "dataset_id": ds, "x": pa.array(xy[:, 0].astype(np.float32)), "y": pa.array(xy[:, 1].astype(np.float32))})


def map_table(lake: Any, ref: str) -> Any:
    """The cached map of ``ref`` (computed and written the first time)."""
    import pyarrow.parquet as pq

    from aivc.store.features import get_version

    v = get_version(lake, ref)
    path = cache_path(lake, v.ref)
    with _LOCK:
        if not path.exists():
            table = _compute(lake, v)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            pq.write_table(table, tmp)
            os.replace(tmp, path)
    return pq.read_table(path)


def visible_map(lake: Any, ref: str, visible: set[str]) -> Any:
    """The map rows of the datasets in ``visible`` only."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = map_table(lake, ref)
    return table.filter(pc.is_in(table["dataset_id"], value_set=pa.array(sorted(visible), pa.string())))
