"""Checks of a submission's spatial part, each problem with its own code and where.

:func:`check_spatial` takes what :func:`aivc.ingest.spatial_sources.open_spatial` read, the
matrix's cell ids and the harmonized cell metadata, and returns a :class:`CheckedSpatial`:
the findings, and for a valid submission the locations aligned to the cells, ready to
store. The codes:

``SPATIAL_DUPLICATE_LOCATION``
    a barcode listed twice in the tissue positions.
``SPATIAL_LOCATION_MISSING``
    a spot or cell of the matrix without a location.
``SPATIAL_SPOT_NOT_IN_MATRIX``
    a location without a matrix row, for a whole slide (``is_single: true``): CELLxGENE
    wants every spot of the capture area; a subset (``is_single: false``) may leave spots out.
``SPATIAL_COORDINATE_NOT_FINITE``, ``SPATIAL_COORDINATE_OUTSIDE_IMAGE``
    a location that is NaN / infinite, or that falls outside an image once scaled onto it.
``SPATIAL_TISSUE_POSITION_INVALID``
    ``in_tissue`` not 0/1, ``array_row`` / ``array_col`` not integers in the Visium grid
    (0-77 x 0-127; CytAssist 11 mm 0-127 x 0-223).
``SPATIAL_SCALEFACTORS_INCONSISTENT``
    a scale factor missing, not a positive number, or contradicting the images (each image's
    size over its scale factor is the full-resolution size; hires and lowres must agree).
``SPATIAL_IMAGE_CHANNELS``, ``SPATIAL_IMAGE_DTYPE``, ``SPATIAL_IMAGE_SIZE``
    an image whose channels, pixel type or size are not as declared (CELLxGENE: the hires
    image is RGB(A), 8-bit, at most 2,000 px (4,000 for CytAssist 11 mm) on its long side).
``SPATIAL_LABELS_SHAPE``, ``SPATIAL_LABELS_DTYPE``, ``SPATIAL_LABEL_UNKNOWN``, ``SPATIAL_CELL_UNLABELLED``
    a segmentation that does not fit its image, or whose ids do not match the cells.
``SPATIAL_ASSAY``
    the cells' assay does not fit the technology (Visium needs a descendant of EFO:0010961,
    not the generic term itself, as CELLxGENE does), or is not one value for all cells.
``SPATIAL_SUBSET_PRIMARY``
    ``is_single: false`` with cells marked ``is_primary_data`` (CELLxGENE: a subset is never
    the primary data).
``SPATIAL_OUT_OF_TISSUE_CELL_TYPE``
    a whole-slide spot outside the tissue (``in_tissue`` 0) with a cell type other than unknown.

MERFISH / Xenium transcripts and polygons have theirs in :mod:`aivc.ingest.spatial_imaging_checks`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from aivc.errors import Finding
from aivc.ingest.spatial_sources import SpatialInput

__all__ = ["CheckedSpatial", "check_spatial", "VISIUM_ASSAY"]

VISIUM_ASSAY = "EFO:0010961"
VISIUM_11MM_ASSAY = "EFO:0022860"
#: (max array_row, max array_col, max hires side) by capture area
VISIUM_GRID = {"6.5mm": (77, 127, 2000), "11mm": (127, 223, 4000)}
SCALE_KEYS = ("spot_diameter_fullres", "tissue_hires_scalef")


@dataclass
class CheckedSpatial:
    """The checked spatial part: findings, and the locations of the matrix's cells in its order."""

    input: SpatialInput
    findings: list[Finding] = field(default_factory=list)
    located: pd.DataFrame | None = None  # index: the matrix's cell ids; x, y (+ Visium in_tissue, array_row, array_col)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        h = hashlib.sha256(self.input.spec.model_dump_json().encode())
        if self.located is not None:
            h.update(pd.util.hash_pandas_object(self.located, index=True).to_numpy().tobytes())
        for name, img in sorted(self.input.images.items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(img.array).tobytes())
        if self.input.labels is not None:
            h.update(np.ascontiguousarray(self.input.labels).tobytes())
        if self.input.transcripts is not None:
            h.update(pd.util.hash_pandas_object(self.input.transcripts, index=False).to_numpy().tobytes())
        for kind, frame in sorted(self.input.shapes.items()):
            h.update(kind.encode())
            h.update("\x00".join(g.wkt for g in frame["geometry"]).encode())
        return h.hexdigest()


