"""Every kind of bad submission is rejected with its own code, a precise where/message,
and leaves the lake byte-for-byte unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from aivc.ingest.submission import submit
from tests.conftest import base_manifest, lake_snapshot, make_adata


def _set(i: int, j: int, value: float) -> Callable[[Any], None]:
    def mutate(adata: Any) -> None:
        X = adata.X.toarray()
        X[i, j] = value
        adata.X = sp.csr_matrix(X)

    return mutate


def _normalize(log: bool = False, round_: bool = False) -> Callable[[Any], None]:
    def mutate(adata: Any) -> None:
        X = adata.X.toarray().astype(np.float64)
        X = X / X.sum(1, keepdims=True) * 1e4
        if round_:
            X = np.round(X)
        if log:
            X = np.log1p(X)
        adata.X = sp.csr_matrix(X.astype(np.float32))

    return mutate


def _empty_cell(i: int) -> Callable[[Any], None]:
    def mutate(adata: Any) -> None:
        X = adata.X.toarray()
        X[i, :] = 0
        adata.X = sp.csr_matrix(X)

    return mutate


def _rename_cell(i: int, to: str) -> Callable[[Any], Any]:
    def mutate(adata: Any) -> Any:
        names = list(adata.obs_names)
        names[i] = to
        adata.obs_names = names
        return adata

    return mutate


def _rename_gene(i: int, to: str) -> Callable[[Any], Any]:
    def mutate(adata: Any) -> Any:
        names = list(adata.var_names)
        names[i] = to
        adata.var_names = names
        return adata

    return mutate


def _dup_gene(adata: Any) -> Any:
    names = list(adata.var_names)
    names[2] = names[0]
    adata.var_names = names
    return adata


def _obs(col: str, i: int, value: Any) -> Callable[[Any], None]:
    def mutate(adata: Any) -> None:
        vals = adata.obs[col].astype(object).to_numpy().copy()
        vals[i] = value
        adata.obs[col] = vals

    return mutate


def _ensembl_versions(adata: Any) -> Any:
    from aivc.store.reference import gene_reference

    ref = gene_reference("homo_sapiens")
    by_sym = dict(zip(ref["symbol"], ref["gene_id"], strict=False))
    ids = [by_sym[s] + ".3" for s in adata.var_names]
    ids[1] = ids[0].replace(".3", ".4")  # two versions of one gene
    adata.var_names = ids
    return adata


def _junk_genes(frac: float) -> Callable[[Any], Any]:
    def mutate(adata: Any) -> Any:
        n = int(adata.n_vars * frac)
        adata.var_names = [f"NOTAGENE{i}" if i < n else g for i, g in enumerate(adata.var_names)]
        return adata

    return mutate


def _obsm_nan(adata: Any) -> None:
    adata.obsm["X_umap"][5, 0] = np.nan


def _manifest(**over: Any) -> dict[str, Any]:
    return base_manifest(**over)


def _obs_manifest(field: str, spec: dict[str, Any], **over: Any) -> dict[str, Any]:
    m = base_manifest(**over)
    m["obs"][field] = spec
    return m


def _without(key: str) -> dict[str, Any]:
    m = base_manifest()
    del m[key]
    return m


# (id, mutate, manifest, code, where-substring, message-substring)
CASES: list[tuple[str, Any, Any, str, str, str]] = [
    ("negative", _set(2, 3, -1), None, "MATRIX_NEGATIVE", "cell-0002", "negative"),
    ("nan", _set(4, 1, np.nan), None, "MATRIX_NOT_FINITE", "cell-0004", "not finite"),
    ("inf", _set(6, 2, np.inf), None, "MATRIX_NOT_FINITE", "cell-0006", "inf"),
    ("non-integer", _set(8, 4, 2.5), None, "MATRIX_NOT_INTEGER", "cell-0008", "2.5"),
    ("too-large", _set(9, 4, 2.0**25), None, "MATRIX_COUNT_TOO_LARGE", "cell-0009", "exceeds"),
    ("normalized", _normalize(), None, "MATRIX_NORMALIZED", "X", "normalized"),
    ("normalized-rounded", _normalize(round_=True), None, "MATRIX_NORMALIZED", "X", "10000"),
    ("log-normalized", _normalize(log=True), None, "MATRIX_LOG_TRANSFORMED", "X[cell", "log"),
    ("empty-cell", _empty_cell(7), None, "MATRIX_EMPTY_CELLS", "cell-0007", "no counts"),
    ("no-cells", lambda a: a[:0].copy(), None, "DATASET_EMPTY", "X", "0 cells"),
    ("duplicate-cells", _rename_cell(3, "cell-0001"), None, "OBS_DUPLICATE_IDS", "row 3", "cell-0001"),
    ("duplicate-genes", _dup_gene, None, "VAR_DUPLICATE_IDS", "var", "more than once"),
    ("raw-missing", None, _manifest(counts="raw"), "DATA_UNREADABLE", "raw", "no raw.X"),
    ("layer-missing", None, _manifest(counts="layer:counts"), "DATA_UNREADABLE", "layers/counts", "layer 'counts'"),
    ("manifest-no-id", None, _without("dataset_id"), "MANIFEST_INVALID", "dataset_id (missing)", "dataset_id"),
    ("manifest-bad-access", None, _manifest(access="secret"), "MANIFEST_INVALID", "access", "secret"),
    ("manifest-unknown-key", None, _manifest(colour="blue"), "MANIFEST_INVALID", "yaml: colour", "'colour' is not a manifest key"),
    ("manifest-embargo-no-date", None, _manifest(access="embargoed"), "MANIFEST_INVALID", "embargo_until", "embargo_until"),
    ("manifest-column-and-value", None, _obs_manifest("sex", {"column": "sex", "value": "unknown"}), "MANIFEST_INVALID", "obs/sex", "give exactly one of 'column' or 'value'"),
    ("manifest-bad-organism", None, _manifest(organism="NCBITaxon:7955"), "MANIFEST_INVALID", "organism", "NCBITaxon:7955"),
    ("manifest-bad-dataset-id", None, _manifest(dataset_id="Bad Id!"), "MANIFEST_INVALID", "dataset_id", "Bad Id!"),
    ("obs-column-missing", None, _obs_manifest("donor_id", {"column": "patient"}), "OBS_COLUMN_MISSING", "patient", "patient"),
    ("obs-null", _obs("donor", 11, None), None, "OBS_NULL_VALUE", "cell-0011", "donor"),
    ("unknown-term", None, _obs_manifest("tissue", {"value": "UBERON:9999999"}), "OBS_UNKNOWN_TERM", "tissue", "UBERON:9999999"),
    ("wrong-ontology", None, _obs_manifest("cell_type", {"value": "UBERON:0000178"}), "OBS_WRONG_ONTOLOGY", "cell_type", "UBERON:0000178"),
    ("unmatched-label", _obs("label", 13, "B-celz"), _obs_manifest("cell_type", {"column": "label", "label_map": {"Bcell": "B cell", "Tcell": "T cell"}}), "OBS_UNMATCHED_LABEL", "cell-0013", "B cell"),
    ("sex-wrong-term", None, _obs_manifest("sex", {"value": "PATO:0000461"}), "OBS_WRONG_ONTOLOGY", "sex", "PATO:0000461"),
    ("forbidden-cell-type", None, _obs_manifest("cell_type", {"value": "CL:0000000"}), "OBS_FORBIDDEN_TERM", "cell_type", "CL:0000000"),
    ("bad-tissue-type", None, _obs_manifest("tissue_type", {"value": "blob"}), "OBS_BAD_ENUM", "tissue_type", "blob"),
    ("bad-suspension", None, _obs_manifest("suspension_type", {"value": "droplet"}), "OBS_BAD_ENUM", "suspension_type", "droplet"),
    ("bad-bool", None, _obs_manifest("is_primary_data", {"value": "maybe"}), "OBS_BAD_BOOL", "is_primary_data", "maybe"),
    ("human-mmusdv", None, _obs_manifest("development_stage", {"value": "MmusDv:0000110"}), "OBS_WRONG_ONTOLOGY", "development_stage", "MmusDv:0000110"),
    ("genes-wrong-id-type", None, _manifest(genes={"id_type": "ensembl"}), "GENES_WRONG_ID_TYPE", "var.index", "symbol"),
    ("genes-low-fraction", _junk_genes(0.5), None, "GENES_LOW_MAPPED_FRACTION", "var.index", "50.0%"),
    ("genes-mapped-twice", _ensembl_versions, _manifest(genes={"id_type": "ensembl"}), "GENES_MAPPED_TWICE", "var.index", ".4"),
    ("genes-column-missing", None, _manifest(genes={"id_type": "symbol", "column": "gene_symbols"}), "GENES_COLUMN_MISSING", "gene_symbols", "gene_symbols"),
    ("obsm-nan", _obsm_nan, None, "OBSM_NOT_FINITE", "obsm['X_umap'] row 5", "NaN"),
]


@pytest.fixture(scope="module")
def committed_lake(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A lake with one committed dataset, shared by every bad-input case."""
    import yaml

    from aivc.store.lake import Lake
    from aivc.store.reference import gene_reference

    root = tmp_path_factory.mktemp("badlake")
    lake = Lake.init(root / "lake")
    ref = gene_reference("homo_sapiens")
    pc = ref[(ref["gene_type"] == "protein_coding") & ~ref["symbol"].duplicated(keep=False)]
    genes = pc.iloc[:: max(1, len(pc) // 115)].head(115)
    adata = make_adata(genes, seed=42)
    h5 = root / "good.h5ad"
    adata.write_h5ad(h5)
    mf = root / "good.yaml"
    mf.write_text(yaml.safe_dump(base_manifest("good-one")))
    assert submit(lake, h5, mf).status == "committed"
    return lake


def test_at_least_thirty_distinct_cases():
    assert len({c[0] for c in CASES}) >= 30
    assert len({c[3] for c in CASES}) >= 25


@pytest.mark.parametrize(("name", "mutate", "manifest", "code", "where", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_rejected_and_lake_unchanged(committed_lake, write_submission, tmp_path, name, mutate, manifest, code, where, message):
    before = lake_snapshot(committed_lake.root)
    h5, mf = write_submission(mutate=mutate, manifest=manifest)
    res = submit(committed_lake, h5, mf, report_dir=tmp_path / "report")
    assert res.status == "rejected"
    codes = [e.code for e in res.errors]
    assert code in codes, f"{code} not in {codes}: {[str(e) for e in res.errors]}"
    err = next(e for e in res.errors if e.code == code)
    assert where in err.where, err
    assert message in err.message, err
    assert lake_snapshot(committed_lake.root) == before
    assert (tmp_path / "report" / "report.json").is_file()
    assert (tmp_path / "report" / "report.html").is_file()


def test_not_an_h5ad(committed_lake, tmp_path):
    before = lake_snapshot(committed_lake.root)
    bad = tmp_path / "bad.h5ad"
    bad.write_text("cell,gene,count\n")
    mf = tmp_path / "m.yaml"
    import yaml

    mf.write_text(yaml.safe_dump(base_manifest()))
    res = submit(committed_lake, bad, mf, report_dir=tmp_path / "r")
    assert res.status == "rejected"
    assert res.errors[0].code == "DATA_UNREADABLE"
    assert "bad.h5ad" in res.errors[0].where
    assert lake_snapshot(committed_lake.root) == before


def test_shape_mismatch(committed_lake, write_submission, tmp_path):
    import h5py

    h5, mf = write_submission()
    with h5py.File(h5, "r+") as f:
        f["X"].attrs["shape"] = np.array([61, 120])
    before = lake_snapshot(committed_lake.root)
    res = submit(committed_lake, h5, mf, report_dir=tmp_path / "r")
    assert res.status == "rejected"
    err = next(e for e in res.errors if e.code == "MATRIX_SHAPE_MISMATCH")
    assert "61 x 120" in err.message and "60" in err.message
    assert lake_snapshot(committed_lake.root) == before


def test_invalid_yaml_names_the_line(committed_lake, write_submission, tmp_path):
    h5, mf = write_submission()
    mf.write_text("dataset_id: x\ntitle: [unclosed\n")
    res = submit(committed_lake, h5, mf, report_dir=tmp_path / "r")
    assert res.status == "rejected"
    assert res.errors[0].code == "MANIFEST_INVALID"
    assert f"{mf}:" in res.errors[0].where
