"""Real MERFISH transcripts, cell and nucleus polygons (SpatialData zarr) into the lake and back.

``tests/ingest/data/merfish_u2os.zarr`` is the bento-tools 2.1.4.post2 wheel's MERFISH sample
of U2-OS cells (174,827 transcripts, 15 cell and 13 nucleus polygons) rewritten by spatialdata
0.7.3 with its table recounted from the transcripts (see ``build_merfish_sample.py`` there).
U2-OS is a cell line, which the lake's CELLxGENE 7.0 contract cannot say (``tissue_type``
'cell line' is 7.1): the manifest calls it bone tissue. The coordinates are image pixels
(declared with ``pixel_size_um``; the source does not say their size, 0.108 µm is the
MERFISH microscope's, Xia et al. 2019).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from aivc.ingest.submission import submit
from aivc.store.catalog import Catalog
from aivc.store.lake import Lake
from aivc.store.spatial import read_shapes, spatial_record
from aivc.store.sql import query
from tests.ingest.test_cite_submit import write_manifest

MERFISH = Path(__file__).resolve().parent / "data" / "merfish_u2os.zarr"


def merfish_manifest(**spatial: Any) -> dict[str, Any]:
    return {
        "dataset_id": "merfish-u2os",
        "title": "MERFISH of U2-OS cells (bento-tools sample)",
        "license": "CC-BY-4.0",
        "access": "public",
        "organism": "NCBITaxon:9606",
        "counts": "X",
        "genes": {"id_type": "symbol"},
        "qc": {"min_mapped_fraction": 0.9},
        "spatial": {"technology": "merfish", "is_single": True, "nucleus_boundaries": "nucleus_boundaries", "transcript_nucleus_column": "nucleus_id", "pixel_size_um": 0.108, **spatial},
        "obs": {
            "assay": {"value": "EFO:0008992"},
            "cell_type": {"value": "unknown"},
            "development_stage": {"value": "unknown"},
            "disease": {"value": "MONDO:0009807"},
            "self_reported_ethnicity": {"value": "unknown"},
            "sex": {"value": "female"},
            "tissue": {"value": "UBERON:0002481"},
            "suspension_type": {"value": "na"},
            "donor_id": {"value": "u2os"},
        },
    }


def _source() -> tuple[pd.DataFrame, Any, Any]:
    import warnings

    import spatialdata as sd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = sd.read_zarr(MERFISH)
    return s.points["transcripts"].compute(), s.shapes["cell_boundaries"], s.shapes["nucleus_boundaries"]


def test_merfish_transcripts_and_polygons_are_committed_and_queryable(lake_uri: str, tmp_path: Path) -> None:
    lake = Lake.init(lake_uri)
    res = submit(lake, MERFISH, write_manifest(tmp_path / "m.yaml", merfish_manifest()), report_dir=tmp_path / "r")
    assert res.status == "committed", [str(e) for e in res.errors]
    assert res.n_cells == 15 and res.n_genes == 130  # 5 blank 'notarget' controls are not genes
    assert not [w for w in res.warnings if w.code == "SPATIAL_TABLE_TRANSCRIPT_MISMATCH"]  # the table counts the transcripts exactly
    v = Catalog(Lake.open(lake_uri)).get("merfish-u2os")
    rec = spatial_record(v)
    assert rec is not None and (rec.technology, rec.units, rec.pixel_size_um, rec.n_located, rec.n_transcripts) == ("merfish", "pixel", 0.108, 15, 174827)
    assert rec.shapes == {"cell": 15, "nucleus": 13}

    pts, cells, nuclei = _source()
    # every transcript, exactly, with its cell
    n = query(lake, "SELECT count(*), count(obs_id), sum(in_nucleus::INT) FROM transcripts").rows[0]
    assert n == (174827, int((pts["cell_id"].astype(str) != "").sum()), int((pts["nucleus_id"].astype(str) != "").sum()))
    per_cell = query(lake, "SELECT split_part(obs_id, ':', 2) AS cell, gene, n_transcripts FROM transcripts_per_cell").to_pandas()
    want = pts[pts["cell_id"].astype(str) != ""].groupby(["cell_id", "feature_name"], observed=True).size()
    got = per_cell.set_index(["cell", "gene"])["n_transcripts"].sort_index()
    assert got.sum() == want.sum() and got.loc[("10-0", "CREBBP")] == want.loc[("10-0", "CREBBP")]
    blanks = query(lake, "SELECT count(*) FROM transcripts WHERE gene LIKE 'notarget%' AND feature_id IS NULL").rows[0][0]
    assert blanks == int(pts["feature_name"].astype(str).str.startswith("notarget").sum()) > 0

    # the locations are the polygons' centroids; a box query on the transcripts equals numpy
    loc = query(lake, "SELECT barcode, x, y FROM spatial_cells ORDER BY barcode").to_pandas().set_index("barcode")
    assert loc.loc["10-0", "x"] == pytest.approx(cells.loc["10-0"].geometry.centroid.x)
    box = query(lake, "SELECT count(*) FROM transcripts WHERE x BETWEEN 1000 AND 1100 AND y BETWEEN 500 AND 600").rows[0][0]
    assert box == int(((pts.x >= 1000) & (pts.x <= 1100) & (pts.y >= 500) & (pts.y <= 600)).sum())

    # polygons: GeoParquet, each nucleus in the cell that holds it
    shapes = query(lake, "SELECT kind, shape_id, obs_id, area FROM cell_shapes").to_pandas()
    assert len(shapes) == 28 and shapes[shapes.kind == "cell"].set_index("shape_id").loc["10-0", "area"] == pytest.approx(cells.loc["10-0"].geometry.area)
    nuc = shapes[shapes.kind == "nucleus"].set_index("shape_id")
    assert nuc.loc["16-0", "obs_id"] == "merfish-u2os@1:16-0"
    geo = read_shapes(Lake.open(lake_uri), v)
    assert geo.geometry.iloc[0].equals(cells.geometry.loc[geo["shape_id"].iloc[0]])


def test_merfish_exports_spatialdata_with_points_shapes_and_table(tmp_path: Path) -> None:
    import spatialdata as sd

    from aivc.store.export_spatial import export_spatialdata

    lake = Lake.init(str(tmp_path / "lake"))
    assert submit(lake, MERFISH, write_manifest(tmp_path / "m.yaml", merfish_manifest()), report_dir=tmp_path / "r").status == "committed"
    info = export_spatialdata(lake, "merfish-u2os", tmp_path / "out.zarr")
    assert info["elements"] == {"points": ["merfish-u2os_transcripts"], "shapes": ["merfish-u2os_cell_boundaries", "merfish-u2os_nucleus_boundaries"], "tables": ["table"]}
    back = sd.read_zarr(tmp_path / "out.zarr")
    table = back.tables["table"]
    assert table.uns["spatialdata_attrs"]["region"] == "merfish-u2os_cell_boundaries"
    polys = back.shapes["merfish-u2os_cell_boundaries"]
    assert sorted(polys.index) == sorted(table.obs["instance_id"].tolist()) and len(polys) == 15
    t = back.points["merfish-u2os_transcripts"].compute()
    assert len(t) == 174827
    # a transcript's cell is the table row the table's instance id names
    cell_of_row = pd.Series(table.obs_names, index=table.obs["instance_id"].to_numpy())
    pts, _, _ = _source()
    first = t[t["cell"].notna()].iloc[0]
    assert cell_of_row[int(first["cell"])] in set(pts.loc[(pts.x == first["x"]) & (pts.y == first["y"]), "cell_id"].astype(str))


def _mutated(tmp: Path, change: Any) -> Path:
    """A copy of the sample with ``change(points, cells, nuclei, table)`` applied."""
    import warnings

    import dask.dataframe as dd
    import spatialdata as sd
    from spatialdata.models import PointsModel, ShapesModel, TableModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = sd.read_zarr(MERFISH)
        pts = s.points["transcripts"].compute()
        cells, nuclei, table = s.shapes["cell_boundaries"].copy(), s.shapes["nucleus_boundaries"].copy(), s.tables["table"].copy()
        pts, cells, nuclei, table = change(pts, cells, nuclei, table)
        del table.uns["spatialdata_attrs"]
        out = sd.SpatialData(
            points={"transcripts": PointsModel.parse(dd.from_pandas(pts, npartitions=1, sort=False), coordinates={"x": "x", "y": "y"}, feature_key="feature_name", instance_key="cell_id")},
            shapes={"cell_boundaries": ShapesModel.parse(cells), "nucleus_boundaries": ShapesModel.parse(nuclei)},
            tables={"table": TableModel.parse(table, region="cell_boundaries", region_key="region", instance_key="cell_id")},
        )
        path = tmp / "bad.zarr"
        out.write(path)
    return path


def _set_cell(i: int, value: str) -> Any:
    def change(p, c, n, t):  # noqa: ANN001, ANN202
        p["cell_id"] = p["cell_id"].astype(str)
        p.iloc[i, p.columns.get_loc("cell_id")] = value
        return p, c, n, t

    return change


def _drop_polygon(p, c, n, t):  # noqa: ANN001, ANN202
    return p[p["cell_id"].astype(str) != "10-0"], c.drop(index="10-0"), n, t


def _extra_polygon(p, c, n, t):  # noqa: ANN001, ANN202
    from shapely.affinity import translate

    c = pd.concat([c, c.iloc[[0]].set_axis(["99-0"])])
    c.loc["99-0", "geometry"] = translate(c.loc["10-0", "geometry"], 3000, 3000)
    return p, c, n, t


def _bowtie(p, c, n, t):  # noqa: ANN001, ANN202
    from shapely.geometry import Polygon

    c.loc["13-0", "geometry"] = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    return p, c, n, t


def _nan_transcript(p, c, n, t):  # noqa: ANN001, ANN202
    p.iloc[7, p.columns.get_loc("x")] = np.nan
    return p, c, n, t


def _unknown_gene(p, c, n, t):  # noqa: ANN001, ANN202
    p["feature_name"] = p["feature_name"].astype(str)
    p.iloc[3, p.columns.get_loc("feature_name")] = "NOTAGENE1"
    return p, c, n, t


def _unknown_nucleus(p, c, n, t):  # noqa: ANN001, ANN202
    p["nucleus_id"] = p["nucleus_id"].astype(str)
    p.iloc[2, p.columns.get_loc("nucleus_id")] = "77-0"
    return p, c, n, t


BAD = [
    ("transcript-of-unknown-cell", _set_cell(0, "42-0"), {}, "SPATIAL_TRANSCRIPT_UNKNOWN_CELL", "points/transcripts row 0", "'42-0'"),
    ("cell-without-polygon", _drop_polygon, {}, "SPATIAL_LOCATION_MISSING", "shapes/cell_boundaries barcode '10-0'", "have no location"),
    ("polygon-without-cell", _extra_polygon, {}, "SPATIAL_SHAPE_WITHOUT_CELL", "shapes/cell_boundaries id '99-0'", "belong to no cell"),
    ("self-intersecting-polygon", _bowtie, {}, "SPATIAL_SHAPE_INVALID", "shapes/cell_boundaries id '13-0'", "invalid"),
    ("transcript-not-finite", _nan_transcript, {}, "SPATIAL_COORDINATE_NOT_FINITE", "points/transcripts row 7", "NaN or infinite"),
    ("transcript-gene-not-in-table", _unknown_gene, {}, "SPATIAL_TRANSCRIPT_UNKNOWN_GENE", "points/transcripts row 3", "'NOTAGENE1'"),
    ("transcript-of-unknown-nucleus", _unknown_nucleus, {}, "SPATIAL_TRANSCRIPT_UNKNOWN_NUCLEUS", "points/transcripts row 2", "'77-0'"),
    ("no-such-points-element", lambda p, c, n, t: (p, c, n, t), {"transcripts": "spots"}, "SPATIAL_ELEMENT_MISSING", "points/spots", "spatial.transcripts"),
    ("no-such-nucleus-column", lambda p, c, n, t: (p, c, n, t), {"transcript_nucleus_column": "nucleus"}, "SPATIAL_ELEMENT_MISSING", "column nucleus", "transcript_nucleus_column"),
]


@pytest.mark.parametrize(("case", "change", "spatial", "code", "where", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_merfish_input_is_refused_and_changes_nothing(tmp_path: Path, case: str, change: Any, spatial: dict[str, Any], code: str, where: str, message: str) -> None:
    from tests.conftest import assert_refused, lake_snapshot

    lake = Lake.init(str(tmp_path / "lake"))
    before = lake_snapshot(tmp_path / "lake")
    data = _mutated(tmp_path, change)
    res = submit(lake, data, write_manifest(tmp_path / "m.yaml", copy.deepcopy(merfish_manifest(**spatial))), report_dir=tmp_path / "r")
    assert_refused(res, code, where, message, case)
    assert lake_snapshot(tmp_path / "lake") == before


def test_table_that_does_not_count_its_transcripts_is_a_warning(tmp_path: Path) -> None:
    """The sample's table is exactly its transcripts counted per cell and gene; one transcript
    moved to another cell makes two cells disagree: reported, with both counts, and committed."""
    lake = Lake.init(str(tmp_path / "lake"))
    data = _mutated(tmp_path, _set_cell(0, "10-0"))  # row 0: a notarget001 transcript of cell 31-0
    res = submit(lake, data, write_manifest(tmp_path / "m.yaml", merfish_manifest()), report_dir=tmp_path / "r")
    assert res.status == "committed", [str(e) for e in res.errors]
    hits = [w for w in res.warnings if w.code == "SPATIAL_TABLE_TRANSCRIPT_MISMATCH"]
    assert len(hits) == 1 and hits[0].where.endswith("bad.zarr: points/transcripts cell '10-0' gene 'notarget001'"), hits
    assert hits[0].message.startswith("2 cells of the table") and "(cell '10-0': 2 notarget001 in the table, 3 transcripts)" in hits[0].message