def _first(values: pd.Index | list[str], n: int = 3) -> str:
    vals = list(values)
    more = f" and {len(vals) - n} more" if len(vals) > n else ""
    return ", ".join(repr(str(v)) for v in vals[:n]) + more


def check_spatial(sp: SpatialInput, cell_ids: pd.Index, obs: pd.DataFrame | None, var_names: pd.Index | None = None, counts: Any = None) -> CheckedSpatial:
    """Check ``sp`` against the matrix's ``cell_ids`` (and gene ``var_names``, and its ``counts``
    for the imaging technologies) and the harmonized ``obs`` (index: cell ids)."""
    out = CheckedSpatial(sp)
    f = out.findings
    cells = pd.Index(cell_ids.astype(str))
    loc = sp.locations
    dup = loc.index.duplicated()
    if dup.any():
        f.append(Finding("SPATIAL_DUPLICATE_LOCATION", f"{sp.where} barcode {loc.index[dup][0]!r}", f"{int(dup.sum())} barcodes are listed more than once; each spot has one location"))
        loc = loc[~dup]
    missing = cells[~cells.isin(loc.index)] if sp.technology == "visium" else cells[loc.reindex(cells)["x"].isna().to_numpy()]
    if sp.technology == "image":
        missing = missing[:0]  # a cell without pixels: SPATIAL_CELL_UNLABELLED, found with the labels
    if len(missing):
        f.append(Finding("SPATIAL_LOCATION_MISSING", f"{sp.where} barcode {missing[0]!r}", f"{len(missing)} cells of the matrix have no location ({_first(missing)}); every spot or cell needs one"))
    if sp.technology == "visium":
        _check_unmatched_spots(out, loc, cells)
    located = loc.reindex(cells)
    _check_coordinates(out, located)
    if sp.technology == "visium":
        _check_visium(out, located, obs)
    elif sp.technology == "image":
        _check_declared_images(out)
    else:
        from aivc.ingest.spatial_imaging_checks import check_imaging

        out.findings.extend(check_imaging(sp, var_names, counts, cells))
    _check_obs(out, located, obs)
    out.located = located[[c for c in ("x", "y", "in_tissue", "array_row", "array_col", "label_id") if c in located.columns]].copy()
    out.summary |= {
        "technology": sp.technology,
        "is_single": sp.spec.is_single,
        "n_located": int(located["x"].notna().sum()),
        "units": sp.units,
        "images": {n: {"shape": list(i.array.shape), "scale": i.scale} for n, i in sp.images.items()},
    }
    if sp.transcripts is not None:
        out.summary["n_transcripts"] = int(len(sp.transcripts))
        out.summary["n_transcripts_in_cells"] = int((sp.transcripts["cell"] != "").sum())
    if sp.shapes:
        out.summary["shapes"] = {k: int(len(v)) for k, v in sp.shapes.items()}
    if sp.labels is not None:
        out.summary["n_labels"] = int(len(np.unique(sp.labels[sp.labels > 0]))) if np.issubdtype(sp.labels.dtype, np.integer) else 0
    return out


def _check_unmatched_spots(out: CheckedSpatial, loc: pd.DataFrame, cells: pd.Index) -> None:
    sp = out.input
    unmatched = loc.index[~loc.index.isin(cells)]
    if not len(unmatched):
        return
    in_tissue = loc.loc[unmatched, "in_tissue"] == 1
    if sp.spec.is_single:
        out.findings.append(
            Finding(
                "SPATIAL_SPOT_NOT_IN_MATRIX",
                f"{sp.where} barcode {unmatched[0]!r}",
                f"{len(unmatched)} spots ({int(in_tissue.sum())} in tissue) have a location but no matrix row; a whole slide (is_single: true) "
                "has every spot of the capture area in its matrix (Space Ranger's raw_feature_bc_matrix.h5); for a subset declare is_single: false",
            )
        )
    else:  # a subset: said in the report's summary, the locations not stored
        out.summary["n_slide_spots_not_in_subset"] = int(len(unmatched))
        out.summary["n_slide_in_tissue_spots_not_in_subset"] = int(in_tissue.sum())


