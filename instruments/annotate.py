"""Batch reannotation: run a decoder over stored URs and publish a prediction version.

:func:`annotate` reads the feature-store Parquet of the embedding version the instrument
was trained on (only that version: URs of other versions are not comparable), predicts,
writes the rows into a staged prediction version, optionally adds the report, and
publishes it atomically (:func:`aivc.instruments.predictions.publish`).

Engines
-------
``auto`` (default)
    ``local`` for a job of fewer than :data:`AUTO_LOCAL_MAX_CELLS` stored vectors, ``ray``
    for a larger one, and ``ray`` whenever a Ray cluster (``ray_address``) or an actor
    pool (``actors``) is asked for. :func:`choose_engine` decides; the job record says which
    engine ran and why (``job.engine``, ``job.engine_reason``). An explicit engine wins.
``ray``
    A Ray Data job: ``read_parquet`` over the partitions of the chosen datasets,
    ``map_batches`` and a :class:`PredictionSink` whose write tasks write Parquet parts
    per dataset into the staging folder. By default (``actors=0``) the decoder runs in
    plain Ray tasks, which Ray Data fuses with the write into one task per block and
    which reuse the cluster's running worker processes; each worker loads the instrument
    once (a per-process cache keyed by lake, ref and weights digest; decoders are a few
    NumPy arrays). ``actors=N`` uses a fixed pool of N actors instead
    (``ActorPoolStrategy(size=N)``; new processes per job, for decoders that are
    expensive to load). The driver then
    keeps exactly the parts the successful write tasks reported (a retried task's
    leftovers are dropped), checks the row count and publishes. ``ray_address``
    connects to a cluster (the lake must be reachable from its workers); otherwise an
    already started Ray is used, or a local one is started and stopped.
``local``
    In-process, dataset by dataset, batch by batch (memory bounded by ``batch_size``):
    no Ray start-up cost, one process.

Why the threshold is where it is (timings in README.md, "Which engine runs"): every
``aivc annotate`` is a cold Ray job (Ray starts worker processes per driver), which took
7-11 s before the first cell on the 2-CPU development machine (``ray.init`` plus Ray Data's
~2 s floor), while the local engine annotated 2 M cells in ~9 s there. Below that size the
local engine is done before Ray has started, so Ray cannot win however many cores it gets
(measured: local was faster at every size, 1.0 s vs 12.5 s wall for 700 cells, 9.8 s vs
18.4 s for 2 M); above it Ray can spread the work over a bigger machine's cores or a cluster.

Example
-------
>>> pv = annotate(lake, "celltype@1", datasets=["pbmc68k-part2"])  # doctest: +SKIP
>>> pv.ref, pv.view_name  # doctest: +SKIP
('predictions:celltype@1', 'predictions_celltype_v1')
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from aivc.errors import UsageError
from aivc.instruments.predictions import ROWS_SCHEMA, PredictionVersion, publish
from aivc.instruments.registry import InstrumentError, InstrumentRecord, get_instrument, load_instrument
from aivc.progress import NullProgress, Progress
from aivc.ray_local import ENGINES, pick_engine
from aivc.store.lake import Lake, utcnow

Engine = Literal["auto", "ray", "local"]
#: ``engine="auto"`` runs jobs of fewer stored vectors than this in-process (see the module docstring).
AUTO_LOCAL_MAX_CELLS = 2_000_000
KEY_COLUMNS = ("obs_id", "soma_joinid", "dataset_id")


def row_schema(decoder_schema: Any, instrument_ref: str, embedding_ref: str) -> Any:
    """Key columns followed by the decoder's output columns, with self-describing metadata."""
    import pyarrow as pa

    keys = [pa.field("obs_id", pa.string(), nullable=False), pa.field("soma_joinid", pa.int64()), pa.field("dataset_id", pa.string())]
    meta = {"schema_name": ROWS_SCHEMA, "schema_version": "1", "instrument": instrument_ref, "embedding": embedding_ref}
    return pa.schema(keys + list(decoder_schema), metadata=meta)


