"""Apply a registered model to the lake with Ray Data and publish its cell URs.

``embed_model(lake, "cell-vae@1")`` is the job behind ``aivc embed MODEL@VERSION``:

1. **Cells**: the current versions of the model's organism (or the ``DATASET[@VERSION]``
   named), read at the lake's committed high-water mark.
2. **Genes, explicitly**: a fixed-input model (``cell-vae``) reads its registered
   ``gene_ids`` in order. For each dataset, every model gene the dataset did not measure
   is *masked* (the model sees it as missing, not as zero); when a dataset measured fewer
   than ``min_gene_overlap`` of the model's genes the job stops with ``GENE_OVERLAP``
   naming the dataset, the count and some missing genes. A gene-token model
   (``cell-transformer``) reads the genes each dataset measured that have a molecular UR
   in the model's gene UR version, so genes it never saw during training still count;
   the same overlap rule applies to the fraction of a dataset's genes that have a UR.
   The overlap per dataset is recorded in the version's lineage.
   Data of another species (named with ``--datasets``) is mapped through the shipped
   one-to-one ortholog table (:func:`aivc.store.reference.orthologs`): each measured gene
   stands for its ortholog among the model's genes; genes without one are not used.
3. **Batches**: a dataset the model was trained on keeps its batch code; any other
   dataset is encoded as the average of the training batches (recorded as ``average``).
4. **Engine** (:func:`choose_engine`): below :data:`AUTO_LOCAL_MAX_CELLS` cells, and with
   no ``--ray-address`` or ``--actors``, the job runs in this process (``local``: the
   model loaded once, one background thread reading the next chunk while the current one
   is embedded). Otherwise, **Ray Data**: chunk descriptors become a dataset; ``map_batches`` with
   ``compute=ActorPoolStrategy(size=actors)`` runs an :class:`_Embedder` actor that gets
   the driver's plan (cells, columns, masks, batch codes) as a constructor argument, loads
   the model once, opens the SOMA experiment once (:class:`_ChunkReader`) and, per chunk,
   reads the counts straight into a dense matrix, builds the masked inputs and calls
   ``module.embed``. The driver streams the results (``preserve_order``) into the
   feature store's :class:`~aivc.store.features.EmbeddingWriter`, so memory is bounded by
   the chunks in flight, and publishes ``cell:<name>@N`` with lineage to the model.
   The driver holds the cells' joinids and dataset positions (16 bytes a cell), never
   the lake's cell table: obs_ids are read one dataset version at a time as results
   arrive (:class:`CellIds`).

A multimodal model (``cell-multimodal-vae``) also reads, for each cell, every other
measurement it was trained on that the cell's dataset holds (ADT, ATAC; features aligned to
the model's, :mod:`aivc.embeddings.model_measurements`); a dataset without one (RNA only)
has it flagged absent, so the model embeds its cells from RNA alone, never from zeros. Which
measurements each dataset contributed is recorded in the version's lineage and metrics
(``measurements``).

The vectors equal ``load_model(...)[0].embed(batch)`` applied directly to the same cells
(``tests/embeddings/test_model_job.py`` checks this).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from aivc.errors import UsageError
from aivc.progress import NullProgress, Progress
from aivc.ray_local import pick_engine
from aivc.store.catalog import Catalog, DatasetVersion
from aivc.store.collection import sql_name
from aivc.store.lake import Lake
from aivc.store.lineage import Lineage
from aivc.store.read import LakeQuery, Options, select_versions, version_features

GENE_OVERLAP = "GENE_OVERLAP"


@dataclass(frozen=True)
class ApplyPlan:
    """Everything an embedding actor needs, in plain arrays (cheap to ship to Ray)."""

    soma_uri: str
    high_water: int
    joinids: np.ndarray  # cells, int64
    batch: np.ndarray  # per cell: batch code (-1: not a training batch)
    group: np.ndarray  # per cell: index into masks
    masks: np.ndarray  # per dataset: bool over columns
    col_joinids: np.ndarray  # per column: SOMA var joinid, -1 when no chosen dataset measured it
    gene_ids: tuple[str, ...]  # per column
    gene_table: np.ndarray | None  # gene-token models: per column gene UR
    measurements: tuple[Any, ...] = ()  # multimodal models: MeasurementInputs besides RNA


def _select(lake: Lake, organism: str | None, datasets: list[str] | None) -> list[DatasetVersion]:
    options = Options(organism="--datasets", organism_fix="embed one organism at a time (--datasets)", datasets="--datasets", purpose="embed")
    return select_versions(lake, datasets=datasets, organism=organism, options=options)


def _overlap_error(v: DatasetVersion, have: int, of: int, missing: list[str], what: str, min_overlap: float) -> UsageError:
    some = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return UsageError(
        f"dataset {v.ref} measured {have} of the {of} {what} ({have / max(of, 1):.0%} < --min-gene-overlap {min_overlap:.0%}); missing e.g. {some}",
        where=v.ref,
        code=GENE_OVERLAP,
    )


def build_apply_plan(
    lake: Lake, rec: Any, versions: list[DatasetVersion], *, min_gene_overlap: float, gene_tokens: bool, where: str | None = None
) -> tuple[ApplyPlan, CellIds, dict[str, Any]]:
    """Cells, columns, masks and batch codes for applying ``rec`` to ``versions``.

    Returns the plan, the cells' ids (:class:`CellIds`: ``obs_id`` and ``dataset_id`` by
    plan position, read a dataset version at a time) and lineage notes (per-dataset gene overlap and batch encoding).
    """
    cat = Catalog(lake)
    org = versions[0].organism_name
    hw = cat.high_water(org)
    assert hw is not None
    measured = {v.dataset_id: version_features(lake, v, ["gene_id", "soma_joinid"]) for v in versions}
    model_org = rec.lineage.organism or org
    overlap_notes: dict[str, Any] = {}
    if model_org != org:
        # another species: each measured gene stands for its one-to-one ortholog in the
        # model's species (genes without one are not used); the ids below are the model's
        from aivc.errors import NotFoundError
        from aivc.store.reference import orthologs

        try:
            orth = orthologs(org, model_org)
        except NotFoundError:
            raise UsageError(f"model {rec.ref} was trained on {model_org}; no ortholog table maps {org} genes to it", where="--datasets") from None
        to_model = dict(zip(orth["from_gene_id"], orth["to_gene_id"], strict=True))
        for ds, g in measured.items():
            g = g[g["gene_id"].isin(to_model)].copy()
            g["gene_id"] = g["gene_id"].map(to_model)
            measured[ds] = g
        overlap_notes["orthologs"] = {"from": org, "to": model_org, "table": f"schemas/orthologs ({org} -> {model_org}, one-to-one)", "pairs": len(orth)}
    joinid_of: dict[str, int] = {}
    for g in measured.values():
        joinid_of.update(zip(g["gene_id"].astype(str), g["soma_joinid"].astype(np.int64), strict=True))
    overlap: dict[str, Any] = {}
    table: np.ndarray | None = None
    if gene_tokens:
        from aivc.store.features import gene_table

        gene_ur = rec.lineage.gene_ur
        if not gene_ur:
            raise UsageError(f"model {rec.ref} records no gene UR version (lineage.gene_ur); retrain it", where=rec.ref)
        union = sorted(joinid_of, key=joinid_of.__getitem__)
        gt = gene_table(lake, gene_ur, union, dim=rec.init.get("gene_dim"))
        gene_ids = gt.gene_ids
        table = np.ascontiguousarray(gt.vectors, dtype=np.float32)
        for v in versions:
            mine = set(measured[v.dataset_id]["gene_id"].astype(str))
            n_ur = len(mine & set(gene_ids))
            overlap[v.dataset_id] = {"genes_used": n_ur, "genes_measured": len(mine), "fraction": round(n_ur / max(len(mine), 1), 4)}
            if n_ur < min_gene_overlap * len(mine) or n_ur == 0:
                raise _overlap_error(v, n_ur, len(mine), sorted(mine - set(gene_ids)), f"genes it measured that have a molecular UR in {gene_ur}; genes", min_gene_overlap)
    else:
        gene_ids = tuple(rec.gene_ids)
        for v in versions:
            mine = set(measured[v.dataset_id]["gene_id"].astype(str))
            missing = [g for g in gene_ids if g not in mine]
            n = len(gene_ids) - len(missing)
            overlap[v.dataset_id] = {"genes_used": n, "genes_model": len(gene_ids), "fraction": round(n / max(len(gene_ids), 1), 4), "masked": len(missing)}
            if n < min_gene_overlap * len(gene_ids) or n == 0:
                raise _overlap_error(v, n, len(gene_ids), missing, f"genes of model {rec.ref}", min_gene_overlap)
    col_joinids = np.array([joinid_of.get(g, -1) for g in gene_ids], dtype=np.int64)
    masks = np.stack([np.isin(col_joinids, measured[v.dataset_id]["soma_joinid"].to_numpy(np.int64)) & (col_joinids >= 0) for v in versions])
    # the cells' joinids and dataset positions only (16 bytes a cell): their obs_ids are
    # looked up chunk by chunk when the results are written (CellIds)
    joinids, group = LakeQuery.of(lake, versions, high_water=int(hw)).obs_joinids(where=where)
    order = [v.dataset_id for v in versions]
    trained = list(rec.encodings.get("batch", []))
    code_of = {ds: (trained.index(ds) if ds in trained else -1) for ds in order}
    batch = np.array([code_of[ds] for ds in order], dtype=np.int64)[group]
    notes = {**overlap_notes, "gene_overlap": overlap, "batch_encoding": {ds: ("own" if code_of[ds] >= 0 else "average") for ds in order}}
    extra: tuple[Any, ...] = ()
    if any(k.startswith("features:") for k in rec.encodings):  # a multimodal model: every other measurement a dataset holds
        from aivc.embeddings.model_measurements import plan_measurements

        extra, mnotes = plan_measurements(lake, rec, versions, min_overlap=min_gene_overlap)
        notes.update(mnotes)
    plan = ApplyPlan(
        soma_uri=lake.soma_uri(org),
        high_water=int(hw),
        joinids=joinids,
        batch=batch,
        group=group,
        masks=masks,
        col_joinids=col_joinids,
        gene_ids=gene_ids,
        gene_table=table,
        measurements=extra,
    )
    return plan, CellIds(lake, versions, plan), notes


class CellIds:
    """``obs_id`` and ``dataset_id`` of a plan's cells by position, for positions asked in
    plan order (as the job's results arrive): one dataset version's cell table is read
    when its first cell comes and dropped once the results have passed its joinids, so
    the driver never holds the lake's cell table."""

    def __init__(self, lake: Lake, versions: list[DatasetVersion], plan: ApplyPlan) -> None:
        self.lake, self.versions, self.plan = lake, versions, plan
        self.dataset_ids = np.array([v.dataset_id for v in versions], dtype=object)
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.plan.joinids)

    def _table(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        if g not in self._tables:
            from aivc.store.read import version_cells

            t = version_cells(self.lake, self.versions[g], ["obs_id", "soma_joinid"]).sort_values("soma_joinid", kind="stable")
            self._tables[g] = (t["soma_joinid"].to_numpy(np.int64), t["obs_id"].to_numpy(dtype=object))
        return self._tables[g]

    def __call__(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(obs_ids, dataset_ids) of the cells at plan positions ``pos``."""
        joins, groups = self.plan.joinids[pos], self.plan.group[pos]
        ids = np.empty(len(pos), dtype=object)
        for g in np.unique(groups).tolist():
            m = groups == g
            cj, obs = self._table(g)
            ids[m] = obs[np.searchsorted(cj, joins[m])]
        if len(joins):  # results come in plan (joinid) order: a version wholly behind them is done
            low = int(joins.min())
            for g in [g for g in self._tables if self.versions[g].obs_joinid_max < low]:
                del self._tables[g]
        return ids, self.dataset_ids[groups]


class _ChunkReader:
    """Counts of ``plan``'s cells over its columns (0 where no chosen dataset measured the
    gene), through one :class:`~aivc.store.soma_io.DenseReader` kept open (and one per other
    measurement of a multimodal model)."""

    def __init__(self, plan: ApplyPlan) -> None:
        from aivc.store.soma_io import DenseReader

        self.plan = plan
        self.valid = np.flatnonzero(plan.col_joinids >= 0)
        self.reader = DenseReader(plan.soma_uri, plan.high_water, plan.col_joinids[self.valid])
        self.others: list[Any] = []
        if plan.measurements:
            from aivc.embeddings.model_measurements import MeasurementReader

            self.others = [MeasurementReader(plan.soma_uri, plan.high_water, m) for m in plan.measurements]

    def close(self) -> None:
        self.reader.close()
        for r in self.others:
            r.close()

    def measurements(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        """``x_M``, ``mask_M``, ``present_M`` of cells ``lo:hi`` for every other measurement."""
        out: dict[str, np.ndarray] = {}
        for r in self.others:
            out.update(r.read(self.plan.joinids[lo:hi], self.plan.group[lo:hi]))
        return out

    def counts(self, lo: int, hi: int) -> np.ndarray:
        """Dense float32 counts of cells ``lo:hi`` over the plan's columns."""
        x = self.reader.read(self.plan.joinids[lo:hi])
        if len(self.valid) == len(self.plan.col_joinids):
            return x
        full = np.zeros((hi - lo, len(self.plan.col_joinids)), dtype=np.float32)
        full[:, self.valid] = x
        return full


def read_inputs(plan: ApplyPlan, lo: int, hi: int, reader: _ChunkReader | None = None) -> dict[str, Any]:
    """The model inputs of cells ``lo:hi`` of ``plan`` (counts of unmeasured genes are 0 and masked).

    ``reader`` (an open :class:`_ChunkReader` of ``plan``) is reused across chunks; without
    one, a reader is opened for this call.
    """
    import torch

    own = reader is None
    rd = _ChunkReader(plan) if reader is None else reader
    try:
        x = rd.counts(lo, hi)
        others = rd.measurements(lo, hi)
    finally:
        if own:
            rd.close()
    mask = plan.masks[plan.group[lo:hi]]
    x *= mask
    xt = torch.from_numpy(x)
    out = {"x": xt, "mask": torch.from_numpy(mask), "batch": torch.from_numpy(plan.batch[lo:hi]), "library": xt.sum(dim=1, keepdim=True)}
    return out | {k: torch.from_numpy(v) for k, v in others.items()}


def embed_inputs(module: Any, inputs: dict[str, Any], batch_size: int) -> np.ndarray:
    """``module.embed`` over ``inputs`` in batches of ``batch_size`` rows, as float32."""
    n = int(inputs["x"].shape[0])
    out = []
    for b0 in range(0, n, batch_size):
        part = {k: v[b0 : b0 + batch_size] for k, v in inputs.items()}
        out.append(module.embed(part).numpy().astype(np.float32, copy=False))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class _Embedder:
    """Ray Data actor: loads the model once, embeds chunk descriptors ``{lo, hi}`` of ``plan``."""

    def __init__(self, plan: ApplyPlan, lake_root: str, model_ref: str, batch_size: int, threads: int) -> None:
        import torch

        from aivc.training.registry import load_model

        torch.set_num_threads(max(1, threads))
        # the plan comes built by the driver (Ray Data keeps constructor arguments in the
        # object store either way), a gene-token model's gene table included; the actor
        # loads the model and opens the experiment once
        self.module, _ = load_model(Lake.open(lake_root), model_ref, gene_vectors=plan.gene_table)
        self.plan, self.batch_size = plan, batch_size
        self.reader = _ChunkReader(plan)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pos, vecs = [], []
        for lo, hi in zip(batch["lo"].tolist(), batch["hi"].tolist(), strict=True):
            vecs.append(embed_inputs(self.module, read_inputs(self.plan, lo, hi, self.reader), self.batch_size))
            pos.append(np.arange(lo, hi, dtype=np.int64))
        return {"pos": np.concatenate(pos), "vector": np.concatenate(vecs)}


#: a chunk's dense float32 counts are at most this many bytes when ``chunk_rows`` is not given
CHUNK_BYTES = 128 * 1024**2
MAX_CHUNK_ROWS = 8192


def auto_chunk_rows(n_columns: int, batch_size: int) -> int:
    """Cells per chunk: :data:`MAX_CHUNK_ROWS`, fewer when their dense counts over
    ``n_columns`` would pass :data:`CHUNK_BYTES` (a whole multiple of ``batch_size``, at
    least one batch), so a chunk's memory does not grow with the model's gene count.

    >>> auto_chunk_rows(2000, 1024), auto_chunk_rows(20000, 1024), auto_chunk_rows(20000, 256)
    (8192, 1024, 1536)
    """
    fit = CHUNK_BYTES // (4 * max(1, n_columns))
    rows = min(MAX_CHUNK_ROWS, fit)
    return max(batch_size, rows - rows % batch_size) if rows >= batch_size else max(1, min(batch_size, MAX_CHUNK_ROWS))


Engine = Literal["auto", "ray", "local"]
#: ``engine="auto"`` embeds fewer cells than this in-process (see :func:`choose_engine`).
AUTO_LOCAL_MAX_CELLS = 1_000_000


def choose_engine(engine: str, n_cells: int, *, actors: int | None = None, ray_address: str | None = None) -> tuple[Literal["ray", "local"], str]:
    """The engine a job runs on and why: an explicit ``engine`` wins; ``auto`` picks Ray for
    a cluster address (``--ray-address`` always means Ray), an actor count, or at least
    :data:`AUTO_LOCAL_MAX_CELLS` cells, else the local engine.

    Why: a Ray job pays a fixed start-up per actor (a fresh process importing Ray Data,
    torch and tiledbsoma, then loading the model: ~4-6 s on the 2-CPU development machine)
    before its first chunk, while the in-process loop embeds ~15-40k cells/s there
    (``benchmarks/bench_embed.py``): below a million cells that fixed cost is a large
    part of the job, above it Ray can spread reading and the forward passes over more
    processes or nodes.

    >>> choose_engine("auto", 100_000)
    ('local', 'auto: 100000 cells < 1000000')
    >>> choose_engine("auto", 100_000, ray_address="10.0.0.1:6379")
    ('ray', 'auto: --ray-address 10.0.0.1:6379 names a Ray cluster')
    >>> choose_engine("ray", 10)
    ('ray', '--engine ray')
    """
    return pick_engine(engine, n_cells, local_max=AUTO_LOCAL_MAX_CELLS, actors=actors, ray_address=ray_address)


def _run_local(lake: Lake, rec: Any, plan: ApplyPlan, chunks: list[tuple[int, int]], batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The local engine: the model loaded once in this process, chunks read by one
    background thread one chunk ahead (reads overlap the forward passes; two chunks in
    memory at most), results in plan order."""
    from concurrent.futures import ThreadPoolExecutor

    from aivc.training.registry import load_model

    module, _ = load_model(lake, rec.ref, gene_vectors=plan.gene_table)
    reader = _ChunkReader(plan)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="aivc-embed-read") as pool:
            ahead = pool.submit(read_inputs, plan, *chunks[0], reader) if chunks else None
            for i, (lo, hi) in enumerate(chunks):
                assert ahead is not None
                inputs = ahead.result()
                ahead = pool.submit(read_inputs, plan, *chunks[i + 1], reader) if i + 1 < len(chunks) else None
                vec = embed_inputs(module, inputs, batch_size)
                del inputs
                yield np.arange(lo, hi, dtype=np.int64), vec
    finally:
        reader.close()


def _run_ray(
    lake: Lake, rec: Any, plan: ApplyPlan, chunks: list[tuple[int, int]], batch_size: int, n_actors: int, threads: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The Ray engine: chunk descriptors through ``map_batches`` on an actor pool of
    :class:`_Embedder`; results streamed back in plan order (``preserve_order``)."""
    import ray

    from aivc.ray_local import data_context

    with data_context(preserve_order=True):
        items = ray.data.from_items([{"lo": lo, "hi": hi} for lo, hi in chunks], override_num_blocks=max(1, len(chunks)))
        out = items.map_batches(
            _Embedder,
            fn_constructor_kwargs={"plan": plan, "lake_root": lake.uri, "model_ref": rec.ref, "batch_size": batch_size, "threads": threads},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=1,
        )
        for b in out.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            vec = np.asarray(b["vector"], dtype=np.float32)
            yield b["pos"], (np.stack(list(vec)) if vec.ndim == 1 else vec)


def embed_model(
    lake: Lake,
    model_ref: str,
    *,
    datasets: list[str] | None = None,
    name: str | None = None,
    batch_size: int = 1024,
    chunk_rows: int | None = None,
    actors: int | None = None,
    ray_address: str | None = None,
    engine: str = "auto",
    min_gene_overlap: float = 0.5,
    where: str | None = None,
    progress: Progress | None = None,
) -> Any:
    """Embed the lake's cells with a registered model and publish ``cell:<name>@N``.

    ``name`` defaults to the model's name with ``-`` as ``_`` (``cell-vae`` ->
    ``cell:cell_vae``). ``chunk_rows`` (cells read at a time) defaults to
    :func:`auto_chunk_rows`. ``engine``: ``auto`` (:func:`choose_engine`), ``ray`` (Ray Data
    actor pool; ``actors`` defaults to the CPUs Ray offers, at most the number of
    chunks; ``ray_address`` connects to a cluster) or ``local`` (in this process, the
    same reader and model code). Both give the same vectors. The version's metrics
    record which engine ran and why. Returns the published
    :class:`~aivc.store.features.EmbeddingVersion`.

    Example
    -------
    >>> v = embed_model(lake, "cell-vae@1", datasets=["pbmc68k-part2"])  # doctest: +SKIP
    >>> v.ref, v.lineage.model  # doctest: +SKIP
    ('cell:cell_vae@1', 'cell-vae@1')
    """
    from aivc.store.features import EmbeddingWriter
    from aivc.training.models import model_class
    from aivc.training.registry import get_model

    progress = progress or NullProgress()
    for opt, value in (("--batch-size", batch_size), ("--chunk-rows", 1 if chunk_rows is None else chunk_rows)):
        if value < 1:
            raise UsageError(f"{opt} must be at least 1, got {value}", where=opt)
    if actors is not None and actors < 1:
        raise UsageError(f"--actors must be at least 1, got {actors}", where="--actors")
    if not 0.0 < min_gene_overlap <= 1.0:
        raise UsageError(f"--min-gene-overlap must be in (0, 1], got {min_gene_overlap}", where="--min-gene-overlap")
    choose_engine(engine, 0, actors=actors, ray_address=ray_address)  # a bad --engine fails before any work
    rec = get_model(lake, model_ref)
    if rec.model_type == "niche-gnn":  # niches, not cells: its own job
        from aivc.embeddings.niche_job import embed_niches_job

        return embed_niches_job(lake, rec.ref, name=name, datasets=datasets, progress=progress)
    try:
        cls = model_class(rec.model_type)
    except KeyError:
        raise UsageError(f"model {rec.ref} has type {rec.model_type!r}, which this aivc cannot apply", where=rec.ref) from None
    name = name or sql_name(rec.name)  # cell:pbmc_vae for model pbmc-vae, as published so far
    versions = _select(lake, None if datasets else rec.lineage.organism, datasets)
    plan, cell_ids, notes = build_apply_plan(lake, rec, versions, min_gene_overlap=min_gene_overlap, gene_tokens=bool(getattr(cls, "gene_tokens", False)), where=where)
    n = len(cell_ids)
    rows = chunk_rows or auto_chunk_rows(len(plan.gene_ids), batch_size)
    if actors and n:  # an explicit pool gets at least one chunk per actor: every actor (on every node) works
        rows = min(rows, -(-n // actors))
    chunks = [(lo, min(n, lo + rows)) for lo in range(0, n, rows)]
    dim = int(rec.init.get("latent_dim", 0)) or None
    used, reason = choose_engine(engine, n, actors=actors, ray_address=ray_address)
    gene_ur = rec.lineage.gene_ur
    lineage = Lineage(
        datasets=tuple(v.ref for v in versions),
        organism=versions[0].organism_name,
        lake_state={versions[0].organism_name: plan.high_water},
        model=rec.ref,
        gene_ur=gene_ur,
        extra={
            "model_type": rec.model_type,
            "model_weights_sha256": rec.weights_sha256,
            "n_genes_input": len(plan.gene_ids),
            "where": where,
            **notes,
            **({} if gene_ur is not None else {"gene_ur": None}),  # recorded as null for a model without one
        },
    )
    source = {"kind": "model", "model": rec.ref, "model_type": rec.model_type, "sha256": rec.weights_sha256}

    started = False
    try:
        if used == "ray":
            import ray

            from aivc.ray_local import start_ray

            started = start_ray(ray_address)
            n_actors = actors or max(1, min(len(chunks), int(ray.available_resources().get("CPU", 1))))
            threads = max(1, (os.cpu_count() or 1) // n_actors)
            results = _run_ray(lake, rec, plan, chunks, batch_size, n_actors, threads)
            what = f"{n_actors} Ray actor{'s' if n_actors > 1 else ''}"
        else:
            n_actors = 0
            results = _run_local(lake, rec, plan, chunks, batch_size)
            what = "in this process"
        writer: EmbeddingWriter | None = None
        progress.phase(f"embedding {n} cells with {rec.ref} ({what})", total=n)
        try:
            for pos, vec in results:
                vec = np.asarray(vec, dtype=np.float32)
                if writer is None:
                    if dim is not None and vec.shape[1] != dim:
                        raise UsageError(f"model {rec.ref} produced {vec.shape[1]}-dimensional URs, its record says {dim}", where=rec.ref)
                    writer = EmbeddingWriter(lake, "cell", name, int(vec.shape[1]), source=source, lineage=lineage, normalization="none")
                obs, dsid = cell_ids(pos)
                writer.write(obs, vec, soma_joinids=plan.joinids[pos], dataset_ids=dsid)
                progress.advance(len(pos))
            if writer is None:
                raise UsageError("no cells to embed in the chosen datasets", where="--datasets")
            metrics: dict[str, Any] = {"n_cells": int(n), "engine": used, "engine_reason": reason, "actors": int(n_actors), "batch_size": int(batch_size), "chunk_rows": int(rows)}
            if "measurements" in notes:  # which measurements each dataset's cells were embedded from
                metrics["measurements"] = notes["measurements"]
            return writer.commit(metrics=metrics)
        except BaseException:
            close = getattr(results, "close", None)
            if close is not None:
                close()
            if writer is not None:
                writer.abort()
            raise
    finally:
        if started:
            import ray

            ray.shutdown()