def _check_coordinates(out: CheckedSpatial, located: pd.DataFrame) -> None:
    sp = out.input
    xy = located[["x", "y"]].to_numpy(dtype=float)
    # submitted coordinates only: a derived one (label / polygon centroid) that is missing has its own finding
    present = located["x"].notna().to_numpy() | located["y"].notna().to_numpy()
    bad = present & ~np.isfinite(xy).all(axis=1) if sp.technology == "visium" else np.zeros(len(xy), dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        out.findings.append(Finding("SPATIAL_COORDINATE_NOT_FINITE", f"{sp.where} barcode {located.index[i]!r}", f"{int(bad.sum())} locations are NaN or infinite; coordinates must be finite numbers"))
    ok = np.isfinite(xy).all(axis=1)
    for name, img in sp.images.items():
        px = xy[ok] * img.scale
        outside = (px[:, 0] < 0) | (px[:, 1] < 0) | (px[:, 0] >= img.width) | (px[:, 1] >= img.height)
        if outside.any():
            i = int(np.flatnonzero(ok)[np.flatnonzero(outside)[0]])
            x, y = xy[i]
            out.findings.append(
                Finding(
                    "SPATIAL_COORDINATE_OUTSIDE_IMAGE",
                    f"{sp.where} barcode {located.index[i]!r}",
                    f"{int(outside.sum())} locations fall outside the {name} image ({img.width} x {img.height} px) once scaled by {img.scale:g}, first (x={x:g}, y={y:g}); "
                    "check the coordinates and the scale factors",
                )
            )


def _capture_area(obs: pd.DataFrame | None) -> str:
    if obs is not None and "assay_ontology_term_id" in obs.columns and (obs["assay_ontology_term_id"].astype(str) == VISIUM_11MM_ASSAY).any():
        return "11mm"
    return "6.5mm"


def _check_visium(out: CheckedSpatial, located: pd.DataFrame, obs: pd.DataFrame | None) -> None:
    sp = out.input
    f = out.findings
    max_row, max_col, max_side = VISIUM_GRID[_capture_area(obs)]
    rows = located[located["x"].notna() | located["in_tissue"].notna()]
    for col, hi in (("in_tissue", 1), ("array_row", max_row), ("array_col", max_col)):
        v = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(v) | (v % 1 != 0) | (v < 0) | (v > hi)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            f.append(Finding("SPATIAL_TISSUE_POSITION_INVALID", f"{sp.where} column {col} barcode {rows.index[i]!r}", f"{int(bad.sum())} values of {col} are not integers in 0-{hi}, first {rows[col].iloc[i]!r}"))
    sf, where = sp.scalefactors, sp.scalefactors_where
    for key in (*SCALE_KEYS, "tissue_lowres_scalef"):
        if key == "tissue_lowres_scalef" and "lowres" not in sp.images:
            continue
        v = sf.get(key)
        if not (isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) and v > 0):
            f.append(Finding("SPATIAL_SCALEFACTORS_INCONSISTENT", f"{where}: {key}", f"{key} is {v!r}; it must be a positive number (Space Ranger's scalefactors_json.json)"))
    hires, lowres = sp.images.get("hires"), sp.images.get("lowres")
    if hires is not None and lowres is not None and all(isinstance(sf.get(k), int | float) and sf.get(k) > 0 for k in ("tissue_hires_scalef", "tissue_lowres_scalef")):
        full_h, full_l = hires.width / sf["tissue_hires_scalef"], lowres.width / sf["tissue_lowres_scalef"]
        if abs(full_h - full_l) > 0.02 * max(full_h, full_l):
            f.append(
                Finding(
                    "SPATIAL_SCALEFACTORS_INCONSISTENT",
                    f"{where}: tissue_hires_scalef, tissue_lowres_scalef",
                    f"the hires image ({hires.width} px / {sf['tissue_hires_scalef']:g}) and the lowres image ({lowres.width} px / {sf['tissue_lowres_scalef']:g}) "
                    f"imply different full-resolution widths ({full_h:.0f} vs {full_l:.0f} px); the scale factors must match the images",
                )
            )
    for img in sp.images.values():
        if img.n_channels not in (3, 4):
            f.append(Finding("SPATIAL_IMAGE_CHANNELS", img.path, f"the {img.name} image has {img.n_channels} channels; a Visium tissue image is RGB or RGBA (3 or 4)"))
        if img.source_dtype != "uint8":
            f.append(Finding("SPATIAL_IMAGE_DTYPE", img.path, f"the {img.name} image is {img.source_dtype}; a Visium tissue image is 8-bit (uint8)"))
    if hires is not None and max(hires.width, hires.height) > max_side:
        f.append(Finding("SPATIAL_IMAGE_SIZE", hires.path, f"the hires image is {hires.width} x {hires.height} px; CELLxGENE allows at most {max_side} px on its long side"))