def vectors_of(batch: Any, dim: int) -> np.ndarray:
    """The ``vector`` column of an Arrow batch as a float32 ``(n, dim)`` array."""
    col = batch.column("vector")
    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    flat = arr.flatten()  # respects slicing, unlike .values
    return flat.to_numpy(zero_copy_only=False).reshape(-1, dim)


def predict_batch(decoder: Any, batch: Any, dim: int) -> Any:
    """Key columns of ``batch`` (``id`` renamed ``obs_id``) beside the decoder's outputs."""
    import pyarrow as pa

    out = decoder.predict(vectors_of(batch, dim))
    keys = {"obs_id": batch.column("id"), "soma_joinid": batch.column("soma_joinid"), "dataset_id": batch.column("dataset_id")}
    return pa.table({**keys, **{n: out.column(n) for n in out.column_names}})


# -- checks ----------------------------------------------------------------------------
def _resolve(lake: Lake, instrument: str, embedding: str | None, datasets: list[str] | None, all_datasets: bool) -> tuple[InstrumentRecord, Any, list[str]]:
    from aivc.store.features import get_version

    rec = get_instrument(lake, instrument)
    if rec.kind != "decoder":
        raise InstrumentError(f"{rec.ref} is a {rec.kind}; annotate runs decoders", where="--instrument")
    emb = get_version(lake, embedding or rec.reads)
    if emb.ref != rec.reads:
        raise InstrumentError(
            f"{rec.ref} was trained on {rec.reads} and cannot read {emb.ref} (URs of other versions are not comparable); "
            f"annotate with --embedding {rec.reads} or train a decoder on {emb.ref}",
            where="--embedding",
        )
    have = {p.partition("=")[2] for p in emb.partitions if p.startswith("dataset=")}
    if all_datasets == bool(datasets):
        raise UsageError("choose the datasets to annotate with --datasets A,B or --all", where="--datasets")
    if all_datasets:
        if not have:
            raise InstrumentError(f"{emb.ref} holds no cell vectors", where="--all")
        return rec, emb, sorted(have)
    lineage = emb.lineage.dataset_versions()
    chosen = []
    for d in datasets or []:
        ds_id, _, ver = d.partition("@")
        if ds_id not in have:
            raise InstrumentError(
                f"{emb.ref} has no vectors for dataset {ds_id!r} (datasets with vectors: {', '.join(sorted(have)) or 'none'}); embed it first",
                where="--datasets",
            )
        if ver and ds_id in lineage and lineage[ds_id] != d:
            raise InstrumentError(f"{emb.ref} holds the vectors of {lineage[ds_id]}, not of {d}", where="--datasets")
        chosen.append(ds_id)
    return rec, emb, sorted(set(chosen))


# -- the Ray engine ----------------------------------------------------------------------
_DECODERS: dict[tuple[str, str, str], Any] = {}
_MAX_CACHED = 8  # decoders are small; a long-lived worker keeps the last few


def predict_task(batch: Any, lake_root: str, instrument_ref: str, sha256: str, dim: int) -> Any:
    """Ray Data task function: the decoder is loaded once per worker process and reused.

    The cache key includes the weights' digest, so a worker never predicts with stale weights.
    """
    key = (lake_root, instrument_ref, sha256)
    decoder = _DECODERS.get(key)
    if decoder is None:
        if len(_DECODERS) >= _MAX_CACHED:
            _DECODERS.clear()
        decoder = load_instrument(Lake.open(lake_root), instrument_ref)
        got = decoder.record.weights_sha256 if decoder.record is not None else ""
        if got != sha256:
            raise InstrumentError(f"{instrument_ref} on the workers has weights {got[:12]}…, the job was planned with {sha256[:12]}…; the instrument changed during the job", where=instrument_ref)
        _DECODERS[key] = decoder
    return predict_batch(decoder, batch, dim)


class DecoderActor:
    """Ray Data actor: loads the instrument once, then predicts batch after batch."""

    def __init__(self, lake_root: str, instrument_ref: str, dim: int) -> None:
        self.decoder = load_instrument(Lake.open(lake_root), instrument_ref)
        self.dim = dim

    def __call__(self, batch: Any) -> Any:
        return predict_batch(self.decoder, batch, self.dim)


