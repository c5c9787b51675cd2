"""Bad multimodal submissions: each one mistake in a real file (CITE-seq h5ad, Multiome h5mu),
each refused with its own code and where, and the lake left byte for byte as it was.

``tests/ingest/data/multiome_rna_atac.h5mu`` is ``test_rna_atac.h5mu`` of the shared real
10x Multiome subset, byte for byte (sha256 9f5c1943c1159e9fa494216993f00da26c138ba68d6afe37340774db739da93d;
scverse/muon tests/data/atac at 03c762e, BSD-3-Clause; 10x Genomics PBMC 10k Multiome, CC BY 4.0).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from aivc.ingest.submission import submit
from aivc.store.lake import Lake
from tests.conftest import assert_refused, lake_snapshot
from tests.ingest.test_cite_submit import EXAMPLES, OBS, cite_manifest, write_manifest

DATA = Path(__file__).resolve().parent / "data"
H5MU = DATA / "multiome_rna_atac.h5mu"


def multiome_manifest(**atac: Any) -> dict[str, Any]:
    return {
        "dataset_id": "multiome-pbmc",
        "title": "10x Multiome PBMC",
        "license": "CC-BY-4.0",
        "access": "public",
        "organism": "NCBITaxon:9606",
        "measurements": {
            "RNA": {"modality": "rna", "source": "mod:rna", "genes": {"id_type": "ensembl", "column": "gene_ids"}},
            "ATAC": {"modality": "chromatin", "source": "mod:atac", "peaks": {"column": "interval"}, "genome": "GRCh38", **atac},
        },
        "obs": {**OBS, "assay": {"value": "EFO:0030059"}, "suspension_type": {"value": "nucleus"}},
    }


# -- mutations of the real files ----------------------------------------------------------------
def _cite(mutate: Callable[[ad.AnnData], None]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        a = ad.read_h5ad(EXAMPLES / "cite_pbmc10k.h5ad")
        mutate(a)
        out = tmp / "cite.h5ad"
        a.write_h5ad(out)
        return out

    return make


def _names(change: Callable[[list[str]], list[str]]) -> Callable[[ad.AnnData], None]:
    def mutate(a: ad.AnnData) -> None:
        a.uns["protein_names"] = np.asarray(change([str(n) for n in a.uns["protein_names"]]), dtype=object)

    return mutate


def _protein(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[ad.AnnData], None]:
    def mutate(a: ad.AnnData) -> None:
        a.obsm["protein_expression"] = change(np.asarray(a.obsm["protein_expression"], dtype=np.float64).copy())

    return mutate


def _set(i: int, j: int, value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(x: np.ndarray) -> np.ndarray:
        x[i, j] = value
        return x

    return change


def _h5mu(mutate: Callable[[Any], None]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        import mudata as md

        md.set_options(pull_on_update=False)
        m = md.read_h5mu(H5MU)
        mutate(m)
        out = tmp / "multiome.h5mu"
        m.write_h5mu(out)
        return out

    return make


def _peak(i: int, interval: str) -> Callable[[Any], None]:
    def mutate(m: Any) -> None:
        atac = m.mod["atac"]
        iv = atac.var["interval"].astype(str).to_numpy().copy()
        iv[i] = interval
        atac.var["interval"] = iv

    return mutate


def _drop_atac_cell(m: Any) -> None:
    m.mod["atac"] = m.mod["atac"][1:].copy()


def _set_row(i: int, value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(x: np.ndarray) -> np.ndarray:
        x[i, :] = value
        return x

    return change


PEAK0 = "chr1:100350982-100353664"
CASES: list[tuple[str, Callable[[Path], Path], dict[str, Any] | None, str, str, str]] = [
    # (id, make data, manifest (None: default), code, where contains, message contains)
    ("obsm-key-missing", _cite(lambda a: None), cite_manifest("cite-c", measurements={"ADT": {"modality": "protein", "source": "obsm:adt", "features": "uns:protein_names"}}), "MEASUREMENT_SOURCE_MISSING", "obsm/adt", "protein_expression"),
    ("uns-names-missing", _cite(lambda a: None), cite_manifest("cite-c", measurements={"ADT": {"modality": "protein", "source": "obsm:protein_expression", "features": "uns:antibodies"}}), "MEASUREMENT_FEATURES_MISSING", "uns/antibodies", "no such entry"),
    ("names-fewer-than-columns", _cite(_names(lambda n: n[:-1])), None, "MEASUREMENT_FEATURES_MISSING", "uns:protein_names", "13 feature names for a matrix of 14"),
    ("obsm-without-names", _cite(lambda a: None), cite_manifest("cite-c", measurements={"ADT": {"modality": "protein", "source": "obsm:protein_expression"}}), "MEASUREMENT_FEATURES_MISSING", "measurements/obsm:protein_expression", "not given"),
    ("mod-source-in-h5ad", _cite(lambda a: None), cite_manifest("cite-c", measurements={"ADT": {"modality": "protein", "source": "mod:prot"}}), "MEASUREMENT_SOURCE_UNSUPPORTED", "measurements/ADT/source", "MuData .h5mu or a 10x"),
    ("protein-negative", _cite(_protein(_set(3, 2, -4))), None, "MATRIX_NEGATIVE", "obsm['protein_expression'][cell 'AAACCCAGTATCGAAA-1' (row 3), gene 'CD8a_TotalSeqB' (column 2)]", "-4"),
    ("protein-not-integer", _cite(_protein(_set(5, 0, 2.5))), None, "MATRIX_NOT_INTEGER", "gene 'CD3_TotalSeqB' (column 0)", "2.5"),
    ("protein-nan", _cite(_protein(_set(7, 9, np.nan))), None, "MATRIX_NOT_FINITE", "gene 'CD45RA_TotalSeqB' (column 9)", "not finite"),
    ("protein-empty-cell", _cite(_protein(_set_row(11, 0))), None, "MATRIX_EMPTY_CELLS", "obsm['protein_expression'] cell 'AAACGAACAATCGTCA-1' (row 11)", "no counts at all"),
    ("antibody-twice", _cite(_names(lambda n: [*n[:-1], n[0]])), None, "PROTEIN_NAME_DUPLICATE", "uns['protein_names'][13] 'CD3_TotalSeqB'", ""),
    ("antibody-empty", _cite(_names(lambda n: [*n[:4], "", *n[5:]])), None, "PROTEIN_NAME_EMPTY", "uns['protein_names'][4]", ""),
    ("antibodies-collide", _cite(_names(lambda n: [*n[:3], "CD8", *n[4:]])), None, "PROTEIN_FEATURE_COLLISION", "'CD8'", "CD8a"),
    ("h5mu-rna-mod-missing", _h5mu(lambda m: None), {**multiome_manifest(), "measurements": {**multiome_manifest()["measurements"], "RNA": {"modality": "rna", "source": "mod:gex", "genes": {"id_type": "ensembl", "column": "gene_ids"}}}}, "MEASUREMENT_SOURCE_MISSING", "measurements/RNA/source", "['atac', 'rna']"),
    ("h5mu-atac-mod-missing", _h5mu(lambda m: None), {**multiome_manifest(), "measurements": {**multiome_manifest()["measurements"], "ATAC": {"modality": "chromatin", "source": "mod:peaks"}}}, "MEASUREMENT_SOURCE_MISSING", "mod/peaks", "['atac', 'rna']"),
    ("h5mu-obsm-source", _h5mu(lambda m: None), {**multiome_manifest(), "measurements": {**multiome_manifest()["measurements"], "ATAC": {"modality": "chromatin", "source": "obsm:atac"}}}, "MEASUREMENT_SOURCE_UNSUPPORTED", "measurements/ATAC/source", "mod:<name>"),
    ("peaks-column-missing", _h5mu(lambda m: None), multiome_manifest(peaks={"column": "peak"}), "MEASUREMENT_FEATURES_MISSING", "var/peak", "interval"),
    ("atac-cell-missing", _h5mu(_drop_atac_cell), None, "MEASUREMENT_CELLS_MISSING", "mod/atac/X cell 'AAACAGCCAGCATGTC-1'", "no ATAC row"),
    ("peak-unknown-contig", _h5mu(_peak(0, "chrQ:100-200")), None, "PEAK_CONTIG_UNKNOWN", "mod/atac/var['interval']", "'chrQ:100-200' (row 0)"),
    ("peak-backwards", _h5mu(_peak(1, "chr1:500-400")), None, "PEAK_START_NOT_BEFORE_END", "mod/atac/var['interval']", "'chr1:500-400' (row 1)"),
    ("peak-past-end", _h5mu(_peak(2, "chr1:248956000-248957000")), None, "PEAK_PAST_CHROMOSOME_END", "mod/atac/var['interval']", "248,956,422"),
    ("peak-duplicate", _h5mu(_peak(3, PEAK0)), None, "PEAK_DUPLICATE", "mod/atac/var['interval']", "(row 3)"),
    ("peak-unparseable", _h5mu(_peak(4, "chr1_100_200")), None, "PEAK_UNPARSEABLE", "mod/atac/var['interval']", "'chr1_100_200' (row 4)"),
    ("fragments-file-missing", _h5mu(lambda m: None), multiome_manifest(fragments="nope.tsv.gz"), "FRAGMENTS_NOT_FOUND", "measurements/ATAC/fragments 'nope.tsv.gz'", "does not exist"),
]


@pytest.fixture(scope="module")
def filled_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake that already holds a CITE-seq dataset, so that refusals are checked against data."""
    root = tmp_path_factory.mktemp("mm-bad")
    lake = Lake.init(str(root / "lake"))
    res = submit(lake, EXAMPLES / "cite_pbmc10k.h5ad", write_manifest(root / "m.yaml", cite_manifest("cite-a")), report_dir=root / "r")
    assert res.status == "committed", [str(e) for e in res.errors]
    return root / "lake"


