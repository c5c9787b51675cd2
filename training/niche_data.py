"""What a niche model reads: cell URs of located cells, and their neighbourhood graphs.

:func:`niche_inputs` joins a cell UR version (``cell:NAME@V``, the feature store) with the
locations of the spatial dataset versions those cells belong to (:mod:`aivc.store.spatial`),
keeping the cells that have both, and builds one neighbourhood graph per dataset version
(:func:`aivc.training.niche_graph.build_graph` with the version as the group: no edge joins
two slides). Everything the result came from (the UR version, the dataset versions, the
graph rule and its parameters, how many cells had no location) is in its ``lineage``.

The default graph: Visium spots within 1.5 x the spot centre spacing (the 6 touching spots;
the spacing is 100/55 of Space Ranger's ``spot_diameter_fullres``), unless the spots are a
sparse subset that rule leaves mostly alone (median degree below 1), which gets the 6 nearest
spots instead; other technologies the 8 nearest cells. The rule used is in the lineage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from aivc.errors import UsageError
from aivc.store.catalog import Catalog, DatasetVersion
from aivc.store.lake import Lake
from aivc.store.lineage import Lineage

__all__ = ["NicheInputs", "niche_inputs"]


@dataclass
class NicheInputs:
    """Located cells with their cell URs, in one order, and their graph."""

    obs_ids: np.ndarray
    dataset_ids: np.ndarray
    soma_joinids: np.ndarray
    groups: np.ndarray  # the dataset version ("ds@1") of each cell
    xy: np.ndarray
    x: np.ndarray  # cell URs, float32 (n, d)
    graph: Any  # aivc.training.niche_graph.NicheGraph
    spec: Any  # NicheGraphSpec
    lineage: Lineage
    summary: dict[str, Any] = field(default_factory=dict)


def _spatial_versions(lake: Lake, refs: list[str], datasets: list[str] | None) -> list[DatasetVersion]:
    from aivc.store.spatial import spatial_record

    cat = Catalog(lake)
    versions = [cat.get(r) for r in refs]
    if datasets:
        wanted = {d.partition("@")[0] for d in datasets}
        versions = [v for v in versions if v.dataset_id in wanted]
    located = [v for v in versions if spatial_record(v) is not None]
    if not located:
        raise UsageError(f"none of the datasets of this cell UR has locations ({', '.join(refs) or 'none'}); a niche model needs spatial datasets", where="--cells")
    return located


def _graph(versions: list[DatasetVersion], xy: np.ndarray, groups: np.ndarray, graph: dict[str, Any] | None) -> tuple[Any, Any]:
    from aivc.store.spatial import spatial_record
    from aivc.training.niche_graph import NicheGraphSpec, build_graph, visium_spec

    if graph is not None:
        spec = NicheGraphSpec.from_dict(graph) if "schema_version" in graph else NicheGraphSpec(**graph)
        return spec, build_graph(xy, spec, groups=groups)
    recs = [spatial_record(v) for v in versions]
    diameters = [r.scalefactors.get("spot_diameter_fullres") for r in recs if r is not None and r.technology == "visium"]
    if len(diameters) == len(recs) and all(diameters):
        spec = visium_spec(float(np.median(diameters)) * 100.0 / 55.0)  # Visium: 55 um spots, 100 um apart
        g = build_graph(xy, spec, groups=groups)
        if float(np.median(g.degree)) >= 1:
            return spec, g
    spec = NicheGraphSpec(rule="knn", k=6 if diameters else 8)
    return spec, build_graph(xy, spec, groups=groups)


def niche_inputs(lake: Lake, cells: str, *, graph: dict[str, Any] | None = None, datasets: list[str] | None = None) -> NicheInputs:
    """The located cells of ``cells`` (a cell UR ref) and their graph (``graph``: a
    :class:`~aivc.training.niche_graph.NicheGraphSpec` as a dict; ``None``: the default)."""
    from aivc.store.features import get_version, read_vectors
    from aivc.store.spatial import read_locations

    ur = get_version(lake, cells)
    if ur.entity != "cell":
        raise UsageError(f"{ur.ref} is a {ur.entity} UR; a niche model reads cell URs (cell:NAME@V)", where="--cells")
    versions = _spatial_versions(lake, list(ur.lineage.datasets), datasets)
    locs = pd.concat([read_locations(lake, v).assign(group=v.ref)[["obs_id", "dataset_id", "group", "x", "y"]] for v in versions], ignore_index=True)
    table, vec = read_vectors(lake, ur, datasets={v.dataset_id for v in versions}, columns=("id", "soma_joinid", "dataset_id"))
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    row = pd.Series(np.arange(len(ids)), index=ids)
    keep = locs["obs_id"].isin(row.index).to_numpy()
    if not keep.any():
        raise UsageError(f"no cell of {ur.ref} has a location in {', '.join(v.ref for v in versions)}", where="--cells")
    locs = locs[keep].reset_index(drop=True)
    take = row.loc[locs["obs_id"].to_numpy()].to_numpy()
    xy = locs[["x", "y"]].to_numpy(dtype=np.float64)
    groups = locs["group"].to_numpy(dtype=object)
    spec, g = _graph(versions, xy, groups, graph)
    lineage = Lineage(
        datasets=tuple(v.ref for v in versions),
        embedding=ur.ref,
        extra={"graph": spec.to_dict(), "cells_without_location": int(len(ids) - int(np.isin(ids, locs["obs_id"].to_numpy()).sum()))},
    )
    joins = np.asarray(table.column("soma_joinid").to_pylist(), dtype=np.int64)[take]
    return NicheInputs(
        obs_ids=locs["obs_id"].to_numpy(dtype=object),
        dataset_ids=locs["dataset_id"].to_numpy(dtype=object),
        soma_joinids=joins,
        groups=groups,
        xy=xy,
        x=np.ascontiguousarray(vec[take], dtype=np.float32),
        graph=g,
        spec=spec,
        lineage=lineage,
        summary={"n_cells": int(len(locs)), "graph": g.summary(), "datasets": [v.ref for v in versions]},
    )
