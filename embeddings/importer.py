"""Import external embeddings (e.g. protein language model gene URs) into the feature store.

Accepted files:

- Parquet with an id column (``id``, ``obs_id`` or ``gene_id``) and either one list
  column ``vector`` or one numeric column per dimension;
- CSV / TSV (``.csv``, ``.tsv``, ``.txt``, optionally gzipped) whose first column is the
  id and the other columns the dimensions.

Validation is strict and streaming: every id must exist in the lake (cells: a committed
``obs_id``; genes: a gene some committed dataset measured), one dimension for all rows,
no NaN/inf, no duplicate ids. Any problem stops the import with a one-line error naming
the row and id; nothing is published.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


import numpy as np

from aivc.errors import AivcError, UsageError
from aivc.progress import NullProgress, Progress
from aivc.store.catalog import Catalog
from aivc.store.lake import Lake
from aivc.store.lineage import Lineage

from aivc.store.features import EmbeddingVersion, EmbeddingWriter

ID_COLUMNS = ("id", "obs_id", "gene_id", "cell_id")


class ImportError_(AivcError):  # noqa: N801 - avoid shadowing the builtin
    code = "IMPORT_INVALID"


def _batches(path: Path, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    import pyarrow as pa

    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        cols = pf.schema_arrow.names
        id_col = next((c for c in ID_COLUMNS if c in cols), None)
        if id_col is None:
            raise ImportError_(f"no id column: expected one of {list(ID_COLUMNS)}, found {cols[:10]}", where=str(path), code="IMPORT_NO_ID_COLUMN")
        for batch in pf.iter_batches(batch_size=batch_rows):
            ids = batch.column(id_col).to_numpy(zero_copy_only=False).astype(str)
            if "vector" in batch.schema.names:
                vec = batch.column("vector")
                if pa.types.is_fixed_size_list(vec.type):
                    mat = vec.values.to_numpy(zero_copy_only=False).reshape(len(vec), vec.type.list_size)
                else:
                    lens = vec.value_lengths().to_numpy(zero_copy_only=False)
                    if len(lens) and (lens != lens[0]).any():
                        i = int(np.flatnonzero(lens != lens[0])[0])
                        raise ImportError_(f"vector of id {ids[i]!r} has {lens[i]} values, the first has {lens[0]}", where=f"{path} row {i}", code="IMPORT_DIMENSION_MISMATCH")
                    mat = vec.flatten().to_numpy(zero_copy_only=False).reshape(len(vec), int(lens[0]) if len(lens) else 0)
            else:
                num = [c for c in batch.schema.names if c != id_col]
                mat = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False) for c in num]) if num else np.zeros((len(ids), 0))
            yield ids, np.asarray(mat, dtype=np.float64)
    elif name.endswith((".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")):
        import pyarrow.csv as pcsv

        delim = "\t" if ".tsv" in name or ".txt" in name else ","
        reader = pcsv.open_csv(path, parse_options=pcsv.ParseOptions(delimiter=delim), read_options=pcsv.ReadOptions(block_size=1 << 24))
        for batch in reader:
            cols = batch.schema.names
            ids = batch.column(0).to_numpy(zero_copy_only=False).astype(str)
            try:
                mat = np.column_stack([batch.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False) for c in cols[1:]])
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ImportError_(f"non-numeric value in a vector column ({str(exc).splitlines()[0]})", where=str(path), code="IMPORT_NOT_NUMERIC") from None
            yield ids, mat
    else:
        raise UsageError(f"unsupported file type {path.suffix!r}: use .parquet, .csv or .tsv", where=str(path))


def _lake_ids(lake: Lake, entity: str) -> tuple[dict[str, tuple[int, str]] | set[str], str]:
    from aivc.store.read import version_cells, version_features

    versions = Catalog(lake).all_versions()
    if entity == "cell":
        known: dict[str, tuple[int, str]] = {}
        for v in versions:
            t = version_cells(lake, v, ["obs_id", "soma_joinid", "dataset_id"])
            known.update(zip(t["obs_id"], zip(t["soma_joinid"].tolist(), t["dataset_id"], strict=True), strict=True))
        return known, "committed cell (obs_id)"
    if entity == "gene":
        genes: set[str] = set()
        for v in versions:
            genes.update(version_features(lake, v, ["gene_id"])["gene_id"].tolist())
        return genes, "gene measured by a committed dataset"
    raise UsageError(f"importing {entity} embeddings is not supported yet (cell or gene)", where="--entity")


def import_embeddings(
    lake: Lake,
    path: str | Path,
    *,
    entity: str,
    name: str,
    batch_rows: int = 65536,
    progress: Progress | None = None,
) -> EmbeddingVersion:
    """Validate ``path`` and publish it as a new version of ``entity:name``."""
    import hashlib

    progress = progress or NullProgress()
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"embedding file not found: {p}", where=str(p))
    known, what = _lake_ids(lake, entity)
    if not known:
        raise ImportError_(f"the lake has no {what}s yet; submit datasets first", where=str(p), code="IMPORT_UNKNOWN_ID")
    digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.stat().st_size < 2**31 else None
    writer: EmbeddingWriter | None = None
    seen: set[str] = set()
    row = 0
    progress.phase(f"importing {p.name}")
    try:
        for ids, mat in _batches(p, batch_rows):
            if mat.ndim != 2 or mat.shape[1] == 0:
                raise ImportError_("no vector columns found", where=str(p), code="IMPORT_NO_VECTORS")
            if writer is None:
                refs = tuple(v.ref for v in Catalog(lake).current())
                # an empty lake is recorded as "datasets": [], as it always was
                lineage = Lineage(datasets=refs, extra={"imported_from": str(p.resolve()), "sha256": digest, **({} if refs else {"datasets": []})})
                writer = EmbeddingWriter(lake, entity, name, mat.shape[1], source={"kind": "import", "file": p.name, "sha256": digest}, lineage=lineage)
            elif mat.shape[1] != writer.dim:
                raise ImportError_(f"rows have {mat.shape[1]} dimensions, earlier rows {writer.dim}", where=f"{p} row {row}", code="IMPORT_DIMENSION_MISMATCH")
            bad = ~np.isfinite(mat).all(axis=1)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ImportError_(f"vector of id {ids[i]!r} has NaN or infinite values ({int(bad.sum())} rows in this batch)", where=f"{p} row {row + i}", code="IMPORT_NOT_FINITE")
            for i, x in enumerate(ids):
                if x not in known:
                    raise ImportError_(f"id {x!r} is not a {what} in this lake", where=f"{p} row {row + i}", code="IMPORT_UNKNOWN_ID")
                if x in seen:
                    raise ImportError_(f"id {x!r} occurs more than once", where=f"{p} row {row + i}", code="IMPORT_DUPLICATE_ID")
                seen.add(x)
            if entity == "cell":
                assert isinstance(known, dict)
                meta = [known[x] for x in ids]
                writer.write(ids, mat, soma_joinids=np.array([m[0] for m in meta], np.int64), dataset_ids=np.array([m[1] for m in meta], dtype=object))
            else:
                writer.write(ids, mat)
            row += len(ids)
            progress.advance(len(ids))
        if writer is None:
            raise ImportError_("the file has no rows", where=str(p), code="IMPORT_EMPTY")
        return writer.commit(metrics={"n_rows": row})
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
