"""Real 10x Multiome cells (RNA + ATAC peaks + fragments) from submission to export.

Data: ``tests/ingest/data/multiome_rna_atac.h5mu`` (the shared real subset's MuData, byte for
byte) and ``multiome_fragments.tsv.gz`` (its fragments on a few contigs, cells' and background
barcodes alike; see ``multiome_PROVENANCE.md``).
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aivc.ingest.submission import submit
from aivc.store.catalog import Catalog
from aivc.store.export import export_h5ad
from aivc.store.export_multimodal import export_h5mu
from aivc.store.lake import Lake
from aivc.store.read import LakeQuery
from aivc.store.sql import query
from tests.ingest.test_cite_submit import write_manifest
from tests.ingest.test_multimodal_bad_inputs import H5MU, multiome_manifest

DATA = Path(__file__).resolve().parent / "data"
FRAGMENTS = DATA / "multiome_fragments.tsv.gz"
CXG = Path(__file__).resolve().parents[2] / ".cxg-venv" / "bin" / "cellxgene-schema"


def _fragment_counts() -> pd.Series:
    """Fragments per barcode, counted the plain way (every line, header lines skipped)."""
    with gzip.open(FRAGMENTS, "rt") as fh:
        barcodes = [line.split("\t")[3] for line in fh if not line.startswith("#")]
    return pd.Series(barcodes).value_counts()


def _with_embedding(out: Path, keep: np.ndarray | None = None) -> Path:
    """The real h5mu with a PCA of its RNA in obsm (CELLxGENE requires an embedding), optionally fewer cells."""
    import mudata as md

    md.set_options(pull_on_update=False)
    m = md.read_h5mu(H5MU)
    if keep is not None:
        m = m[keep].copy()
    x = np.log1p(m.mod["rna"].X.toarray())
    x -= x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    m.mod["rna"].obsm["X_pca"] = (u[:, :10] * s[:10]).astype(np.float64)
    m.write_h5mu(out)
    return out


def test_multiome_with_fragments_round_trips(tmp_path: Path) -> None:
    import mudata as md

    lake = Lake.init(str(tmp_path / "lake"))
    mf = write_manifest(tmp_path / "m.yaml", multiome_manifest(fragments=str(FRAGMENTS)))
    res = submit(lake, H5MU, mf, report_dir=tmp_path / "r")
    assert res.status == "committed", [str(e) for e in res.errors]
    assert res.measurements == {"ATAC": 174, "GENE_ACTIVITY": 45}
    src = md.read_h5mu(H5MU)
    cells = src.mod["rna"].obs_names
    counts = _fragment_counts()
    per_cell = counts.reindex(cells).fillna(0).astype(int)
    without = int((per_cell == 0).sum())
    assert [w.code for w in res.warnings if w.code.startswith("FRAGMENTS_")] == ["FRAGMENTS_CELLS_WITHOUT_FRAGMENTS"]
    assert f"{without:,} of 1,000 cells have no valid fragment" in next(w.message for w in res.warnings if w.code == "FRAGMENTS_CELLS_WITHOUT_FRAGMENTS")

    # the ATAC peak counts come back exactly, the peaks as canonical intervals
    q = LakeQuery.open(lake, datasets=["multiome-pbmc"], measurement="ATAC")
    feats = q.features(columns=["feature_name", "chrom", "start", "end"]).frame
    assert feats["feature_id"].tolist() == src.mod["atac"].var["interval"].astype(str).tolist()
    got = np.vstack([c for _, c in q.chunks(q.obs(), q.features().joinids, chunk_rows=256)])
    np.testing.assert_array_equal(got, src.mod["atac"].X.toarray())

    # per-cell ATAC QC in SQL, fragments per cell as counted above; non-cell fragments left out
    qc = dict(query(lake, "SELECT split_part(obs_id, ':', 2), n_fragments FROM qc_atac").rows)
    assert len(qc) == 1000 and all(qc[c] == per_cell[c] for c in cells)
    v = Catalog(lake).get("multiome-pbmc")
    assert v.measurements["ATAC"]["n_fragments"] == int(per_cell.sum()) < int(counts.sum())
    assert v.measurements["ATAC"]["n_cells_with_fragments"] == 1000 - without
    frip = query(lake, "SELECT min(frip) >= 0, max(frip) <= 1, count(tss_enrichment) FROM qc_atac").rows[0]
    assert frip[:2] == (True, True) and frip[2] == 1000 - without

    # gene activity: a derived measurement over the RNA genes
    ga = LakeQuery.open(lake, datasets=["multiome-pbmc"], measurement="GENE_ACTIVITY")
    assert ga.features().frame["gene_id"].tolist() == LakeQuery.open(lake, datasets=["multiome-pbmc"]).features().frame["gene_id"].tolist()
    activity = np.vstack([c for _, c in ga.chunks(ga.obs(), ga.features().joinids, chunk_rows=500)])
    assert activity.sum() > 0 and (activity.sum(axis=1) <= per_cell.to_numpy() * 45).all()

    # export: every measurement in one .h5mu, exact
    out = tmp_path / "mo.h5mu"
    info = export_h5mu(lake, "multiome-pbmc", out)
    assert info["modalities"] == {"rna": [1000, 45], "atac": [1000, 174], "gene_activity": [1000, 45]}
    back = md.read_h5mu(out)
    np.testing.assert_array_equal(back["atac"].X.toarray(), src.mod["atac"].X.toarray())
    rna_cols = [src.mod["rna"].var["gene_ids"].tolist().index(g) for g in back["rna"].var_names]
    np.testing.assert_array_equal(back["rna"].X.toarray(), src.mod["rna"].X.toarray()[:, rna_cols])

    # an .h5ad export brings the cells' fragments (+ index); the missing cells are said
    res_h5ad = export_h5ad(lake, "multiome-pbmc", tmp_path / "mo.h5ad")
    assert Path(res_h5ad["fragments"]).name == "mo.fragments.tsv.gz" and Path(res_h5ad["fragments_index"]).is_file()
    assert f"{without} of 1000 cells have no fragment" in res_h5ad["fragments_warning"]
    with gzip.open(res_h5ad["fragments"], "rt") as fh:
        exported = pd.Series([line.split("\t")[3] for line in fh]).value_counts()
    assert exported.sort_index().equals(per_cell[per_cell > 0].sort_index().rename(exported.name).rename_axis(exported.index.name))


def test_fragments_export_is_accepted_by_cellxgene_process_fragment(tmp_path: Path) -> None:
    """Cells that all have fragments (as CELLxGENE requires) and an embedding: the .h5ad passes
    ``cellxgene-schema validate`` and the fragments ``process-fragment``."""
    assert CXG.is_file(), f"{CXG} missing: create it with `bash .ci/cxg-venv.sh` (the README's test command does)"
    import mudata as md

    cells = md.read_h5mu(H5MU).mod["rna"].obs_names
    keep = cells.isin(_fragment_counts().index)
    data = _with_embedding(tmp_path / "mo.h5mu", np.asarray(keep))
    lake = Lake.init(str(tmp_path / "lake"))
    res = submit(lake, data, write_manifest(tmp_path / "m.yaml", multiome_manifest(fragments=str(FRAGMENTS))), report_dir=tmp_path / "r")
    assert res.status == "committed", [str(e) for e in res.errors]
    out = tmp_path / "mo.h5ad"
    info = export_h5ad(lake, "multiome-pbmc", out)
    assert "fragments_warning" not in info
    proc = subprocess.run([str(CXG), "validate", str(out)], capture_output=True, text=True, timeout=600)
    assert "is_valid=True" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    proc = subprocess.run([str(CXG), "process-fragment", str(out), info["fragments"]], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    # cellxgene-schema 7.1.2 exits 1 even on success (`if not process_fragment(...)` on an empty error list): read its verdict
    assert "Fragment and Anndata file are valid" in log and "Errors found" not in log, log[-3000:]


@pytest.mark.parametrize("backend", ["s3"])
def test_multiome_on_object_storage(backend: str, s3_lake_uri: str, tmp_path: Path) -> None:
    """The fragments and their index are committed with the version on S3 and come back on export."""
    lake = Lake.init(s3_lake_uri)
    res = submit(lake, H5MU, write_manifest(tmp_path / "m.yaml", multiome_manifest(fragments=str(FRAGMENTS))), report_dir=tmp_path / "r")
    assert res.status == "committed", [str(e) for e in res.errors]
    info = export_h5ad(Lake.open(s3_lake_uri), "multiome-pbmc", tmp_path / "mo.h5ad")
    with gzip.open(info["fragments"], "rt") as fh:
        n = sum(1 for _ in fh)
    assert n == Catalog(lake).get("multiome-pbmc").measurements["ATAC"]["n_fragments"]
