"""The spatial part of a submission: read and check where the cells are, then write it.

:func:`spatial_part` runs inside :func:`aivc.ingest.submission.validate_submission` (after the
cell metadata is harmonized): it reads the ``spatial:`` block's data
(:mod:`aivc.ingest.spatial_sources`) and checks it (:mod:`aivc.ingest.spatial_checks`).
:func:`write_spatial` runs inside the commit, at the version's SOMA timestamp: it stages the
locations, images, transcripts and polygons (:mod:`aivc.store.spatial`) and writes the
version's SOMA Scene (:mod:`aivc.store.soma_spatial`), returning the record's ``spatial``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aivc.errors import Finding
from aivc.ingest.manifest import Manifest
from aivc.progress import Progress
from aivc.store.artifacts import VersionWriter

if TYPE_CHECKING:
    from aivc.ingest.submission import Prepared

__all__ = ["out_of_tissue", "spatial_part", "write_spatial"]


def out_of_tissue(prepared: Prepared) -> np.ndarray | None:
    """For a whole Visium slide (``is_single: true``), which matrix rows are spots outside the
    tissue (``in_tissue`` 0): CELLxGENE wants all of the capture area's spots, and a raw
    Space Ranger matrix has empty ones there. None for anything else."""
    sp = prepared.spatial
    if sp is None or sp.located is None or sp.input.technology != "visium" or not sp.input.spec.is_single:
        return None
    return (pd.to_numeric(sp.located["in_tissue"], errors="coerce").to_numpy() == 0)


def spatial_part(prepared: Prepared, data_path: str | Path, manifest: Manifest, manifest_dir: Path, progress: Progress) -> None:
    """Read and check where the cells are (``spatial:``); a Space Ranger folder needs the block."""
    from aivc.ingest.sources import SourceError, data_format

    report, data = prepared.report, prepared.data
    assert data is not None
    if manifest.spatial is None:
        if data_format(data_path) == "spaceranger":
            report.add(Finding("SPATIAL_BLOCK_MISSING", "manifest: spatial (missing)", "the data is a Space Ranger folder; declare it with spatial: {technology: visium, is_single: true|false}"))
        return
    from aivc.ingest.spatial_checks import check_spatial
    from aivc.ingest.spatial_sources import open_spatial

    progress.phase("checking locations and images")
    try:
        sp = open_spatial(data_path, manifest.spatial, manifest_dir=manifest_dir, cell_ids=data.obs.index.astype(str), obs=data.obs)
    except SourceError as exc:
        report.add(Finding(exc.code, exc.where, exc.message))
        return
    # the imaging technologies' table is compared with the transcripts it counts (a table of a
    # few hundred genes: its rows fit in memory alongside the transcripts themselves)
    counts = data.counts.rows(0, data.counts.shape[0]) if sp.transcripts is not None else None
    checked = check_spatial(sp, data.obs.index.astype(str), prepared.obs, pd.Index(data.var.index.astype(str)), counts)
    prepared.spatial = checked
    report.extend(checked.findings)


def write_spatial(w: VersionWriter, prepared: Prepared, uri: str, ts: int, obs: pd.DataFrame, obs_joinids: np.ndarray, progress: Progress) -> dict[str, Any]:
    """Stage the locations and images, write the SOMA Scene; the record's ``spatial`` entry."""
    from aivc.store.soma_spatial import scene_name, write_scene
    from aivc.store.spatial import SpatialRecord, StagedImage, stage_spatial

    checked = prepared.spatial
    sp = checked.input
    located = checked.located
    assert located is not None and prepared.manifest is not None
    frame = located.reset_index(drop=True)
    frame.insert(0, "obs_id", obs.index.to_numpy(dtype=object))
    frame.insert(1, "dataset_id", prepared.manifest.dataset_id)
    frame.insert(2, "version", np.int32(w.version))
    frame.insert(3, "barcode", obs["barcode"].to_numpy(dtype=object))
    for c in ("in_tissue", "array_row", "array_col", "label_id"):
        if c in frame.columns:
            frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("Int64")
    staged = [StagedImage(n, img.array, img.scale, img.channel_names, img.pixel_size_um, sp.labels if n == "image" else None) for n, img in sp.images.items()]
    transcripts, shapes = _imaging_tables(prepared, obs, w.version)
    progress.phase("writing locations and images")
    images = stage_spatial(w.folder, frame, staged, transcripts=transcripts, shapes=shapes)
    name = scene_name(prepared.manifest.dataset_id, w.version, prepared.report.submission_id)
    write_scene(uri, name, obs_joinids, obs.index.to_numpy(dtype=object), frame["x"].to_numpy(dtype=float), frame["y"].to_numpy(dtype=float), timestamp=ts, units=sp.units)
    scalefactors = {k: v for k, v in sp.scalefactors.items() if isinstance(v, int | float)}
    n_located = int(np.isfinite(frame["x"].to_numpy(dtype=float)).sum())
    kinds = {k: int(v) for k, v in shapes["kind"].value_counts().items()} if shapes is not None else {}
    return SpatialRecord(sp.technology, sp.spec.is_single, sp.units, n_located, sp.library_id, name, scalefactors, images, len(transcripts) if transcripts is not None else 0, kinds, sp.spec.pixel_size_um).to_record()


