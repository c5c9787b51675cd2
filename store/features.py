"""The feature store: immutable, versioned Universal Representations as Parquet.

Layout::

    <lake>/features/<entity>/<name>/v000001/
        _version.json                      the record (schema_name aivc.embedding_version)
        dataset=<dataset_id>/part-00000.parquet   cell URs, one partition per dataset
        part-00000.parquet                 gene / niche URs (unpartitioned)
        _members/part-00000.parquet        niche URs: each niche's member cells (niche_id, obs_id, distance)

Rows: ``id`` (cell: the lake's ``obs_id``; gene: reference gene id), for cells also
``soma_joinid`` and ``dataset_id``, and ``vector`` as a fixed-size float32 list, readable
by plain pyarrow and DuckDB. A version is written under the lake's staging folder (``catalog/.staging/``) by
:class:`EmbeddingWriter` and published by one folder rename (its record inside): a crash
at any point leaves nothing visible and the same job can simply run again.

Example
-------
>>> import numpy as np, tempfile
>>> from aivc.store.lake import Lake
>>> lake = Lake.init(tempfile.mkdtemp() + "/lake")
>>> with EmbeddingWriter(lake, "gene", "demo", dim=2, source={"kind": "import"}) as w:
...     w.write(["ENSG00000141510"], np.array([[1.0, 0.0]], dtype=np.float32))
>>> w.version.ref
'gene:demo@1'
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from aivc.errors import AivcError, UsageError
from aivc.store.collection import Collection, check_name, sql_name
from aivc.store.collection import parse_ref as parse_collection_ref
from aivc.store.lake import Lake
from aivc.store.lineage import Lineage
from aivc.store.records import dump_record, load_record

Entity = Literal["cell", "gene", "niche"]
ENTITIES: tuple[str, ...] = ("cell", "gene", "niche")
#: entities whose rows are cells of datasets (a niche is its centre cell): stored per dataset, with
#: ``soma_joinid`` and ``dataset_id``, and readable row by row as the datasets are
PER_DATASET: tuple[str, ...] = ("cell", "niche")
RECORD_NAME = "_version.json"
#: rows of one write handled at a time (partitioned entities): bounds the writer's copies
SLICE_ROWS = 16384
RECORD_SCHEMA = "aivc.embedding_version"


class EmbeddingError(AivcError):
    """An embedding version is invalid (bad vectors, duplicate ids, ...)."""

    code = "EMBEDDING_INVALID"


@dataclass(frozen=True)
class EmbeddingVersion:
    """The record of one published, immutable embedding version; ``lineage`` says what it was computed from."""

    entity: str
    name: str
    version: int
    dim: int
    n_rows: int
    dtype: str
    normalization: str
    source: dict[str, Any]
    lineage: Lineage
    created_at: str
    metrics: dict[str, Any] = field(default_factory=dict)
    partitions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.lineage, Lineage):
            raise TypeError(f"EmbeddingVersion.lineage must be a Lineage, not {type(self.lineage).__name__}")

    @property
    def ref(self) -> str:
        return f"{self.entity}:{self.name}@{self.version}"

    @property
    def view_name(self) -> str:
        return f"{self.entity}_{sql_name(self.name)}_v{self.version}"

    @property
    def alias_name(self) -> str:
        return f"{self.entity}_{sql_name(self.name)}"

    def to_record(self) -> dict[str, Any]:
        return dump_record(self, RECORD_SCHEMA)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> EmbeddingVersion:
        return load_record(cls, d, RECORD_SCHEMA, nested={"lineage": Lineage.from_record})


def features(lake: Lake) -> Collection[EmbeddingVersion]:
    """The lake's embedding versions (``<lake>/features/<entity>/<name>/v000001/``)."""
    return Collection(
        lake, folder="features", kinds=ENTITIES, record_name=RECORD_NAME, load=EmbeddingVersion.from_record,
        what="embedding", hint="aivc features list", error=EmbeddingError, form="ENTITY:NAME[@VERSION]", example="cell:pca@1",
    )  # fmt: skip


