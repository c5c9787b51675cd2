"""The reannotation report: where a decoder's predictions agree with the submitted labels.

Written as ``report.json`` (schema_name ``aivc.prediction_report``) and one self-contained
``report.html`` (inline styles, inline SVG plots drawn by :mod:`aivc.ingest.qc_plots`, every piece of text
HTML-escaped, nothing loaded from anywhere) into the prediction version's folder before
it is published. Sections:

``summary``        cells, labelled cells, agreement, coverage, abstentions
``agreement``      exact / ancestor / descendant / conflict / unlabelled counts, fractions of
                   labelled cells (the unlabelled ones: of all cells), ontology-aware
                   (:mod:`aivc.instruments.agreement`), overall and per dataset
``per_class``      precision / recall / F1 per cell type (exact matches, labelled cells)
``confusion``      submitted term x predicted term counts (and a row-normalized heatmap)
``disagreements``  the 20 most confident conflicts
``map``            a 2-D PCA map of the URs coloured by predicted type
``conformal``      coverage of the submitted type by the prediction sets and mean set size,
                   against the nominal ``1 - alpha`` (labelled cells of a type the decoder knows)
``novelty``        abstentions, split by whether the submitted type is known to the decoder
``rollup``         (with ``rollup``) agreement after rolling terms up to coarser groups: of the
                   labelled cells submitted into a group, those predicted into the same
                   group agree and those predicted into another group or into none conflict
                   (:func:`aivc.instruments.agreement.rollup_agreement`)

Schema version 2 (version 1 had ``agreement.fractions`` with a mixed denominator and a
roll-up that left cells predicted outside the groups out of its agreement).

Example
-------
>>> built = build_report(lake, version_folder, instrument_record)  # doctest: +SKIP
>>> built.write(version_folder, prediction_version)  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aivc.ingest import qc_plots
from aivc.instruments.agreement import CATEGORIES, RollUp, agreement_counts, agreement_many, agreement_rows, is_unlabelled, rollup_agreement
from aivc.instruments.registry import InstrumentRecord
from aivc.store.lake import Lake

REPORT_SCHEMA = "aivc.prediction_report"
REPORT_SCHEMA_VERSION = 2
TOP_DISAGREEMENTS = 20
MAX_MAP_POINTS = 20_000
SECTIONS = ("summary", "agreement", "per_class", "confusion", "disagreements", "map", "conformal", "novelty", "rollup")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  margin:0 auto;max-width:1200px;padding:1.5rem;color:#1f2328;line-height:1.4}
h1{margin:0 0 .5rem 0;font-size:1.6rem} h2{margin-top:2rem;border-bottom:1px solid #d0d7de;
  padding-bottom:.3rem;font-size:1.25rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa} tr:nth-child(even) td{background:#fbfcfd}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85rem}
.meta td:first-child{width:14rem;font-weight:600;background:#f6f8fa}
.note{color:#57606a;font-style:italic} figure{margin:0} img{max-width:100%;border:1px solid #d0d7de}
figcaption{font-size:.85rem;color:#57606a}
"""


