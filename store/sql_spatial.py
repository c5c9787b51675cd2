"""The spatial SQL views and macros over the lake's committed spatial versions.

``spatial_cells``
    One row per located spot / cell of every *current* spatial dataset version:
    ``obs_id`` (joins ``cells``), ``dataset_id``, ``version``, ``barcode``, ``x``, ``y`` (the
    dataset's full-resolution frame: Visium full-resolution pixels, image pixels or
    micrometres; see ``spatial_datasets.units``), Visium's ``in_tissue``, ``array_row``,
    ``array_col``, an image submission's ``label_id`` (its id in the segmentation), ``tile``.
``spatial_cells_all_versions``
    The same for every committed spatial version.
``spatial_datasets``
    One row per spatial version: technology, ``is_single``, library id, units, cells located,
    the SOMA Scene name.
``transcripts``
    Imaging-based versions (MERFISH, Xenium): one row per transcript of every current
    version, ``obs_id`` of its cell (null: unassigned), ``dataset_id``, ``version``, ``x``,
    ``y`` (µm), ``gene`` as submitted, ``feature_id`` (reference id; null for blank
    controls), ``in_nucleus``, ``tile``.
``transcripts_per_cell``
    ``dataset_id, version, obs_id, gene, feature_id, n_transcripts``: the transcripts of each
    cell per gene (what the cell x gene table counts).
``cell_shapes``
    One row per cell or nucleus polygon: ``dataset_id, version, kind, shape_id, obs_id,
    area, x_min, y_min, x_max, y_max, geometry`` (WKB).
``spatial_images``
    One row per level of every image: ``image``, ``level``, ``height``, ``width``,
    ``channels``, ``scale`` (image pixel = ``x`` x scale at that level), ``pixel_size_um``,
    ``path`` (the OME-Zarr, relative to the version folder).

The table macros ``cells_within(px, py, r)``, ``cells_within_in(dataset, px, py, r)``,
``cells_near(obs_id, r)`` and ``cells_in_box(x0, y0, x1, y1)`` run over ``spatial_cells``
(:mod:`aivc.store.spatial_index`): a bounding box the Parquet scan prunes row groups with,
then the exact distance.

>>> query(lake, "SELECT n.obs_id, n.distance FROM cells_near('visium@1:AAAC-1', 150) n")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from aivc.store.catalog import DatasetVersion
from aivc.store.lake import Lake
from aivc.store.spatial import IMAGE_LEVELS, LOCATIONS, SHAPES, TRANSCRIPTS, spatial_record
from aivc.store.spatial_index import spatial_macros

__all__ = ["define_spatial_views"]

_CELL_STUB = (
    ("obs_id", "VARCHAR"), ("dataset_id", "VARCHAR"), ("version", "INTEGER"), ("barcode", "VARCHAR"), ("x", "DOUBLE"), ("y", "DOUBLE"),
    ("in_tissue", "BIGINT"), ("array_row", "BIGINT"), ("array_col", "BIGINT"), ("label_id", "BIGINT"), ("tile", "BIGINT"),
)
_TRANSCRIPT_STUB = (("obs_id", "VARCHAR"), ("dataset_id", "VARCHAR"), ("version", "INTEGER"), ("x", "DOUBLE"), ("y", "DOUBLE"), ("tile", "BIGINT"), ("gene", "VARCHAR"), ("feature_id", "VARCHAR"), ("in_nucleus", "BOOLEAN"))
_SHAPE_STUB = (("dataset_id", "VARCHAR"), ("version", "INTEGER"), ("kind", "VARCHAR"), ("shape_id", "VARCHAR"), ("obs_id", "VARCHAR"), ("area", "DOUBLE"), ("x_min", "DOUBLE"), ("y_min", "DOUBLE"), ("x_max", "DOUBLE"), ("y_max", "DOUBLE"), ("geometry", "BLOB"))
_IMAGE_STUB = (("image", "VARCHAR"), ("level", "BIGINT"), ("height", "BIGINT"), ("width", "BIGINT"), ("channels", "BIGINT"), ("scale", "DOUBLE"), ("pixel_size_um", "DOUBLE"), ("path", "VARCHAR"))


def _stub(columns: tuple[tuple[str, str], ...]) -> str:
    return "SELECT " + ", ".join(f"NULL::{t} AS {c}" for c, t in columns) + " WHERE false"


def define_spatial_views(con: Any, lake: Lake, versions: list[DatasetVersion], current: list[DatasetVersion], scan: Any) -> list[str]:
    """Create the spatial views and macros; returns the files they read.

    ``scan(con, lake, name, keys)`` is the SQL layer's Parquet source (local files or an
    Arrow dataset on object storage).
    """
    from aivc.store.sql import register_arrow, sql_list

    spatial = [v for v in versions if spatial_record(v) is not None]
    refs = {v.ref for v in current}
    files: list[str] = []
    for view, chosen in (("spatial_cells", [v for v in spatial if v.ref in refs]), ("spatial_cells_all_versions", spatial)):
        if chosen:
            src, read = scan(con, lake, f"_{view}", [f"{v.artifacts}/{LOCATIONS}" for v in chosen])
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM {src}")
            files += read
        else:
            con.execute(f"CREATE VIEW {view} AS {_stub(_CELL_STUB)}")
    rows = [spatial_record(v) for v in spatial]
    register_arrow(
        con,
        "_spatial_datasets",
        pa.table(
            {
                "dataset_id": pa.array([v.dataset_id for v in spatial], pa.string()),
                "version": pa.array([v.version for v in spatial], pa.int32()),
                "current": pa.array([v.ref in refs for v in spatial], pa.bool_()),
                "technology": pa.array([r.technology for r in rows], pa.string()),
                "is_single": pa.array([r.is_single for r in rows], pa.bool_()),
                "library_id": pa.array([r.library_id for r in rows], pa.string()),
                "units": pa.array([r.units for r in rows], pa.string()),
                "n_located": pa.array([r.n_located for r in rows], pa.int64()),
                "n_images": pa.array([len(r.images) for r in rows], pa.int32()),
                "scene": pa.array([r.scene for r in rows], pa.string()),
            }
        ),
    )
    con.execute("CREATE VIEW spatial_datasets AS SELECT * FROM _spatial_datasets ORDER BY dataset_id, version")
    imaged = [v for v in spatial if spatial_record(v).images]  # type: ignore[union-attr]
    if imaged:
        paths = [str(lake.storage.local_file(f"{v.artifacts}/{IMAGE_LEVELS}")) for v in imaged]
        register_arrow(con, "_image_files", pa.table({"filename": paths, "dataset_id": [v.dataset_id for v in imaged], "version": pa.array([v.version for v in imaged], pa.int32())}))
        con.execute(f"CREATE VIEW spatial_images AS SELECT f.dataset_id, f.version, i.* EXCLUDE (filename) FROM read_parquet({sql_list(paths)}, filename=true) i JOIN _image_files f USING (filename)")
        files += paths
    else:
        con.execute("CREATE VIEW spatial_images AS SELECT NULL::VARCHAR AS dataset_id, NULL::INTEGER AS version, * FROM (" + _stub(_IMAGE_STUB) + ")")
    files += _imaging_views(con, lake, [v for v in spatial if v.ref in refs], scan)
    for statement in spatial_macros("spatial_cells"):
        con.execute(statement)
    return files


def _imaging_views(con: Any, lake: Lake, current: list[DatasetVersion], scan: Any) -> list[str]:
    """``transcripts``, ``transcripts_per_cell``, ``cell_shapes`` over the current imaging-based versions."""
    from aivc.store.sql import register_arrow, sql_list

    files: list[str] = []
    with_t = [v for v in current if spatial_record(v).n_transcripts]  # type: ignore[union-attr]
    if with_t:
        src, read = scan(con, lake, "_transcripts", [f"{v.artifacts}/{TRANSCRIPTS}" for v in with_t])
        con.execute(f"CREATE VIEW transcripts AS SELECT * FROM {src}")
        files += read
    else:
        con.execute(f"CREATE VIEW transcripts AS {_stub(_TRANSCRIPT_STUB)}")
    con.execute(
        "CREATE VIEW transcripts_per_cell AS SELECT dataset_id, version, obs_id, gene, any_value(feature_id) AS feature_id, count(*) AS n_transcripts "
        "FROM transcripts WHERE obs_id IS NOT NULL GROUP BY dataset_id, version, obs_id, gene"
    )
    with_s = [v for v in current if spatial_record(v).shapes]  # type: ignore[union-attr]
    if with_s:
        paths = [str(lake.storage.local_file(f"{v.artifacts}/{SHAPES}")) for v in with_s]
        register_arrow(con, "_shape_files", pa.table({"filename": paths, "dataset_id": [v.dataset_id for v in with_s], "version": pa.array([v.version for v in with_s], pa.int32())}))
        con.execute(
            "CREATE VIEW cell_shapes AS SELECT f.dataset_id, f.version, s.kind, s.shape_id, s.obs_id, s.area, s.x_min, s.y_min, s.x_max, s.y_max, s.geometry "
            f"FROM read_parquet({sql_list(paths)}, filename=true) s JOIN _shape_files f USING (filename)"
        )
        files += paths
    else:
        con.execute(f"CREATE VIEW cell_shapes AS {_stub(_SHAPE_STUB)}")
    return files
