"""Export every measurement of a dataset version: MuData ``.h5mu`` and ATAC fragments.

:func:`export_h5mu` writes one modality per measurement the version holds (``rna``,
``prot``, ``atac``, as muon names them), each with its exact raw counts and its ``var``,
the cells' metadata as the global ``obs``. :func:`export_fragments` writes the version's
stored fragments (bgzip) and their tabix index beside an ``.h5ad`` export, as
``<out>.fragments.tsv.gz`` (+ ``.tbi``): the barcodes are the exported obs index, which
``cellxgene-schema process-fragment`` requires.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from aivc.errors import UsageError
from aivc.store import artifacts
from aivc.store.catalog import Catalog, DatasetVersion
from aivc.store.lake import Lake

__all__ = ["MOD_NAMES", "export_fragments", "export_h5mu", "fragments_beside"]

#: The MuData modality of each lake measurement.
MOD_NAMES = {"RNA": "rna", "ADT": "prot", "ATAC": "atac"}


def _replace_into(out: Path, write: Any) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def export_h5mu(lake: Lake, ref: str, out: str | Path) -> dict[str, Any]:
    """Write every measurement of ``ref`` to one ``.h5mu`` (atomically)."""
    import mudata as md

    from aivc.store.export import load_version_anndata

    md.set_options(pull_on_update=False)
    v = Catalog(lake).get(ref)
    mods = {}
    from aivc.store.measurements import names

    held = [n for n in names() if n in v.measured()]
    for name in held:
        adata, _ = load_version_anndata(lake, v.ref, measurement=name)
        mods[MOD_NAMES.get(name, name.lower())] = adata
    mdata = md.MuData(mods)
    first = mods.get("rna", next(iter(mods.values())))
    mdata.obs = first.obs.copy()
    mdata.uns["aivc"] = dict(first.uns["aivc"]) | {"measurements": held}
    mdata.uns["title"] = v.title
    out = Path(out)
    _replace_into(out, lambda tmp: mdata.write_h5mu(tmp))
    shapes = {n: [int(a.n_obs), int(a.n_vars)] for n, a in mods.items()}
    return {"dataset_id": v.dataset_id, "version": v.version, "measurement": ",".join(held), "n_cells": int(mdata.n_obs), "n_genes": int(first.n_vars), "modalities": shapes, "path": str(out)}


def fragments_beside(out: str | Path) -> Path:
    """``out.h5ad`` -> ``out.fragments.tsv.gz``."""
    out = Path(out)
    return out.with_name(f"{out.name.removesuffix('.h5ad')}.fragments.tsv.gz")


def has_fragments(v: DatasetVersion) -> bool:
    return "fragments" in (v.measurements or {}).get("ATAC", {})


def export_fragments(lake: Lake, v: DatasetVersion, out: str | Path) -> dict[str, str]:
    """Copy the version's fragments and their index beside the ``.h5ad`` at ``out``."""
    if not has_fragments(v):
        raise UsageError(f"dataset version {v.ref} has no fragments", where="export")
    dest = fragments_beside(out)
    for suffix in ("", ".tbi"):
        src = lake.storage.local_file(artifacts.artifact_key(v, artifacts.FRAGMENTS + suffix))
        _replace_into(Path(f"{dest}{suffix}"), lambda tmp, src=src: shutil.copyfile(src, tmp))
    out_info = {"fragments": str(dest), "fragments_index": f"{dest}.tbi"}
    atac = v.measurements["ATAC"]
    with_fragments = int(atac.get("n_cells_with_fragments", v.n_cells))
    if with_fragments < v.n_cells:
        out_info["fragments_warning"] = (
            f"{v.n_cells - with_fragments} of {v.n_cells} cells have no fragment, so the fragments' barcodes are not the h5ad's cells: "
            "cellxgene-schema process-fragment requires every cell to have fragments"
        )
    return out_info
