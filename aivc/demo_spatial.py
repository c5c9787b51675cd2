"""The demo's spatial part: a real Visium slide subset, its niches, and the manifest it needs.

The Visium sample ships in ``schemas/examples/visium_spaceranger_1.0.0`` (scanpy 1.11.5's
Space Ranger 1.0.0 test data: 100 spots x 100 genes, the real H&E images, the slide's
tissue positions; see ``schemas/build_visium_example.py``). It is a subset of a slide, so it
is submitted with ``is_single: false`` and every spot ``is_primary_data: false``, as
CELLxGENE requires.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

#: the Space Ranger folder the demo submits
VISIUM_EXAMPLE = Path(str(resources.files("aivc.schemas").joinpath("examples", "visium_spaceranger_1.0.0")))
VISIUM_DATASET = "visium-sample"


def visium_manifest(dataset_id: str = VISIUM_DATASET, *, is_primary: bool = False, **over: Any) -> dict[str, Any]:
    """The manifest of the demo's Visium submission, with top-level keys replaced by ``over``."""
    m: dict[str, Any] = {
        "dataset_id": dataset_id,
        "title": "Visium 100-spot sample of a human slide (Space Ranger 1.0.0; scanpy test data)",
        "license": "CC-BY-4.0",
        "access": "public",
        "organism": "NCBITaxon:9606",
        "counts": "X",
        "genes": {"id_type": "ensembl"},
        "spatial": {"technology": "visium", "is_single": False},
        "qc": {"min_mapped_fraction": 0.8},
        "obs": {
            "assay": {"value": "EFO:0022857"},
            "cell_type": {"value": "unknown"},
            "development_stage": {"value": "unknown"},
            "disease": {"value": "normal"},
            "self_reported_ethnicity": {"value": "unknown"},
            "sex": {"value": "unknown"},
            "tissue": {"value": "UBERON:0000955"},
            "suspension_type": {"value": "na"},
            "donor_id": {"value": "visium-donor"},
            "is_primary_data": {"value": is_primary},
        },
    }
    return {**m, **over}


def _coherence(labels: Any, members: Any, index: Any) -> float:
    """The share of niche member pairs (centre, neighbour) whose labels agree."""
    import numpy as np

    pairs = members[members["niche_id"] != members["obs_id"]]
    a = labels[index.get_indexer(pairs["niche_id"])]
    b = labels[index.get_indexer(pairs["obs_id"])]
    return float(np.mean(a == b)) if len(pairs) else float("nan")


def run_spatial(lake: Any, con: Any, work: Path, json_mode: bool) -> dict[str, Any]:
    """Submit the Visium sample, train the niche model on its PCA cell URs with Ray Train,
    publish its niche URs and print the niche summary (graph, members, niche domains next to
    cell-UR clusters, and how spatially coherent each is)."""
    import numpy as np
    import pandas as pd
    import yaml
    from sklearn.cluster import KMeans

    from aivc.cli_common import print_table, styled
    from aivc.embeddings.niche_job import embed_niches_job
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.embeddings.sql import query
    from aivc.ingest.submission import submit
    from aivc.progress import make_progress
    from aivc.store.features import read_vectors
    from aivc.training.niche_nets import NicheModelConfig
    from aivc.training.niche_train import train_niche

    con.rule(styled(("spatial", "bold"), ": a real Visium slide subset, its niche graph and niche URs"))
    work.mkdir(parents=True, exist_ok=True)
    mf = work / f"{VISIUM_DATASET}.yaml"
    mf.write_text(yaml.safe_dump(visium_manifest(), sort_keys=False))
    res = submit(lake, VISIUM_EXAMPLE, mf, report_dir=work / "reports")
    sp = res.spatial or {}
    con.print(styled(f"submit {VISIUM_EXAMPLE.name}: ", (res.status, "bold"), f" {res.dataset_id}@{res.version} ({res.n_cells} spots x {res.n_genes} genes; {sp.get('n_located', 0)} located); report: {res.report}"))
    progress = make_progress(json_mode)
    try:
        emb = embed_pca(lake, name="visium_pca", datasets=[VISIUM_DATASET], params=PcaParams(n_components=10, n_top_genes=90), progress=progress)
    finally:
        progress.close()
    cfg = NicheModelConfig(epochs=30, n_states=8, anchors=100, seed=0)
    trained = train_niche(lake, emb.ref, name="visium-niche", config=cfg)
    niche = embed_niches_job(lake, trained.model_ref)
    g = niche.lineage.extra["graph"]
    rule = f"{g['rule']} k={g['k']}" if g["rule"] == "knn" else f"{g['rule']} r={g.get('radius')}"
    con.print(
        f"registered {trained.model_ref} (Ray Train, {trained.epochs} epochs, loss {trained.metrics['loss']:.3f}) over {emb.ref}; "
        f"published {niche.ref}: {niche.n_rows} niches x {niche.dim} dims, graph {rule}, {niche.metrics['mean_neighbours']:.1f} neighbours per niche "
        f"(SQL views {niche.view_name}, {niche.view_name}_members)",
        highlight=False,
    )
    members = query(lake, f"SELECT niche_id, obs_id, distance FROM {niche.view_name}_members").to_pandas()
    t_n, v_n = read_vectors(lake, niche)
    t_c, v_c = read_vectors(lake, emb)
    ids_n = pd.Index(t_n.column("id").to_pylist())
    ids_c = pd.Index(t_c.column("id").to_pylist())
    k = 3
    lab_n = KMeans(k, n_init=10, random_state=0).fit_predict(v_n)
    lab_c = KMeans(k, n_init=10, random_state=0).fit_predict(v_c)
    coh_n, coh_c = _coherence(lab_n, members, ids_n), _coherence(lab_c, members, ids_c)
    sizes = np.bincount(lab_n, minlength=k).tolist()
    rows = [
        (f"niche URs ({niche.ref})", " / ".join(map(str, sizes)), f"{coh_n:.1%}"),
        (f"cell URs alone ({emb.ref})", " / ".join(map(str, np.bincount(lab_c, minlength=k).tolist())), f"{coh_c:.1%}"),
    ]
    print_table(("k-means, k = 3", "spots per domain", "neighbours in the centre's domain"), rows, title="niche summary", out=con)
    sql = f"SELECT m.niche_id, count(*) - 1 AS neighbours, round(max(m.distance), 1) AS farthest_px FROM {niche.view_name}_members m GROUP BY m.niche_id ORDER BY m.niche_id LIMIT 3"
    res_sql = query(lake, sql)
    con.print(styled(("aivc sql", "bold"), f' "{sql}"'))
    print_table(res_sql.columns, res_sql.rows, out=con)
    return {
        "submission": res.to_dict(), "embedding": emb.ref, "model": trained.model_ref, "niche": niche.ref, "view": niche.view_name,
        "n_niches": niche.n_rows, "graph": g, "mean_neighbours": niche.metrics["mean_neighbours"],
        "domains": {"k": k, "sizes": sizes, "coherence_niche": coh_n, "coherence_cell": coh_c},
    }  # fmt: skip
