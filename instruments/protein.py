"""The protein decoder instrument: protein abundance from a cell UR, trained where both were measured.

:func:`train_protein` reads, for one exact cell embedding version, the URs of the cells whose
dataset versions hold an ADT measurement, their ADT counts (the antibodies every chosen
dataset measured, by canonical marker) through the read API, transforms them
(:func:`~aivc.instruments.crossmodal.protein_targets`), and fits the cross-modal decoder
(:mod:`aivc.instruments.crossmodal`: a deep ensemble with per-protein calibrated intervals).
It registers ``protein@N`` (kind ``decoder``, type ``protein-abundance``). Batch prediction
is the one decoder job (:func:`aivc.instruments.annotate.annotate`), which applies it to
any cells with a UR in that version, RNA-only datasets included, and publishes a prediction
version whose SQL view has, per cell, fixed-size lists ``abundance``, ``std``, ``lower``,
``upper`` in the order of the record's ``outputs.proteins``.

Example
-------
>>> rec = train_protein(lake, "cell:pca@1", datasets=["cite-10k"])        # doctest: +SKIP
>>> pv = annotate(lake, rec.ref, datasets=["pbmc-rna-only"], report=False)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aivc.errors import UsageError
from aivc.instruments.crossmodal import CrossModalConfig, config_record, fit_crossmodal, outputs_of, protein_targets
from aivc.instruments.registry import InstrumentRecord, check_name, register_instrument
from aivc.progress import NullProgress, Progress
from aivc.store.lake import Lake
from aivc.store.lineage import Lineage

__all__ = ["protein_cells", "train_protein"]


def protein_cells(lake: Lake, embedding: Any, datasets: list[str] | None = None) -> tuple[Any, np.ndarray, np.ndarray, list[str]]:
    """The cells of ``embedding`` that have ADT, with their URs and ADT counts.

    Returns ``(cells, vectors, counts, proteins)``: ``cells`` (``obs_id``, ``dataset_id``,
    ``dataset_version``), the URs ``[n, d]``, the raw ADT counts ``[n, P]`` of the proteins
    every chosen dataset measured (canonical markers, ``proteins``).

    Raises
    ------
    UsageError
        No chosen dataset holds ADT, a named one has no vectors in the version or no ADT,
        or the datasets share no protein.
    """
    import pandas as pd

    from aivc.store.catalog import Catalog
    from aivc.store.features import read_vectors
    from aivc.store.read import LakeQuery

    have = {p.partition("=")[2] for p in embedding.partitions if p.startswith("dataset=")}
    cat = Catalog(lake)
    lineage = embedding.lineage.dataset_versions()
    versions = {d: cat.get(lineage.get(d, d)) for d in sorted(have)}
    with_adt = {d for d, v in versions.items() if "ADT" in v.measured()}
    if datasets:
        unknown = [d for d in datasets if d.partition("@")[0] not in have]
        if unknown:
            raise UsageError(f"{embedding.ref} has no vectors for dataset {unknown[0]!r} (it has: {', '.join(sorted(have)) or 'none'})", where="--datasets")
        chosen = sorted({d.partition("@")[0] for d in datasets})
        lacking = [d for d in chosen if d not in with_adt]
        if lacking:
            raise UsageError(f"dataset {lacking[0]!r} has no ADT measurement; a protein decoder trains on cells with both a UR and proteins", where="--datasets")
    else:
        chosen = sorted(with_adt)
    if not chosen:
        raise UsageError(f"no dataset of {embedding.ref} holds an ADT measurement; submit CITE-seq data with measurements: ADT", where="--datasets")
    q = LakeQuery.of(lake, [versions[d] for d in chosen], measurement="ADT")
    fs = q.features("intersection")
    if not len(fs.frame):
        raise UsageError(f"datasets {', '.join(chosen)} share no protein; choose datasets with a common panel", where="--datasets")
    cells = q.obs(columns=["obs_id", "soma_joinid", "dataset_id", "dataset_version"])
    counts = np.vstack([c for _, c in q.chunks(cells, fs.joinids)]) if len(cells) else np.zeros((0, len(fs.frame)), np.float32)
    table, vec = read_vectors(lake, embedding, datasets=set(chosen), columns=("id",))
    rows = pd.Index(table.column("id").to_pylist()).get_indexer(cells["obs_id"])
    keep = rows >= 0
    return cells[keep].reset_index(drop=True), vec[rows[keep]], counts[keep], [str(p) for p in fs.frame["feature_id"]]


def train_protein(
    lake: Lake,
    embedding: str,
    *,
    datasets: list[str] | None = None,
    name: str = "protein",
    config: CrossModalConfig = CrossModalConfig(),
    progress: Progress | None = None,
) -> InstrumentRecord:
    """Train the protein decoder over ``embedding`` on the cells with ADT and register it.

    Parameters
    ----------
    embedding
        A cell embedding version, ``cell:NAME@VERSION`` (the latest when no version is given).
    datasets
        Datasets (with ADT) whose cells train it; default every dataset of the version with ADT.
    """
    from aivc.store.features import get_version

    check_name(name)
    progress = progress or NullProgress()
    emb = get_version(lake, embedding)
    if emb.entity != "cell":
        raise UsageError(f"a protein decoder reads cell URs; {emb.ref} holds {emb.entity} URs", where="--embedding")
    progress.phase("reading the cells with proteins")
    cells, x, counts, proteins = protein_cells(lake, emb, datasets)
    y = protein_targets(counts, config.target)
    progress.phase(f"training on {len(cells)} cells, {len(proteins)} proteins")
    dec = fit_crossmodal(x, y, proteins, config)
    refs = sorted({f"{d}@{int(v)}" for d, v in zip(cells["dataset_id"], cells["dataset_version"], strict=True)})
    per_dataset = {str(k): int(v) for k, v in cells["dataset_id"].value_counts().sort_index().items()}
    lineage = Lineage(embedding=emb.ref, datasets=tuple(refs), extra={"training_cells": per_dataset, "measurement": "ADT"})
    oof = dec.fit_metrics["out_of_fold"]
    progress.phase("registering")
    return register_instrument(
        lake, name, kind="decoder", type="protein-abundance", reads=emb.ref, weights=dec.to_weights(), outputs=outputs_of(dec, emb.dim),
        metrics=dict(dec.fit_metrics), lineage=lineage, config=config_record(config),
        description=(
            f"protein decoder over {emb.ref}: {len(proteins)} proteins ({config.target} counts), out-of-fold mean Pearson "
            f"{oof['mean_pearson']:.3f}, intervals at alpha={config.alpha:g}"
        ),
    )  # fmt: skip


# -- the report of a prediction version ------------------------------------------------------
class ProteinReport:
    """The report of a protein prediction version: per dataset, where the cells' proteins were
    measured too, the per-protein agreement of prediction and measurement (Pearson, Spearman,
    interval coverage); datasets the decoder trained on are marked (in-sample)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.data["summary"])

    def write(self, folder: Any, record: Any = None) -> tuple[Any, Any]:
        import html
        import json
        from pathlib import Path

        from aivc.store.storage import write_atomic

        data = dict(self.data)
        if record is not None:
            data["prediction"], data["created_at"] = record.ref, record.created_at
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        j = folder / "report.json"
        write_atomic(j, (json.dumps({"schema_name": "aivc.protein_report", "schema_version": 1, **data}, indent=2, allow_nan=False, default=str) + "\n").encode())
        rows = "".join(
            f"<tr><td>{html.escape(d)}</td><td>{html.escape(str(e.get('role', '')))}</td><td>{e.get('n_cells', '')}</td>"
            f"<td>{_fmt(e.get('mean_pearson'))}</td><td>{_fmt(e.get('mean_spearman'))}</td><td>{_fmt(e.get('mean_coverage'))}</td></tr>"
            for d, e in data["datasets"].items()
        )
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>protein predictions</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}</style></head><body>"
            f"<h1>{html.escape(str(data.get('prediction', 'protein predictions')))}</h1><p>{html.escape(data['summary']['description'])}</p>"
            "<table><tr><th>dataset</th><th>role</th><th>cells</th><th>mean Pearson</th><th>mean Spearman</th><th>interval coverage</th></tr>"
            f"{rows}</table></body></html>"
        )
        h = folder / "report.html"
        write_atomic(h, page.encode())
        return j, h