@pytest.mark.parametrize(("case", "make", "manifest", "code", "where", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_multimodal_input_is_refused_and_changes_nothing(filled_lake: Path, tmp_path: Path, case: str, make: Callable[[Path], Path], manifest: dict[str, Any] | None, code: str, where: str, message: str) -> None:
    data = make(tmp_path)
    default = multiome_manifest() if data.suffix == ".h5mu" else cite_manifest("cite-b")
    mf = write_manifest(tmp_path / "m.yaml", copy.deepcopy(manifest) if manifest is not None else default)
    before = lake_snapshot(filled_lake)
    res = submit(Lake.open(str(filled_lake)), data, mf, report_dir=tmp_path / "report")
    assert_refused(res, code, where, message, case)
    assert lake_snapshot(filled_lake) == before


def test_protein_matrix_as_sparse_obsm_is_read(tmp_path: Path) -> None:
    """A CSR obsm (as some exports write it) is read like the dense one."""
    a = ad.read_h5ad(EXAMPLES / "cite_pbmc10k.h5ad")
    a.obsm["protein_expression"] = sp.csr_matrix(np.asarray(a.obsm["protein_expression"], dtype=np.float32))
    a.write_h5ad(tmp_path / "sparse.h5ad")
    lake = Lake.init(str(tmp_path / "lake"))
    res = submit(lake, tmp_path / "sparse.h5ad", write_manifest(tmp_path / "m.yaml", cite_manifest("cite-sparse")), report_dir=tmp_path / "r")
    assert res.status == "committed" and res.measurements == {"ADT": 14}