def _imaging_tables(prepared: Prepared, obs: pd.DataFrame, version: int) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The lake's transcripts and polygons tables of a MERFISH / Xenium submission (cells by obs_id)."""
    sp = prepared.spatial.input
    if sp.shape_of_cell is None or not sp.shapes:
        return None, None
    assert prepared.manifest is not None and prepared.genes is not None and prepared.data is not None
    obs_of_shape = pd.Series(obs.index.to_numpy(dtype=object), index=sp.shape_of_cell.reindex(obs["barcode"].to_numpy()).to_numpy())
    transcripts = None
    if sp.transcripts is not None:
        t = sp.transcripts
        submitted = prepared.data.var.index.astype(str)[prepared.genes.keep_cols]
        feature_of = pd.Series(list(prepared.genes.gene_ids), index=submitted)
        transcripts = pd.DataFrame(
            {
                "obs_id": obs_of_shape.reindex(t["cell"].to_numpy()).to_numpy(dtype=object),
                "dataset_id": prepared.manifest.dataset_id,
                "version": np.int32(version),
                "x": t["x"].to_numpy(dtype=float),
                "y": t["y"].to_numpy(dtype=float),
                "gene": t["gene"].to_numpy(dtype=object),
                "feature_id": feature_of.reindex(t["gene"].to_numpy()).to_numpy(dtype=object),
            }
        )
        if "nucleus" in t.columns:
            transcripts["in_nucleus"] = t["nucleus"].to_numpy(dtype=object) != ""
        if "z" in t.columns:
            transcripts["z"] = t["z"].to_numpy(dtype=float)
    rows = []
    for kind, frame in sp.shapes.items():
        if kind == "cell":
            owner = obs_of_shape.reindex(frame.index).to_numpy(dtype=object)
        else:
            owner = _containing_cell(frame, sp.shapes["cell"], obs_of_shape)
        rows.append(pd.DataFrame({"kind": kind, "shape_id": frame.index.to_numpy(dtype=object), "obs_id": owner, "geometry": frame["geometry"].to_numpy(dtype=object)}))
    return transcripts, pd.concat(rows, ignore_index=True)


def _containing_cell(nuclei: pd.DataFrame, cells: pd.DataFrame, obs_of_shape: pd.Series) -> np.ndarray:
    """The obs_id of the cell polygon that holds each nucleus's centroid (None: no cell)."""
    from shapely import STRtree

    tree = STRtree(list(cells["geometry"]))
    out = np.full(len(nuclei), None, dtype=object)
    for i, g in enumerate(nuclei["geometry"]):
        hits = tree.query(g.centroid, predicate="within")
        if len(hits):
            out[i] = obs_of_shape.get(cells.index[int(hits[0])])
    return out
