"""Publishing niche URs: a registered ``niche-gnn`` model applied to located cells -> ``niche:NAME@V``.

:func:`embed_niches_job` reads the located cells of a cell UR version (by default the one the
model was trained on, ``lineage.embedding``; another version of the same width may be given,
e.g. newer datasets embedded with the same cell model) and builds their graph with the rule
the model was trained with (a rule given at training is reused as is; the default rule is
chosen again for the data, since a Visium radius is in each slide's own pixels). Each located
cell is the centre of one niche: the version's rows are ``id`` = the centre's ``obs_id`` and
its niche UR, stored per dataset with the centre's ``soma_joinid`` and ``dataset_id`` like
cell URs (so a principal sees the niches of the datasets it may see). The members of every niche (the centre at distance 0 and its graph neighbours
with their distances, in the units of the locations) are written to
``_members/dataset=<id>/part-00000.parquet`` (``EmbeddingWriter.write_members``) in the same staged folder, so they publish with the vectors in
one rename; SQL shows them as ``niche_<name>_v<V>_members`` (:mod:`aivc.embeddings.sql`).

The lineage names the model, the cell UR version (``embedding``), the dataset versions and
the graph spec actually used (``extra["graph"]``) with its statistics.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import numpy as np

from aivc.errors import UsageError
from aivc.progress import NullProgress, Progress
from aivc.store.lake import Lake
from aivc.store.collection import sql_name


def members_table(obs_ids: np.ndarray, graph: Any) -> Any:
    """``niche_id, obs_id, distance`` of every niche: the centre (distance 0), then its neighbours."""
    import pyarrow as pa

    n = graph.n_nodes
    deg = graph.degree
    starts = graph.indptr[:-1] + np.arange(n)  # each niche's rows begin with its centre
    centre = np.repeat(np.arange(n, dtype=np.int64), deg + 1)
    member = np.empty(centre.size, dtype=np.int64)
    dist = np.zeros(centre.size, dtype=np.float64)
    member[starts] = np.arange(n)
    others = np.ones(centre.size, dtype=bool)
    others[starts] = False
    member[others] = graph.indices
    dist[others] = graph.distances
    ids = np.asarray(obs_ids, dtype=object)
    return pa.table({"niche_id": pa.array(ids[centre], pa.string()), "obs_id": pa.array(ids[member], pa.string()), "distance": pa.array(dist)})


def embed_niches_job(
    lake: Lake,
    model_ref: str,
    *,
    name: str | None = None,
    cells: str | None = None,
    datasets: list[str] | None = None,
    progress: Progress | None = None,
) -> Any:
    """Embed the niches of the located cells with niche model ``model_ref``; publish ``niche:<name>@N``.

    ``name`` defaults to the model's name with ``-`` as ``_``. Returns the published
    :class:`~aivc.store.features.EmbeddingVersion`.
    """
    import pandas as pd
    import pyarrow as pa

    from aivc.store.features import EmbeddingWriter
    from aivc.training.niche_data import niche_inputs
    from aivc.training.niche_nets import MODEL_TYPE, embed_niches
    from aivc.training.registry import load_model

    progress = progress or NullProgress()
    model, rec = load_model(lake, model_ref)
    if rec.model_type != MODEL_TYPE:
        raise UsageError(f"model {rec.ref} is a {rec.model_type} model, not a niche model", where=rec.ref)
    cells = cells or rec.lineage.embedding
    if not cells:
        raise UsageError(f"niche model {rec.ref} records no cell UR version; pass --cells cell:NAME@V", where="--cells")
    progress.phase(f"reading the located cells of {cells}")
    inputs = niche_inputs(lake, cells, graph=rec.config.get("graph_given"), datasets=datasets)
    if inputs.x.shape[1] != rec.init["n_features"]:
        raise UsageError(f"{cells} has {inputs.x.shape[1]}-dim cell URs; niche model {rec.ref} reads {rec.init['n_features']}-dim ones", where="--cells")
    progress.phase(f"embedding {len(inputs.obs_ids):,} niches with {rec.ref} ({inputs.spec.rule} graph)")
    vectors = embed_niches(model, inputs.x, inputs.graph)
    lineage = replace(
        inputs.lineage,
        model=rec.ref,
        extra={**inputs.lineage.extra, "model_type": MODEL_TYPE, "model_weights_sha256": rec.weights_sha256, "graph_summary": inputs.graph.summary()},
    )
    source = {"kind": "model", "model": rec.ref, "model_type": MODEL_TYPE, "sha256": rec.weights_sha256}
    writer = EmbeddingWriter(lake, "niche", name or sql_name(rec.name), int(vectors.shape[1]), source=source, lineage=lineage)
    try:
        writer.write(inputs.obs_ids, vectors, soma_joinids=inputs.soma_joinids, dataset_ids=inputs.dataset_ids)
        members = members_table(inputs.obs_ids, inputs.graph)
        ds_of = pd.Series(inputs.dataset_ids, index=inputs.obs_ids)
        centre_ds = ds_of.loc[members.column("niche_id").to_numpy(zero_copy_only=False)].to_numpy()
        digest = hashlib.sha256()
        for d in sorted(set(inputs.dataset_ids.tolist())):  # a niche and its members lie in one dataset (no edge joins two slides)
            digest.update(writer.write_members(d, members.filter(pa.array(centre_ds == d))).encode())
        deg = inputs.graph.degree
        metrics = {
            "n_niches": int(len(inputs.obs_ids)),
            "n_members": int(members.num_rows),
            "mean_neighbours": float(deg.mean()) if deg.size else 0.0,
            "isolated_cells": int((deg == 0).sum()),
            "members_sha256": digest.hexdigest(),
        }
        version = writer.commit(metrics=metrics)
    except BaseException:
        writer.abort()
        raise
    progress.advance(len(inputs.obs_ids))
    return version


__all__ = ["embed_niches_job", "members_table"]