def parse_ref(ref: str) -> tuple[str, str, int | None]:
    """``"cell:pca@2"`` -> ("cell", "pca", 2); ``"cell:pca"`` / ``"cell:pca@latest"`` -> version None."""
    r = parse_collection_ref(ref, kinds=ENTITIES, what="embedding reference", form="ENTITY:NAME[@VERSION]", example="cell:pca@1")
    return r.kind, r.name, r.version


def version_dir(lake: Lake, entity: str, name: str, version: int) -> Path:
    return features(lake).version_dir(entity, name, version)


def list_versions(lake: Lake, entity: str | None = None, name: str | None = None) -> list[EmbeddingVersion]:
    """Every published embedding version (optionally of one entity / name)."""
    return features(lake).list(entity, name)


def latest_versions(lake: Lake) -> list[EmbeddingVersion]:
    return features(lake).latest()


def get_version(lake: Lake, ref: str) -> EmbeddingVersion:
    return features(lake).get(ref)


def parquet_files(lake: Lake, v: EmbeddingVersion, datasets: set[str] | None = None) -> list[Path]:
    """The Parquet files of a version, optionally only those of some datasets."""
    root = version_dir(lake, v.entity, v.name, v.version)
    files = sorted(f for f in root.rglob("*.parquet") if not any(p.startswith("_") for p in f.relative_to(root).parts[:-1]))  # _members/: not vectors
    if datasets is None or v.entity not in PER_DATASET:
        return files
    keep = {f"dataset={d}" for d in datasets}
    return [f for f in files if f.parent.name in keep]


