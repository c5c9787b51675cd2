"""A dataset version's locations as a TileDB-SOMA spatial Scene.

Besides the Parquet locations table (the rows of the ``spatial_cells`` SQL view), each
spatial version writes its cells' locations into the organism's SOMA experiment, so that
stock ``tiledbsoma`` readers find them: ``spatial/<scene>`` is a ``Scene`` whose
``obsl/loc`` is a ``PointCloudDataFrame`` (``soma_joinid``, ``x``, ``y``, ``obs_id``) in the
version's coordinate space (``x``, ``y`` in pixels of the full-resolution image, or
micrometres). It is written at the version's SOMA timestamp, so readers pinned to the
committed high-water mark do not see it before the record is committed, and recovery
rolls it back with the rest of an interrupted write. The scene name carries the
submission id: a retried version never meets an orphaned scene of the same name.

tiledbsoma 2.3 marks Scenes experimental; images stay OME-Zarr (see
:mod:`aivc.store.images`), where napari and spatialdata read them.

Example
-------
>>> import tiledbsoma                                                    # doctest: +SKIP
>>> with tiledbsoma.Experiment.open(uri) as exp:                         # doctest: +SKIP
...     exp.spatial["pbmc-v1-3fa2b1c0"].obsl["loc"].read().concat().to_pandas()
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from aivc.store.soma_io import _context

__all__ = ["read_scene", "scene_name", "write_scene"]


def scene_name(dataset_id: str, version: int, submission_id: str) -> str:
    """The Scene of one version: ``<dataset>-v<version>-<submission suffix>``."""
    return f"{dataset_id}-v{version}-{submission_id.rsplit('-', 1)[-1]}"


def write_scene(uri: str, name: str, obs_joinids: np.ndarray, obs_ids: np.ndarray, x: np.ndarray, y: np.ndarray, *, timestamp: int, units: str) -> None:
    """Write the located cells of one version as ``spatial/<name>/obsl/loc`` at ``timestamp``."""
    import pyarrow as pa
    import tiledbsoma

    keep = np.isfinite(x) & np.isfinite(y)
    ctx = _context(timestamp, uri)
    unit = "micrometer" if units == "micrometre" else "pixel"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "spatial types are experimental"
        with tiledbsoma.Experiment.open(uri, "w", context=ctx) as exp:
            if "spatial" not in exp:
                exp.add_new_collection("spatial")
            space = tiledbsoma.CoordinateSpace([tiledbsoma.Axis("x", unit=unit), tiledbsoma.Axis("y", unit=unit)])
            scene = exp.spatial.add_new_collection(name, tiledbsoma.Scene, coordinate_space=space)
            for sub in ("obsl", "varl", "img"):
                scene.add_new_collection(sub)
            xs, ys = np.asarray(x, dtype=np.float64)[keep], np.asarray(y, dtype=np.float64)[keep]
            hi = float(max(xs.max(initial=0.0), ys.max(initial=0.0))) + 1.0
            jmax = int(np.asarray(obs_joinids).max(initial=0)) + 1
            schema = pa.schema([("x", pa.float64()), ("y", pa.float64()), ("soma_joinid", pa.int64()), ("obs_id", pa.large_string())])
            transform = tiledbsoma.IdentityTransform(("x", "y"), ("x", "y"))
            pc = scene.add_new_point_cloud_dataframe("loc", "obsl", transform=transform, coordinate_space=space, schema=schema, domain=[[min(0.0, float(xs.min(initial=0.0))), hi], [min(0.0, float(ys.min(initial=0.0))), hi], [0, jmax]])
            pc.write(pa.table({"x": xs, "y": ys, "soma_joinid": np.asarray(obs_joinids, dtype=np.int64)[keep], "obs_id": pa.array([str(o) for o in np.asarray(obs_ids)[keep]], pa.large_string())}))


def read_scene(uri: str, name: str, high_water: int) -> pd.DataFrame:
    """The locations of one version's Scene, as committed (``x``, ``y``, ``soma_joinid``, ``obs_id``)."""
    import tiledbsoma

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with tiledbsoma.Experiment.open(uri, "r", context=_context(high_water, uri)) as exp:
            return exp.spatial[name].obsl["loc"].read().concat().to_pandas()