@dataclass
class Report:
    """A computed report, written by :meth:`write` once the version number is known."""

    data: dict[str, Any]
    images: dict[str, str] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.data["summary"])

    def write(self, folder: Path, record: Any = None) -> tuple[Path, Path]:
        """Write ``report.json`` and ``report.html`` into ``folder`` (atomically each)."""
        data = dict(self.data)
        if record is not None:
            data["prediction"] = record.ref
            data["created_at"] = record.created_at
        payload = {"schema_name": REPORT_SCHEMA, "schema_version": REPORT_SCHEMA_VERSION, **_finite(data)}
        folder.mkdir(parents=True, exist_ok=True)
        j = _write_atomic(folder / "report.json", json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
        h = _write_atomic(folder / "report.html", render_html(payload, self.images))
        return j, h


# -- computing ---------------------------------------------------------------------------
def _submitted(lake: Lake, datasets: Sequence[str]) -> pd.DataFrame:
    from aivc.store.catalog import Catalog
    from aivc.store.read import version_cells

    cat = Catalog(lake)
    frames = [version_cells(lake, v, ["obs_id", "cell_type_ontology_term_id", "cell_type"]) for d in datasets for v in cat.versions(d)]
    if not frames:
        return pd.DataFrame({"obs_id": [], "cell_type_ontology_term_id": [], "cell_type": []})
    return pd.concat(frames, ignore_index=True).rename(columns={"cell_type_ontology_term_id": "submitted_term_id", "cell_type": "submitted_label"})


def build_report(lake: Lake, folder: Path, rec: InstrumentRecord, *, rollup: RollUp | None = None) -> Report:
    """Compute the report of the prediction rows staged or published in ``folder``."""
    import pyarrow.dataset as pds

    files = sorted(str(f) for f in folder.rglob("*.parquet"))
    table = pds.dataset(files, format="parquet").to_table() if files else None
    pred = table.to_pandas() if table is not None else pd.DataFrame(columns=["obs_id", "dataset_id", "prediction_set"])
    datasets = sorted(pred["dataset_id"].unique().tolist())
    df = pred.merge(_submitted(lake, datasets), on="obs_id", how="left")
    df["submitted_term_id"] = df["submitted_term_id"].where(df["submitted_term_id"].notna(), None)
    df["agreement"] = agreement_many(df["predicted_term_id"].tolist(), df["submitted_term_id"].tolist())
    classes = [c["term_id"] for c in rec.outputs.get("classes", [])]
    label_of = {c["term_id"]: c["label"] for c in rec.outputs.get("classes", [])}
    pairs = df[["submitted_term_id", "submitted_label"]].drop_duplicates()
    label_of.update({t: lab for t, lab in zip(pairs["submitted_term_id"], pairs["submitted_label"], strict=True) if isinstance(t, str) and isinstance(lab, str)})
    terms = df["submitted_term_id"].astype(object)
    unlabelled_terms = {t for t in terms.dropna().unique() if is_unlabelled(t)}
    labelled = terms.notna() & ~terms.isin(unlabelled_terms)
    known = labelled & df["submitted_term_id"].isin(classes)
    alpha = float(rec.outputs.get("alpha", rec.config.get("alpha", 0.1)))

    agreement = agreement_counts(df["agreement"])
    by_dataset = {d: agreement_counts(g["agreement"]) for d, g in df.groupby("dataset_id")}
    per_class = _per_class(df[labelled], classes, label_of)
    conformal = _conformal(df, labelled, known, alpha, _covered(table, df["submitted_term_id"].to_numpy(dtype=object)))
    novelty = {
        "n_abstain": int(df["abstain"].sum()),
        "fraction": _r(df["abstain"].mean()) if len(df) else None,
        "fraction_known_type": _r(df.loc[known, "abstain"].mean()) if known.any() else None,
        "fraction_unknown_type": _r(df.loc[labelled & ~known, "abstain"].mean()) if (labelled & ~known).any() else None,
        "fraction_unlabelled": _r(df.loc[~labelled, "abstain"].mean()) if (~labelled).any() else None,
        "threshold": rec.metrics.get("novelty_threshold"),
        "method": rec.outputs.get("novelty", ""),
    }
    conflicts = df[df["agreement"] == "conflict"].sort_values(["probability", "obs_id"], ascending=[False, True]).head(TOP_DISAGREEMENTS)
    disagreements = [
        {"obs_id": r.obs_id, "dataset_id": r.dataset_id, "submitted_term_id": r.submitted_term_id, "submitted_label": r.submitted_label,
         "predicted_term_id": r.predicted_term_id, "predicted_label": r.predicted_label, "probability": _r(r.probability),
         "prediction_set": list(r.prediction_set), "novelty": _r(r.novelty), "abstain": bool(r.abstain)}
        for r in conflicts.itertuples()
    ]  # fmt: skip
    confusion = _confusion(df[labelled], classes, label_of)
    images: dict[str, str] = {}
    map_info = _map(lake, rec, df, images)
    if confusion["rows"]:
        images["confusion"] = _heatmap(confusion, label_of)
    rolled = _rollup(df, rollup, label_of) if rollup is not None else None
    data: dict[str, Any] = {
        "prediction": None,
        "instrument": rec.ref,
        "embedding": rec.reads,
        "datasets": datasets,
        "classes": [{"term_id": t, "label": label_of.get(t, t)} for t in classes],
        "labels": {t: label_of[t] for t in sorted(label_of)},
        "summary": {
            "n_cells": int(len(df)), "n_labelled": int(labelled.sum()), "n_unlabelled": agreement["n_unlabelled"],
            "n_labelled_known_type": int(known.sum()), "agree": agreement["agree"],
            "agree_fraction": agreement["agree_fraction"], "exact_fraction": agreement["fractions_of_labelled"]["exact"],
            "coverage": conformal["coverage"], "nominal_coverage": conformal["nominal_coverage"], "mean_set_size": conformal["mean_set_size_known"],
            "n_abstain": novelty["n_abstain"], "macro_f1": per_class["macro_f1"],
            **({"rollup": {k: rolled[k] for k in ROLLUP_SUMMARY}} if rolled is not None else {}),
        },  # fmt: skip
        "agreement": {**agreement, "by_dataset": by_dataset},
        "per_class": per_class,
        "confusion": confusion,
        "disagreements": disagreements,
        "map": map_info,
        "conformal": conformal,
        "novelty": novelty,
        "rollup": rolled,
    }
    return Report(data, images)


def _r(x: Any, nd: int = 6) -> float | None:
    x = float(x)
    return round(x, nd) if math.isfinite(x) else None


def _per_class(df: pd.DataFrame, classes: list[str], label_of: Mapping[str, str]) -> dict[str, Any]:
    terms = list(classes) + sorted(set(df["submitted_term_id"]) - set(classes))
    rows = []
    n = len(terms)
    sub = pd.Categorical(df["submitted_term_id"], categories=terms).codes  # -1: not one of terms
    pred = pd.Categorical(df["predicted_term_id"], categories=terms).codes
    hit = (sub == pred) & (sub >= 0)
    supports = np.bincount(sub[sub >= 0], minlength=n)
    n_preds = np.bincount(pred[pred >= 0], minlength=n)
    tps = np.bincount(sub[hit], minlength=n)
    for i, t in enumerate(terms):
        tp, support, n_pred = int(tps[i]), int(supports[i]), int(n_preds[i])
        p = tp / n_pred if n_pred else None
        r = tp / support if support else None
        f1 = 2 * p * r / (p + r) if p and r else (0.0 if (p is not None and r is not None) else None)
        rows.append({"term_id": t, "label": label_of.get(t, t), "known": t in classes, "support": support, "n_predicted": n_pred,
                     "precision": None if p is None else _r(p), "recall": None if r is None else _r(r), "f1": None if f1 is None else _r(f1)})  # fmt: skip
    scored = [r["f1"] if r["f1"] is not None else 0.0 for r in rows if r["known"] and r["support"] > 0]
    return {"classes": rows, "macro_f1": _r(np.mean(scored)) if scored else None, "note": "exact term matches; macro_f1 over the decoder's types with submitted cells"}


def _confusion(df: pd.DataFrame, classes: list[str], label_of: Mapping[str, str]) -> dict[str, Any]:
    rows = [t for t in classes if (df["submitted_term_id"] == t).any()] + sorted(set(df["submitted_term_id"]) - set(classes))
    tab = pd.crosstab(df["submitted_term_id"], df["predicted_term_id"]).reindex(index=rows, columns=classes, fill_value=0)
    return {"rows": rows, "columns": classes, "counts": tab.to_numpy().astype(int).tolist(), "note": "rows: submitted term, columns: predicted term"}


def _covered(table: Any, submitted: np.ndarray) -> np.ndarray:
    """Whether each prediction row's set holds its submitted term (rows in the table's order,
    which the left merge onto the submitted labels keeps), from Arrow's flat list values."""
    import pyarrow.compute as pc

    if table is None or table.num_rows == 0:
        return np.zeros(len(submitted), dtype=bool)
    if table.num_rows != len(submitted):  # the merge onto the submitted labels must keep one row per prediction
        raise ValueError(f"{table.num_rows} prediction rows but {len(submitted)} merged rows")
    sets = table["prediction_set"]
    flat = pc.list_flatten(sets).to_numpy(zero_copy_only=False)
    parent = pc.list_parent_indices(sets).to_numpy()
    hit = flat == submitted[parent]
    return np.bincount(parent[hit], minlength=len(submitted)) > 0


def _conformal(df: pd.DataFrame, labelled: pd.Series, known: pd.Series, alpha: float, covered: np.ndarray) -> dict[str, Any]:
    sizes = df["set_size"].to_numpy()
    per_class = {str(t): {"n": int(len(g)), "coverage": _r(covered[g.index].mean())} for t, g in df[known].groupby("submitted_term_id")}
    return {
        "alpha": alpha,
        "nominal_coverage": _r(1 - alpha),
        "n_evaluated": int(known.sum()),
        "coverage": _r(covered[known.to_numpy()].mean()) if known.any() else None,
        "mean_set_size_known": _r(sizes[known.to_numpy()].mean()) if known.any() else None,
        "mean_set_size_all": _r(sizes.mean()) if len(sizes) else None,
        "empty_sets": int((sizes == 0).sum()),
        "per_class": per_class,
        "n_labelled_unknown_type": int((labelled & ~known).sum()),
        "note": "coverage: share of labelled cells, of a type the decoder knows, whose submitted term is in the prediction set",
    }


ROLLUP_SUMMARY = ("spec", "n_in_groups", "agree", "agree_fraction", "conflict", "conflict_other_group", "conflict_no_group", "n_not_in_rollup", "n_unlabelled")


def _rollup(df: pd.DataFrame, spec: RollUp, label_of: Mapping[str, str]) -> dict[str, Any]:
    from aivc.ontology import get_ontologies

    onto = get_ontologies()
    r = rollup_agreement(df["predicted_term_id"].tolist(), df["submitted_term_id"].tolist(), spec, onto)
    return r.to_dict(lambda t: label_of.get(t) or onto.label(t))


def rollup_headline(r: Mapping[str, Any]) -> str:
    """The one-sentence summary of a roll-up (the report's and ``aivc annotate``'s); its numbers add up.

    ``r`` is the report's ``rollup`` section (or the ``summary.rollup`` of a prediction version).
    """
    return (
        f"{_n(r['agree'])} of {_n(r['n_in_groups'])} labelled cells in the groups agree ({_pct(r['agree_fraction'])}); "
        f"{_n(r['conflict'])} conflict ({_n(r['conflict_other_group'])} predicted in another group, {_n(r['conflict_no_group'])} outside every group). "
        f"Not in the roll-up: {_n(r['n_not_in_rollup'])} labelled cells submitted with a term outside every group, {_n(r['n_unlabelled'])} unlabelled cells."
    )


# -- plots -------------------------------------------------------------------------------------
def _map(lake: Lake, rec: InstrumentRecord, df: pd.DataFrame, images: dict[str, str]) -> dict[str, Any]:
    """PCA of (a fixed sample of) the URs, coloured by predicted type."""
    from aivc.store.features import read_vectors

    if df.empty:
        return {"method": "pca", "n_points": 0}
    idx = np.arange(len(df))
    if len(idx) > MAX_MAP_POINTS:
        idx = np.sort(np.random.default_rng(0).choice(idx, MAX_MAP_POINTS, replace=False))
    ids = df["obs_id"].to_numpy()[idx]
    table, vec = read_vectors(lake, rec.reads, ids=ids.tolist(), datasets=set(df["dataset_id"]), columns=("id",))
    order = pd.Index(table.column("id").to_pylist()).get_indexer(ids)
    vec = vec[order].astype(np.float64)
    centred = vec - vec.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T if vt.shape[0] >= 2 else np.column_stack([centred[:, 0], np.zeros(len(centred))])
    explained = (s[:2] ** 2 / (s**2).sum()).tolist() if s.sum() > 0 else [0.0, 0.0]
    labels = df["predicted_label"].to_numpy()[idx]
    abstain = df["abstain"].to_numpy()[idx].astype(bool)
    x1 = f"PC1 ({explained[0]:.0%})"
    y1 = f"PC2 ({explained[1]:.0%})" if len(explained) > 1 else "PC2"
    images["map"] = qc_plots.category_scatter(xy[:, 0], xy[:, 1], labels, xlabel=x1, ylabel=y1, marked=abstain, marked_label="abstain (novel)")
    return {"method": "pca", "n_points": int(len(idx)), "explained_variance_ratio": [_r(e) for e in explained]}


def _heatmap(confusion: Mapping[str, Any], label_of: Mapping[str, str]) -> str:
    m = np.asarray(confusion["counts"], dtype=float)
    frac = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    rows = [label_of.get(t, t) for t in confusion["rows"]]
    cols = [label_of.get(t, t) for t in confusion["columns"]]
    return qc_plots.heatmap(frac, rows, cols, xlabel="predicted", ylabel="submitted", clabel="fraction of submitted row")


# -- HTML --------------------------------------------------------------------------------------
def render_html(data: Mapping[str, Any], images: Mapping[str, str]) -> str:
    """The whole report as one HTML page with no external resources."""
    s = data["summary"]
    title = f"aivc reannotation report: {data.get('prediction') or data['instrument']}"
    head = _table(
        ("", ""),
        [
            ("prediction version", _e(data.get("prediction") or "")), ("instrument", _e(data["instrument"])), ("embedding", _e(data["embedding"])),
            ("datasets", _e(", ".join(data["datasets"]))), ("created", _e(data.get("created_at") or "")),
        ],
        cls="meta",
    )  # fmt: skip
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        head,
        '<h2 id="summary">Summary</h2>',
        _table(
            ("cells", "labelled", "labelled, type known to the decoder", "agree (ontology-aware), of labelled", "exact, of labelled", "macro-F1", "coverage (nominal)", "mean set size", "abstained cells"),
            [(_n(s["n_cells"]), _n(s["n_labelled"]), _n(s["n_labelled_known_type"]), _pct(s["agree_fraction"]), _pct(s["exact_fraction"]),
              _f(s["macro_f1"]), f"{_pct(s['coverage'])} ({_pct(s['nominal_coverage'])})", _f(s["mean_set_size"]), _n(s["n_abstain"]))],
            numeric=range(9),
        ),  # fmt: skip
        _agreement_section(data["agreement"]),
        _per_class_section(data["per_class"]),
        _confusion_section(data["confusion"], data.get("labels", {}), images.get("confusion")),
        _disagreement_section(data["disagreements"]),
        '<h2 id="map">Map of the URs</h2>',
        _figure(images.get("map"), f"PCA of {_n(data['map'].get('n_points', 0))} cells' URs, coloured by predicted cell type; grey crosses: abstained (novel)"),
        _conformal_section(data["conformal"], data.get("labels", {})),
        _novelty_section(data["novelty"]),
        _rollup_section(data.get("rollup")),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _agreement_section(a: Mapping[str, Any]) -> str:
    nl, nc = a["n_labelled"], a["n_cells"]
    rows = [(f"<b>{_e(c)}</b>" if c in ("labelled, all", "all cells") else _e(c), _n(n), "" if fl is None else _pct(fl), _pct(fc)) for c, n, fl, fc in agreement_rows(a)]
    by = [(_e(d), _n(x["n_cells"]), _n(x["n_labelled"]), *(_n(x["counts"][c]) for c in CATEGORIES), _pct(x["agree_fraction"])) for d, x in a["by_dataset"].items()]
    return (
        '<h2 id="agreement">Agreement with submitted labels</h2>'
        '<p class="note">ancestor: the prediction is coarser than the submitted term; descendant: finer; both agree. '
        f"Each column of fractions has one denominator: the {_n(nl)} labelled cells, or all {_n(nc)} cells.</p>"
        + _table(("agreement", "cells", f"of {nl:,} labelled cells", f"of all {nc:,} cells"), rows, numeric=(1, 2, 3))
        + _table(("dataset", "cells", "labelled", *CATEGORIES, "agree, of labelled"), by, numeric=range(1, 9))
    )


def _per_class_section(p: Mapping[str, Any]) -> str:
    rows = [
        (f"{_e(r['label'])} <code>{_e(r['term_id'])}</code>", "yes" if r["known"] else "no", _n(r["support"]), _n(r["n_predicted"]), _f(r["precision"]), _f(r["recall"]), _f(r["f1"]))
        for r in p["classes"]
    ]
    return f'<h2 id="per-class">Per cell type (macro-F1 {_f(p["macro_f1"])})</h2>' + _table(
        ("cell type", "known to decoder", "submitted", "predicted", "precision", "recall", "F1"), rows, numeric=range(2, 7)
    )


def _confusion_section(c: Mapping[str, Any], label: Mapping[str, str], img: str | None) -> str:
    rows = [(_e(label.get(t, t)) + f" <code>{_e(t)}</code>", *(_n(v) for v in counts)) for t, counts in zip(c["rows"], c["counts"], strict=True)]
    return (
        '<h2 id="confusion">Confusion matrix</h2>'
        + _figure(img, "rows: submitted type; columns: predicted type; colour: fraction of the row")
        + _table(("submitted \\ predicted", *(label.get(t, t) for t in c["columns"])), rows, numeric=range(1, len(c["columns"]) + 1))
    )


def _disagreement_section(rows: Sequence[Mapping[str, Any]]) -> str:
    body = [
        (f"<code>{_e(r['obs_id'])}</code>", _e(r["submitted_label"]), _e(r["predicted_label"]), _f(r["probability"]), _e(", ".join(r["prediction_set"])), _f(r["novelty"]))
        for r in rows
    ]
    note = "" if rows else '<p class="note">No conflicting predictions.</p>'
    return f'<h2 id="disagreements">Most confident disagreements (top {TOP_DISAGREEMENTS})</h2>{note}' + (
        _table(("cell", "submitted", "predicted", "probability", "prediction set", "novelty"), body, numeric=(3, 5)) if rows else ""
    )


def _conformal_section(c: Mapping[str, Any], label: Mapping[str, str]) -> str:
    rows = [(f"{_e(label.get(t, t))} <code>{_e(t)}</code>", _n(x["n"]), _pct(x["coverage"])) for t, x in c["per_class"].items()]
    return (
        '<h2 id="conformal">Conformal prediction sets</h2>'
        f"<p>Coverage on {_n(c['n_evaluated'])} labelled cells of a type the decoder knows: <b>{_pct(c['coverage'])}</b> "
        f"(nominal {_pct(c['nominal_coverage'])}, alpha {_f(c['alpha'])}); mean set size {_f(c['mean_set_size_known'])} "
        f"({_f(c['mean_set_size_all'])} over all cells, {_n(c['empty_sets'])} empty sets). "
        f"{_n(c['n_labelled_unknown_type'])} labelled cells have a type the decoder was not trained on.</p>"
        + _table(("submitted type", "cells", "coverage"), rows, numeric=(1, 2))
    )


def _novelty_section(n: Mapping[str, Any]) -> str:
    return (
        '<h2 id="novelty">Novelty and abstentions</h2>'
        f"<p>{_e(n['method'])} (threshold {_f(n['threshold'])}). Abstained: {_n(n['n_abstain'])} cells ({_pct(n['fraction'])}); "
        f"among labelled cells of a known type {_pct(n['fraction_known_type'])}, of a type unknown to the decoder "
        f"{_pct(n['fraction_unknown_type'])}, unlabelled {_pct(n['fraction_unlabelled'])}.</p>"
    )


def _rollup_section(r: Mapping[str, Any] | None) -> str:
    if r is None:
        return '<h2 id="rollup">Roll-up</h2><p class="note">No roll-up was asked for (<code>--rollup</code>).</p>'
    rows = [
        (f"{_e(x['label'])} <code>{_e(x['term_id'])}</code>", _n(x["n_submitted"]), _n(x["n_agree"]), _n(x["n_conflict_other_group"]), _n(x["n_conflict_no_group"]), _pct(x["recall"]))
        for x in r["groups"]
    ]
    rows.append(("<b>all groups</b>", _n(r["n_in_groups"]), _n(r["agree"]), _n(r["conflict_other_group"]), _n(r["conflict_no_group"]), _pct(r["agree_fraction"])))
    return (
        f'<h2 id="rollup">Roll-up to {_e(r["spec"])}</h2>'
        f"<p>{_e(rollup_headline(r))}</p>"
        '<p class="note">A labelled cell counts when its submitted term rolls up into a group: it agrees when its prediction rolls up '
        "to the same group and conflicts when its prediction rolls up to another group or to none. "
        f"{_n(r['n_not_in_rollup_predicted_in_group'])} of the cells not in the roll-up were predicted into a group.</p>"
        + _table(("rolled-up type (submitted)", "labelled cells", "agree", "conflict: predicted in another group", "conflict: predicted outside every group", "agree, of the row"), rows, numeric=range(1, 6))
    )


def _figure(img: str | None, caption: str) -> str:
    if not img:
        return '<p class="note">No plot (no cells).</p>'
    return f"<figure>{img}<figcaption>{_e(caption)}</figcaption></figure>"  # inline SVG drawn by aivc.ingest.qc_plots


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Any = (), cls: str = "") -> str:
    num = set(numeric)
    th = "" if cls == "meta" else "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead>"
    body = "".join("<tr>" + "".join(f"<td{' class=num' if i in num else ''}>{c}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<table{f" class={cls}" if cls else ""}>{th}<tbody>{body}</tbody></table>'


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _n(v: Any) -> str:
    return "" if v is None else f"{int(v):,}"


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.1f}%"


def _finite(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def build_for(lake: Lake, folder: Path, rec: InstrumentRecord, *, rollup: RollUp | None = None) -> Any:
    """The report of the prediction rows in ``folder`` for a decoder of any type (dispatch on ``rec.type``)."""
    if rec.type == "protein-abundance":
        from aivc.instruments.protein import build_protein_report

        return build_protein_report(lake, folder, rec)
    if rec.type == "niche-domain":
        from aivc.instruments.niche_report import build_domain_report

        return build_domain_report(lake, folder, rec)
    return build_report(lake, folder, rec, rollup=rollup)


def write_report(lake: Lake, prediction: str, out_dir: str | Path, *, rollup: str | None = None) -> tuple[Path, Path]:
    """Recompute the report of a published prediction version into ``out_dir`` (e.g. with another roll-up)."""
    from aivc.instruments.predictions import get_prediction_version, version_dir
    from aivc.instruments.registry import get_instrument

    pv = get_prediction_version(lake, prediction)
    rec = get_instrument(lake, pv.instrument_ref)
    built = build_for(lake, version_dir(lake, pv.instrument, pv.version), rec, rollup=RollUp.parse(rollup) if rollup else None)
    return built.write(Path(out_dir), pv)  # type: ignore[no-any-return]