def _check_declared_images(out: CheckedSpatial) -> None:
    from aivc.ingest.images import check_labels

    sp = out.input
    img = sp.images["image"]
    spec = sp.spec
    if spec.channels is not None and img.n_channels != len(spec.channels):
        out.findings.append(Finding("SPATIAL_IMAGE_CHANNELS", img.path, f"the image has {img.n_channels} channels but spatial.channels names {len(spec.channels)} ({', '.join(spec.channels)})"))
    elif spec.channels is not None and img.channel_names is not None and tuple(img.channel_names) != tuple(spec.channels):
        out.findings.append(Finding("SPATIAL_IMAGE_CHANNELS", img.path, f"the image's channels are {list(img.channel_names)} but spatial.channels says {list(spec.channels)}"))
    if not (np.issubdtype(img.array.dtype, np.integer) or np.issubdtype(img.array.dtype, np.floating)):
        out.findings.append(Finding("SPATIAL_IMAGE_DTYPE", img.path, f"the image's pixel type is {img.array.dtype}; it must be an integer or float type"))
    if sp.labels is not None:
        cell_labels = {str(c): int(v) for c, v in sp.locations["label_id"].items()}
        out.findings.extend(check_labels(sp.labels, (img.height, img.width), cell_labels, sp.labels_where))


def _check_obs(out: CheckedSpatial, located: pd.DataFrame, obs: pd.DataFrame | None) -> None:
    sp = out.input
    if obs is None:
        return
    from aivc.ontology import get_ontologies

    if "assay_ontology_term_id" in obs.columns:
        assays = sorted(set(obs["assay_ontology_term_id"].astype(str)))
        if len(assays) > 1:
            out.findings.append(Finding("SPATIAL_ASSAY", "obs['assay']", f"a spatial dataset has one assay for all its cells, this one has {len(assays)} ({', '.join(assays[:3])})"))
        elif sp.technology == "visium" and assays:
            a = assays[0]
            onto = get_ontologies()
            if a == VISIUM_ASSAY or not onto.is_descendant_of(a, VISIUM_ASSAY, include_self=False):
                out.findings.append(
                    Finding(
                        "SPATIAL_ASSAY",
                        "obs['assay']",
                        f"technology visium needs a specific Visium assay, a descendant of {VISIUM_ASSAY} (e.g. EFO:0022857 Visium Spatial Gene Expression V1), not {a!r}",
                    )
                )
    if not sp.spec.is_single and "is_primary_data" in obs.columns:
        prim = obs["is_primary_data"].astype(bool)
        if prim.any():
            out.findings.append(
                Finding("SPATIAL_SUBSET_PRIMARY", "obs['is_primary_data']", f"{int(prim.sum())} cells are is_primary_data true, but a subset (is_single: false) is never the primary data; set obs is_primary_data to false")
            )
    if sp.technology == "visium" and sp.spec.is_single and "cell_type_ontology_term_id" in obs.columns and "in_tissue" in located.columns:
        outside = (pd.to_numeric(located["in_tissue"], errors="coerce").to_numpy() == 0) & (obs["cell_type_ontology_term_id"].astype(str).reindex(located.index).to_numpy() != "unknown")
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            out.findings.append(Finding("SPATIAL_OUT_OF_TISSUE_CELL_TYPE", f"obs['cell_type'] barcode {located.index[i]!r}", f"{int(outside.sum())} spots outside the tissue (in_tissue 0) have a cell type; CELLxGENE wants 'unknown' there"))