class EmbeddingWriter:
    """Stream Arrow/NumPy batches into a new embedding version; publish on commit.

    Memory is bounded by one batch: rows go straight to Parquet files (one open file per
    partition, rolled every ``rows_per_file`` rows). ``commit`` checks ids for
    duplicates with DuckDB over the written files, assigns the next version number under
    the lake's write lock and publishes by renaming the staged folder.
    """

    def __init__(
        self,
        lake: Lake,
        entity: str,
        name: str,
        dim: int,
        *,
        source: dict[str, Any],
        lineage: Lineage | None = None,
        normalization: str = "none",
        rows_per_file: int = 1_000_000,
    ) -> None:
        if entity not in ENTITIES:
            raise UsageError(f"entity {entity!r} is not one of {', '.join(ENTITIES)}", where="--entity")
        check_name(name, "embedding name")
        if dim < 1:
            raise EmbeddingError(f"dimension must be >= 1, got {dim}")
        import pyarrow as pa

        self.lake, self.entity, self.name, self.dim = lake, entity, name, int(dim)
        if lineage is not None and not isinstance(lineage, Lineage):
            raise TypeError(f"lineage must be a Lineage (aivc.store.lineage), not {type(lineage).__name__}")
        self.source, self.lineage, self.normalization = source, lineage if lineage is not None else Lineage(), normalization
        self.rows_per_file = rows_per_file
        self.staging = lake.new_staging()
        self._writers: dict[str, Any] = {}
        self._rows_in_file: dict[str, int] = {}
        self._file_no: dict[str, int] = {}
        self.n_rows = 0
        self._id_hashes: list[np.ndarray] = []  # 8 bytes per row: the duplicate check without re-reading the ids
        self.version: EmbeddingVersion | None = None
        fields = [pa.field("id", pa.string(), nullable=False)]
        if entity in PER_DATASET:
            fields += [pa.field("soma_joinid", pa.int64()), pa.field("dataset_id", pa.string())]
        fields.append(pa.field("vector", pa.list_(pa.float32(), self.dim), nullable=False))
        self.schema = pa.schema(fields, metadata={"schema_name": "aivc.embedding_rows", "schema_version": "1"})

    # -- writing -------------------------------------------------------------------
    def _writer(self, partition: str) -> Any:
        import pyarrow.parquet as pq

        if partition not in self._writers or self._rows_in_file[partition] >= self.rows_per_file:
            if partition in self._writers:
                self._writers[partition].close()
            n = self._file_no.get(partition, -1) + 1
            self._file_no[partition] = n
            folder = self.staging / partition if partition else self.staging
            folder.mkdir(parents=True, exist_ok=True)
            # ids are unique: a dictionary of them only costs memory and time before Parquet
            # falls back to plain encoding; dataset_id is one value per partition
            dict_cols = ["dataset_id"] if self.entity in PER_DATASET else False
            self._writers[partition] = pq.ParquetWriter(folder / f"part-{n:05d}.parquet", self.schema, compression="zstd", use_dictionary=dict_cols, data_page_size=65536, write_batch_size=256)
            self._rows_in_file[partition] = 0
        return self._writers[partition]

    def write(
        self,
        ids: Any,
        vectors: np.ndarray,
        *,
        soma_joinids: np.ndarray | None = None,
        dataset_ids: Any = None,
    ) -> None:
        """Append rows. ``vectors`` is ``(n, dim)``; cells also need ``soma_joinids`` and ``dataset_ids``."""
        import pyarrow as pa

        vec = np.ascontiguousarray(vectors, dtype=np.float32)
        ids_arr = pa.array(ids, type=pa.string()) if not isinstance(ids, pa.Array) else ids.cast(pa.string())
        if vec.ndim != 2 or vec.shape[1] != self.dim:
            raise EmbeddingError(f"vectors have shape {vec.shape}, expected (n, {self.dim})", where=f"rows {self.n_rows}..")
        if vec.shape[0] != len(ids_arr):
            raise EmbeddingError(f"{len(ids_arr)} ids but {vec.shape[0]} vectors", where=f"rows {self.n_rows}..")
        bad = ~np.isfinite(vec).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise EmbeddingError(f"vector of id {ids_arr[i].as_py()!r} has NaN or infinite values", where=f"row {self.n_rows + i}")
        if ids_arr.null_count:
            raise EmbeddingError("ids must not be null", where=f"rows {self.n_rows}..")
        # Python's own 64-bit string hash (SipHash; per process, and the writer lives in one)
        self._id_hashes.append(np.fromiter(map(hash, ids_arr.to_pylist()), dtype=np.int64, count=len(ids_arr)))
        flat = pa.array(vec.reshape(-1), type=pa.float32())
        vector = pa.FixedSizeListArray.from_arrays(flat, self.dim)
        if self.entity in PER_DATASET:
            if soma_joinids is None or dataset_ids is None:
                raise UsageError(f"{self.entity} embeddings need soma_joinids and dataset_ids", where="EmbeddingWriter.write")
            ds = pa.array(dataset_ids, type=pa.string()) if not isinstance(dataset_ids, pa.Array) else dataset_ids.cast(pa.string())
            joins = pa.array(np.asarray(soma_joinids, dtype=np.int64))
            if len(ds) != len(ids_arr) or len(joins) != len(ids_arr):
                raise EmbeddingError(f"{len(ids_arr)} ids but {len(joins)} soma_joinids and {len(ds)} dataset_ids", where=f"rows {self.n_rows}..")
            if ds.null_count:
                raise EmbeddingError("dataset_ids must not be null", where=f"rows {self.n_rows}..")
            whole = pa.table({"id": ids_arr, "soma_joinid": joins, "dataset_id": ds, "vector": vector}, schema=self.schema)
            for start in range(0, whole.num_rows, SLICE_ROWS):  # a big batch in slices: any copy is one slice
                table = whole.slice(start, SLICE_ROWS)
                enc = table.column("dataset_id").combine_chunks().dictionary_encode()
                names, codes = enc.dictionary.to_pylist(), enc.indices.to_numpy(zero_copy_only=False)
                if len(names) > 1:  # rows of several datasets: one stable reorder, then a slice per partition
                    order = np.argsort(codes, kind="stable")
                    table, codes = table.take(pa.array(order)), codes[order]
                bounds = np.searchsorted(codes, np.arange(len(names) + 1)) if len(names) > 1 else np.array([0, len(codes)])
                for c in sorted(range(len(names)), key=names.__getitem__):
                    lo, hi = int(bounds[c]), int(bounds[c + 1])
                    self._append(f"dataset={names[c]}", table.slice(lo, hi - lo))
                del table
        else:
            self._append("", pa.table({"id": ids_arr, "vector": vector}, schema=self.schema))
        self.n_rows += vec.shape[0]

    def write_members(self, dataset_id: str, table: Any) -> str:
        """Stage the members of one dataset's niches (``niche_id, obs_id, distance``) under
        ``_members/dataset=<id>/``; they publish with the rows. Returns the file's sha256."""
        import hashlib

        import pyarrow.parquet as pq

        if self.entity != "niche":
            raise UsageError(f"only niche embeddings have members, not {self.entity}", where="EmbeddingWriter.write_members")
        missing = {"niche_id", "obs_id", "distance"} - set(table.column_names)
        if missing:
            raise EmbeddingError(f"a members table needs niche_id, obs_id and distance; it lacks {', '.join(sorted(missing))}", where=f"{MEMBERS}/dataset={dataset_id}")
        folder = self.staging / MEMBERS / f"dataset={dataset_id}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MEMBERS_FILE
        pq.write_table(table.select(["niche_id", "obs_id", "distance"]), path, compression="zstd")
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def _append(self, partition: str, table: Any) -> None:
        w = self._writer(partition)
        w.write_table(table)
        self._rows_in_file[partition] += table.num_rows
        del table
        import pyarrow as pa

        pa.default_memory_pool().release_unused()  # hand the batch's buffers back: memory stays one batch

    def _close_files(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()

    # -- publishing ----------------------------------------------------------------
    def _check_duplicates(self) -> None:
        import duckdb

        files = [str(p) for p in sorted(self.staging.rglob("*.parquet")) if not p.relative_to(self.staging).parts[0].startswith("_")]  # _members/: not rows
        if not files:
            raise EmbeddingError("no rows were written; an embedding version cannot be empty")
        h = np.sort(np.concatenate(self._id_hashes)) if self._id_hashes else np.zeros(0, np.int64)
        self._id_hashes = []
        if not (h[1:] == h[:-1]).any():  # no two ids share a 64-bit hash: no duplicates
            return
        del h  # a repeated hash: a duplicate or (rarely) a collision; DuckDB finds which, exactly
        # bounded memory whatever the version's size: DuckDB spills the GROUP BY to the
        # staging folder past a small limit (one thread: one hash table)
        spill = self.staging / "_duckdb_tmp"
        con = duckdb.connect(config={"memory_limit": "96MB", "threads": 1, "temp_directory": str(spill), "preserve_insertion_order": False})
        try:
            row = con.execute(
                "SELECT id, n, count(*) OVER () FROM (SELECT id, count(*) AS n FROM read_parquet(?) GROUP BY id HAVING count(*) > 1) ORDER BY id LIMIT 1",
                [files],
            ).fetchone()
        finally:
            con.close()
            import shutil

            shutil.rmtree(spill, ignore_errors=True)
        if row:
            raise EmbeddingError(f"{row[2]} ids occur more than once, e.g. {row[0]!r} ({row[1]} times); ids must be unique", where="id")

    def commit(self, metrics: dict[str, Any] | None = None) -> EmbeddingVersion:
        """Publish the version atomically; returns its record."""
        self._close_files()
        self._check_duplicates()
        partitions = tuple(sorted(p.name for p in self.staging.iterdir() if p.is_dir() and not p.name.startswith("_")))

        def make(version: int) -> EmbeddingVersion:
            return EmbeddingVersion(
                entity=self.entity,
                name=self.name,
                version=version,
                dim=self.dim,
                n_rows=self.n_rows,
                dtype="float32",
                normalization=self.normalization,
                source=self.source,
                lineage=self.lineage,
                created_at=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                metrics=metrics or {},
                partitions=partitions,
            )

        record = features(self.lake).publish(self.staging, self.entity, self.name, make, fault="before_embedding_publish", fault_exit=97)
        self.version = record
        return record

    def abort(self) -> None:
        self._close_files()
        self.lake.discard_staging(self.staging)

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise


MEMBERS = "_members"
MEMBERS_FILE = "part-00000.parquet"


def member_files(lake: Lake, v: EmbeddingVersion, datasets: set[str] | None = None) -> list[Path]:
    """The member tables of a niche version (which cells each niche holds), one per dataset
    (``_members/dataset=<id>/``), optionally only those of some datasets."""
    root = version_dir(lake, v.entity, v.name, v.version) / MEMBERS
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else []
    return files if datasets is None else [f for f in files if f.parent.name in {f"dataset={d}" for d in datasets}]


def read_vectors(
    lake: Lake,
    ref: str | EmbeddingVersion,
    *,
    ids: Any = None,
    datasets: set[str] | None = None,
    columns: tuple[str, ...] = ("id", "vector"),
) -> tuple[Any, np.ndarray]:
    """Fetch ``(table_without_vector, vectors)`` of a version: by ``ids``, by ``datasets``, or all.

    Rows come back in storage order (filter semantics, not the order of ``ids``).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pds

    v = ref if isinstance(ref, EmbeddingVersion) else get_version(lake, ref)
    files = parquet_files(lake, v, datasets)
    if not files:
        return pa.table({"id": pa.array([], pa.string())}), np.zeros((0, v.dim), dtype=np.float32)
    dset = pds.dataset([str(f) for f in files], format="parquet")
    flt = pc.field("id").isin(pa.array(ids, type=pa.string())) if ids is not None else None
    table = dset.to_table(columns=list(dict.fromkeys([*columns, "vector"])), filter=flt)
    vec = table.column("vector").combine_chunks()
    mat = vec.values.to_numpy(zero_copy_only=False).reshape(-1, v.dim) if len(vec) else np.zeros((0, v.dim), np.float32)
    return table.drop_columns(["vector"]), mat


# -- gene URs as tokens ------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneTable:
    """Gene URs of some genes from one gene embedding version (the tokens of a
    ``gene_tokens`` model such as ``cell-transformer``): ``vectors[i]`` is the UR of
    ``gene_ids[i]``; ``ref`` is the exact version read."""

    ref: str
    gene_ids: tuple[str, ...]
    vectors: Any  # numpy float32 [len(gene_ids), dim]
    dim: int


def gene_table(lake: Lake, ref: str, gene_ids: Sequence[str], *, dim: int | None = None) -> GeneTable:
    """The URs in ``ref`` of those ``gene_ids`` that have one, in the order given.

    ``ref`` must name a gene embedding (``gene:NAME[@VERSION]``; no version: the latest,
    returned exactly in ``GeneTable.ref``); ``dim``, when given, must be its width.

    Examples
    --------
    >>> t = gene_table(lake, "gene:coexpr@1", plan.gene_ids, dim=32)  # doctest: +SKIP
    >>> model.set_gene_table(torch.from_numpy(t.vectors))  # doctest: +SKIP
    """
    entity = parse_ref(ref)[0]
    if entity != "gene":
        raise UsageError(f"gene_ur {ref!r} is a {entity} embedding; gene tokens need a gene embedding, e.g. gene:coexpr@1", where="gene_ur")
    version = get_version(lake, ref)
    if dim is not None and version.dim != dim:
        raise UsageError(f"gene_ur {version.ref} has {version.dim}-dimensional vectors but the model takes {dim}; use the gene embedding it was trained with", where="gene_ur")
    table, vectors = read_vectors(lake, version, ids=list(gene_ids))
    pos = {g: i for i, g in enumerate(table.column("id").to_pylist())}
    keep = tuple(g for g in gene_ids if g in pos)
    return GeneTable(ref=version.ref, gene_ids=keep, vectors=vectors[[pos[g] for g in keep]].reshape(len(keep), version.dim), dim=version.dim)