def _fmt(x: Any) -> str:
    return "" if x is None else f"{float(x):.3f}"


def build_protein_report(lake: Lake, folder: Any, rec: InstrumentRecord, **_: Any) -> ProteinReport:
    """Compare the staged predictions with the measured proteins wherever the cells have ADT."""
    from pathlib import Path

    import pandas as pd
    import pyarrow.dataset as pds

    from aivc.instruments.crossmodal import evaluate
    from aivc.store.catalog import Catalog
    from aivc.store.read import LakeQuery

    files = sorted(str(f) for f in Path(folder).rglob("*.parquet"))
    pred = pds.dataset(files, format="parquet").to_table() if files else None
    proteins = [str(p) for p in rec.outputs.get("proteins", [])]
    trained = set(rec.lineage.dataset_versions()) if rec.lineage else set()
    out: dict[str, Any] = {}
    if pred is not None and pred.num_rows:
        ids = pd.Index(pred.column("obs_id").to_pylist())
        datasets = pd.Series(pred.column("dataset_id").to_pylist())
        mean = np.asarray(pred.column("abundance").combine_chunks().values.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(len(ids), -1)
        lo = np.asarray(pred.column("lower").combine_chunks().values.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(len(ids), -1)
        hi = np.asarray(pred.column("upper").combine_chunks().values.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(len(ids), -1)
        cat = Catalog(lake)
        for d in sorted(datasets.unique()):
            rows = np.flatnonzero(datasets.to_numpy() == d)
            entry: dict[str, Any] = {"n_cells": int(rows.size), "role": "trained on (in-sample)" if d in trained else "held out"}
            v = cat.get(d)
            if "ADT" in v.measured():
                q = LakeQuery.of(lake, [v], measurement="ADT")
                fs = q.features()
                shared = [p for p in proteins if p in set(fs.frame["feature_id"])]
                if shared:
                    cols = [proteins.index(p) for p in shared]
                    join = fs.frame.set_index("feature_id").loc[shared, "soma_joinid"].to_numpy()
                    cells = q.obs(columns=["obs_id", "soma_joinid"])
                    measured = np.vstack([c for _, c in q.chunks(cells, join)])
                    at = pd.Index(cells["obs_id"]).get_indexer(ids[rows])
                    ok = at >= 0
                    y = protein_targets(measured[at[ok]], str(rec.config.get("target", "log1p")))
                    ev = evaluate(y, {"mean": mean[rows[ok]][:, cols], "lower": lo[rows[ok]][:, cols], "upper": hi[rows[ok]][:, cols]}, shared)
                    entry.update(measured_proteins=len(shared), mean_pearson=ev["mean_pearson"], mean_spearman=ev["mean_spearman"], mean_coverage=ev.get("mean_coverage"), per_protein=ev["per_protein"])
            else:
                entry["measured_proteins"] = 0
            out[d] = entry
    held = [e for e in out.values() if e["role"] == "held out" and e.get("mean_pearson") is not None]
    summary = {
        "n_cells": int(sum(e["n_cells"] for e in out.values())),
        "proteins": proteins,
        "held_out_mean_pearson": held[0]["mean_pearson"] if len(held) == 1 else (float(np.mean([e["mean_pearson"] for e in held])) if held else None),
        "description": f"{rec.ref} over {rec.reads}: predicted {len(proteins)} proteins; agreement with measured proteins where the cells have them",
    }
    return ProteinReport({"summary": summary, "datasets": out, "instrument": rec.ref})