def _datasink_base() -> type:
    from ray.data import Datasink

    return Datasink


def make_sink(staging: Path, schema: Any) -> Any:
    """A Ray Data ``Datasink`` writing per-dataset Parquet parts into ``staging``.

    Each write task returns ``[(dataset_id, relative file, rows), ...]``; the driver-side
    ``on_write_complete`` gathers them into ``sink.written``.
    """

    class PredictionSink(_datasink_base()):  # type: ignore[misc]
        def __init__(self) -> None:
            self.root = str(staging)
            self.schema = schema
            self.written: list[tuple[str, str, int]] = []

        def write(self, blocks: Iterable[Any], ctx: Any) -> list[tuple[str, str, int]]:
            return write_parts(Path(self.root), blocks, self.schema, f"{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}")

        def on_write_complete(self, write_result: Any) -> None:
            self.written = [w for ret in write_result.write_returns for w in ret]

    return PredictionSink()


def write_parts(root: Path, tables: Iterable[Any], schema: Any, tag: str) -> list[tuple[str, str, int]]:
    """Write Arrow tables as Parquet parts under ``root/dataset=<id>/``; one file per dataset."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    writers: dict[str, Any] = {}
    rows: dict[str, int] = {}
    try:
        for t in tables:
            if t.num_rows == 0:
                continue
            col = t.column("dataset_id")
            uniq = pc.unique(col).to_pylist()
            parts = [(uniq[0], t)] if len(uniq) == 1 else [(d, t.filter(pc.equal(col, d))) for d in uniq]
            for d, part in parts:
                if d not in writers:
                    folder = root / f"dataset={d}"
                    folder.mkdir(parents=True, exist_ok=True)
                    writers[d] = pq.ParquetWriter(folder / f"part-{tag}.parquet", schema, compression="zstd")
                    rows[d] = 0
                writers[d].write_table(part.select(schema.names).cast(schema))
                rows[d] += part.num_rows
    finally:
        for w in writers.values():
            w.close()
    return [(d, f"dataset={d}/part-{tag}.parquet", rows[d]) for d in sorted(writers)]


def _run_ray(lake: Lake, rec: InstrumentRecord, emb: Any, files: list[Path], staging: Path, schema: Any, *, actors: int, batch_size: int, ray_address: str | None) -> list[tuple[str, str, int]]:
    import ray
    import ray.data

    from aivc.ray_local import data_context, start_ray

    started = start_ray(ray_address, workers=2)  # at least a CPU to read and write beside the decoder
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if actors and cpus < actors + 1:
            fix = f"use --actors {cpus - 1} or fewer" if cpus >= 2 else "use --engine local"
            raise UsageError(f"--actors {actors} would hold all {cpus} CPUs of the Ray cluster and leave none to read and write (the job would wait forever); {fix}", where="--actors")
        with data_context():
            ds = ray.data.read_parquet([str(f) for f in files], columns=["id", "soma_joinid", "dataset_id", "vector"], partitioning=None)
            common = {"batch_size": batch_size, "batch_format": "pyarrow", "zero_copy_batch": True}
            if actors:
                preds = ds.map_batches(
                    DecoderActor, fn_constructor_kwargs={"lake_root": lake.uri, "instrument_ref": rec.ref, "dim": int(emb.dim)},
                    compute=ray.data.ActorPoolStrategy(size=actors), **common,
                )  # fmt: skip
            else:
                preds = ds.map_batches(predict_task, fn_kwargs={"lake_root": lake.uri, "instrument_ref": rec.ref, "sha256": rec.weights_sha256, "dim": int(emb.dim)}, **common)
            sink = make_sink(staging, schema)
            preds.write_datasink(sink)
        return list(sink.written)
    except (InstrumentError, UsageError):
        raise
    except Exception as exc:  # a failed Ray job: one line, the lake unchanged
        raise InstrumentError(f"the Ray annotation job failed: {ray_failure(exc)}", where="ray") from exc
    finally:
        if started:
            ray.shutdown()


_EXC_LINE = re.compile(r"^\s*((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception)): (.+)$")


def ray_failure(exc: BaseException) -> str:
    """One line naming the root cause of a failed Ray job.

    Ray wraps an exception raised in a task (``RayTaskError``, ``UserCodeException``)
    in a multi-line message whose last lines are retry advice; the cause is the last line
    of the form ``SomeError: message``.
    """
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    causes = [m for m in (_EXC_LINE.match(ln) for ln in lines) if m]
    if causes:
        name, message = causes[-1].group(1), causes[-1].group(2).strip()
        return f"{name.rsplit('.', 1)[-1]}: {message}"
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def _run_local(lake: Lake, decoder: Any, emb: Any, datasets: list[str], staging: Path, schema: Any, *, batch_size: int, progress: Progress) -> list[tuple[str, str, int]]:
    import pyarrow.dataset as pds

    from aivc.store.features import parquet_files

    written: list[tuple[str, str, int]] = []
    for d in datasets:
        files = [str(f) for f in parquet_files(lake, emb, {d})]
        scanner = pds.dataset(files, format="parquet").scanner(columns=["id", "soma_joinid", "dataset_id", "vector"], batch_size=batch_size)
        tables = (predict_batch(decoder, b, emb.dim) for b in scanner.to_batches() if b.num_rows)

        def counted(ts: Iterable[Any]) -> Iterable[Any]:
            for t in ts:
                progress.advance(t.num_rows)
                yield t

        written += write_parts(staging, counted(tables), schema, "local")
    return written


# -- the job -------------------------------------------------------------------------------
def choose_engine(engine: str, n_cells: int, *, actors: int = 0, ray_address: str | None = None) -> tuple[Literal["ray", "local"], str]:
    """The engine a job runs on and why: an explicit ``engine`` wins; ``auto`` picks Ray for a
    cluster address, an actor pool or at least :data:`AUTO_LOCAL_MAX_CELLS` cells, else local.

    >>> choose_engine("auto", 700)
    ('local', 'auto: 700 cells < 2000000')
    >>> choose_engine("auto", 700, actors=2)
    ('ray', 'auto: --actors 2 asks for a Ray actor pool')
    >>> choose_engine("local", 5_000_000)
    ('local', '--engine local')
    """
    return pick_engine(engine, n_cells, local_max=AUTO_LOCAL_MAX_CELLS, actors=actors, ray_address=ray_address)


def annotate(
    lake: Lake,
    instrument: str,
    *,
    datasets: list[str] | None = None,
    all_datasets: bool = False,
    embedding: str | None = None,
    engine: Engine = "auto",
    actors: int = 0,
    batch_size: int = 65536,
    ray_address: str | None = None,
    report: bool = True,
    rollup: str | None = None,
    progress: Progress | None = None,
) -> PredictionVersion:
    """Predict with a decoder over stored URs and publish a prediction version.

    Parameters
    ----------
    instrument
        ``NAME[@VERSION]`` of a registered decoder, e.g. ``celltype@1``.
    datasets, all_datasets
        Dataset ids to annotate, or every dataset with vectors in the embedding version.
    embedding
        The embedding version to read; default (and the only one allowed) is the one the
        instrument was trained on: any other raises :class:`InstrumentError`.
    engine
        ``"auto"`` (default: :func:`choose_engine`), ``"ray"`` (Ray Data) or ``"local"``
        (in-process). The one that ran, and why, is in the version's ``job`` record.
    actors
        Ray engine: 0 (default) runs the decoder in Ray tasks fused with the writes; N >= 1
        in a pool of N actors.
    report, rollup
        Write ``report.json``/``report.html`` into the version; ``rollup`` (``"CL:…,CL:…"``
        or ``"depth:N"``) adds a roll-up table.

    Raises
    ------
    InstrumentError
        Wrong embedding version, datasets without vectors in it, or a failed job.
    """
    from aivc.store.features import parquet_files

    if engine not in ENGINES:
        raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}", where="--engine")
    if actors < 0:
        raise UsageError(f"--actors must be 0 (Ray tasks) or more, got {actors}", where="--actors")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}", where="--batch-size")
    progress = progress or NullProgress()
    rec, emb, chosen = _resolve(lake, instrument, embedding, datasets, all_datasets)
    rollup_spec = None
    if rollup:
        from aivc.instruments.agreement import RollUp

        rollup_spec = RollUp.parse(rollup)
    files = parquet_files(lake, emb, set(chosen))
    expected = _count_rows(files, emb.ref)
    engine, reason = choose_engine(engine, expected, actors=actors, ray_address=ray_address)
    decoder = load_instrument(lake, rec)  # checked here; each Ray worker or actor loads its own
    if getattr(decoder, "dim", emb.dim) != emb.dim:
        raise InstrumentError(f"{rec.ref} reads {decoder.dim}-dimensional URs but {emb.ref} has {emb.dim} dimensions", where="--embedding")
    schema = row_schema(decoder.output_schema(), rec.ref, emb.ref)
    staging = lake.new_staging()
    t0 = time.perf_counter()
    try:
        progress.phase(f"annotating {expected} cells with {rec.ref} ({engine})", total=expected)
        if engine == "ray":
            written = _run_ray(lake, rec, emb, files, staging, schema, actors=actors, batch_size=batch_size, ray_address=ray_address)
            progress.advance(expected)
        else:
            written = _run_local(lake, decoder, emb, chosen, staging, schema, batch_size=batch_size, progress=progress)
        seconds = time.perf_counter() - t0
        _keep_only(staging, {f for _, f, _ in written})
        rows: dict[str, int] = {}
        for d, _, n in written:
            rows[d] = rows.get(d, 0) + n
        if sum(rows.values()) != expected:
            raise InstrumentError(f"the job wrote {sum(rows.values())} rows for {expected} stored vectors; nothing was published", where=engine)
        lineage = emb.lineage.dataset_versions()
        job = _job_record(engine, reason, actors, batch_size, seconds, expected)
        built = None
        if report:
            from aivc.instruments.report import build_for

            progress.phase("building the report")
            built = build_for(lake, staging, rec, rollup=rollup_spec)

        def make(version: int) -> PredictionVersion:
            return PredictionVersion(
                instrument=rec.name, version=version, instrument_ref=rec.ref, instrument_kind=rec.kind, instrument_type=rec.type,
                embedding_ref=emb.ref, datasets=tuple(lineage.get(d, d) for d in chosen), rows_per_dataset=dict(sorted(rows.items())),
                n_rows=expected, columns={k: v for k, v in rec.outputs.get("columns", {}).items()}, created_at=utcnow(), job=job,
                summary=built.summary if built else {}, report={"json": "report.json", "html": "report.html"} if built else {},
                partitions=tuple(sorted(f"dataset={d}" for d in rows)),
            )  # fmt: skip

        def finish(folder: Path, record: PredictionVersion) -> None:
            if built is not None:
                built.write(folder, record)

        progress.phase("publishing")
        return publish(lake, staging, rec.name, make, finish)
    except BaseException:
        lake.discard_staging(staging)
        raise


def _count_rows(files: list[Path], ref: str) -> int:
    import pyarrow.parquet as pq

    n = 0
    for f in files:
        try:
            n += pq.read_metadata(f).num_rows
        except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
            raise InstrumentError(f"a Parquet file of {ref} is unreadable ({str(exc).splitlines()[0]}); the embedding version is damaged", where=str(f)) from None
    return n


def _job_record(engine: str, reason: str, actors: int, batch_size: int, seconds: float, n: int) -> dict[str, Any]:
    job: dict[str, Any] = {
        "engine": engine, "engine_reason": reason, "actors": actors if engine == "ray" else 0, "batch_size": batch_size,
        "seconds": round(seconds, 3), "cells_per_second": round(n / seconds, 1) if seconds > 0 else None,
    }  # fmt: skip
    if engine == "ray":
        import ray

        job["ray_mode"] = f"actor pool of {actors}" if actors else "tasks"
        job["ray_version"] = ray.__version__
    return job


def _keep_only(staging: Path, keep: set[str]) -> None:
    """Delete Parquet parts no successful write task reported (leftovers of retried tasks)."""
    for f in staging.rglob("*.parquet"):
        if str(f.relative_to(staging)) not in keep:
            f.unlink()
