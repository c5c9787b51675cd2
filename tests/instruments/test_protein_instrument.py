"""The protein decoder instrument on real CITE-seq cells: trained where RNA and ADT were both
measured, applied to RNA-only cells, a prediction version in SQL with per-protein intervals."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from aivc.errors import UsageError
from aivc.instruments.annotate import annotate
from aivc.instruments.crossmodal import protein_targets
from aivc.instruments.protein import train_protein
from aivc.instruments.sql import query as iquery
from aivc.ingest.submission import submit
from aivc.store.lake import Lake
from tests.ingest.test_cite_submit import EXAMPLES, cite_manifest, write_manifest


@pytest.fixture(scope="module")
def cite_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """cite-10k and cite-5k with their proteins, rna-5k the 5k cells submitted as RNA only; a PCA UR over all."""
    from aivc.embeddings.pca import PcaParams, embed_pca

    root = tmp_path_factory.mktemp("protein")
    lake = Lake.init(str(root / "lake"))
    rna_only = cite_manifest("rna-5k")
    del rna_only["measurements"]
    for h5, m in (("cite_pbmc10k", cite_manifest("cite-10k")), ("cite_pbmc5k", cite_manifest("cite-5k")), ("cite_pbmc5k", rna_only)):
        res = submit(lake, EXAMPLES / f"{h5}.h5ad", write_manifest(root / f"{m['dataset_id']}.yaml", m), report_dir=root / m["dataset_id"])
        assert res.status == "committed", [str(e) for e in res.errors]
    embed_pca(lake, params=PcaParams(n_components=20, n_top_genes=1000))
    return lake


def test_protein_decoder_predicts_held_out_and_rna_only_cells(cite_lake: Lake) -> None:
    lake = cite_lake
    rec = train_protein(lake, "cell:pca@1", datasets=["cite-10k"])
    assert (rec.ref, rec.kind, rec.type, rec.reads) == ("protein@1", "decoder", "protein-abundance", "cell:pca@1")
    assert len(rec.outputs["proteins"]) == 14 and rec.outputs["proteins"][:3] == ["CD3", "CD4", "CD8a"]
    assert rec.lineage.datasets == ("cite-10k@1",) and rec.metrics["n_train"] == 200
    oof = rec.metrics["out_of_fold"]
    assert oof["mean_pearson"] > 0.3 and 0.8 <= oof["mean_coverage"] <= 0.98  # alpha 0.1, cross-fitted

    pv = annotate(lake, rec.ref, datasets=["cite-5k", "rna-5k"])
    assert pv.n_rows == 400 and pv.rows_per_dataset == {"cite-5k": 200, "rna-5k": 200}
    # SQL: per-cell lists in the record's protein order, intervals around the estimate
    rows = iquery(
        lake,
        f"SELECT c.dataset_id, len(p.abundance), bool_and(list_sum(list_transform(list_zip(p.lower, p.abundance, p.upper), lambda t: (t[1] <= t[2] AND t[2] <= t[3])::INT)) = 14) "
        f"FROM {pv.view_name} p JOIN cells c USING (obs_id) GROUP BY 1, 2 ORDER BY 1",
    ).rows
    assert rows == [("cite-5k", 14, True), ("rna-5k", 14, True)]
    # the RNA-only copy of the 5k cells gets the same predictions as the 5k cells with proteins
    same = iquery(
        lake,
        f"SELECT count(*) FROM {pv.view_name} a JOIN {pv.view_name} b ON split_part(a.obs_id, ':', 2) = split_part(b.obs_id, ':', 2) "
        f"WHERE a.dataset_id = 'cite-5k' AND b.dataset_id = 'rna-5k' AND a.abundance = b.abundance",
    ).rows[0][0]
    assert same == 200  # a UR is a UR: what the decoder reads does not include the proteins

    # the report scores the held-out cells against their measured proteins
    import json

    from aivc.instruments.predictions import version_dir

    report = json.loads((version_dir(lake, pv.instrument, pv.version) / "report.json").read_text())
    held = report["datasets"]["cite-5k"]
    assert held["role"] == "held out" and held["measured_proteins"] == 14
    src = ad.read_h5ad(EXAMPLES / "cite_pbmc5k.h5ad")
    assert report["datasets"]["rna-5k"]["measured_proteins"] == 0 and src.n_obs == 200
    # recompute the held-out mean Pearson from the SQL rows and the source file
    names = [str(n) for n in src.uns["protein_names"]]
    from aivc.ingest.proteins import harmonize_panel

    fid = [f.feature_id for f in harmonize_panel(names, "homo_sapiens").features]
    cols = [fid.index(p) for p in rec.outputs["proteins"]]
    y = protein_targets(np.asarray(src.obsm["protein_expression"], dtype=np.float64)[:, cols], "log1p")
    got = iquery(lake, f"SELECT split_part(obs_id, ':', 2) AS barcode, abundance FROM {pv.view_name} WHERE dataset_id = 'cite-5k'").rows
    pred = dict(got)
    mean = np.array([pred[b] for b in src.obs_names], dtype=np.float64)
    r = [np.corrcoef(mean[:, j], y[:, j])[0, 1] for j in range(14)]
    assert held["mean_pearson"] == pytest.approx(float(np.mean(r)), abs=1e-4)
    assert held["mean_pearson"] > 0.3


def test_protein_decoder_refuses_cells_without_proteins(cite_lake: Lake) -> None:
    with pytest.raises(UsageError, match="dataset 'rna-5k' has no ADT measurement"):
        train_protein(cite_lake, "cell:pca@1", datasets=["rna-5k"])
    with pytest.raises(UsageError, match="has no vectors for dataset 'nope'"):
        train_protein(cite_lake, "cell:pca@1", datasets=["nope"])


def test_cli_trains_and_predicts(cite_lake: Lake, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    aivc = [sys.executable, "-m", "aivc.cli"]
    lake = str(cite_lake.root)
    done = subprocess.run([*aivc, "instruments", "train", "protein", "--embedding", "cell:pca@1", "--datasets", "cite-10k", "--name", "adt", "--lake", lake, "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["ref"] == "adt@1" and out["type"] == "protein-abundance"
    done = subprocess.run([*aivc, "annotate", "--instrument", "adt@1", "--datasets", "rna-5k", "--lake", lake, "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["n_rows"] == 200
    done = subprocess.run([*aivc, "annotate", "--instrument", "adt@1", "--datasets", "cite-5k", "--lake", lake], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "14 proteins per cell" in done.stdout and "mean Pearson with the measured proteins of held-out cells: 0." in done.stdout
