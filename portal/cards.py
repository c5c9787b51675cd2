"""The portal's cards: models, instruments and reannotation reports with their lineage.

==================================  =========================================================
``GET /models``                     models, embedding versions, instruments and prediction
                                    versions, each linking to its card (or map)
``GET /models/{ref}``               a model card: type, parameters, training summary, the
                                    datasets it was trained on, embeddings made from it and
                                    the instruments that read them
``GET /instruments/{ref}``          an instrument card: kind, the embedding it reads, its
                                    classes, calibration, training datasets, predictions
``GET /predictions/{ref}``          the reannotation report of a prediction version, over
                                    the cells the principal may see
``GET /predictions/{ref}/report.html``  the stored full report (all its datasets visible only)
==================================  =========================================================

Access follows :mod:`aivc.portal.api`: a version is shown when the principal may see one of
the datasets it was made from (or it names none); only the visible datasets are named, never
counted. Whatever was computed over every dataset (training metrics, configs, row counts, the
stored report) is shown only to a principal who may see all of them. A version that is
hidden, missing or named by a malformed ref is one and the same 404.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from aivc.errors import AivcError, NotFoundError
from aivc.portal import api
from aivc.portal.auth import csrf_token, lake_of, principal

router = APIRouter(include_in_schema=False)

#: What a ref in a card's URL may look like before any lookup (registry refs are narrower).
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9:@._-]{0,199}")
#: The prediction column whose values are counted, the first present.
LABEL_COLUMNS = ("predicted_label", "predicted_domain", "predicted_term_id")
#: Metric sections left out of a card's scalar tables (long per-class or per-trial lists).
_SKIP_METRICS = ("per_class", "class_cells", "model_selection", "excluded_classes")
_MAX_SCALARS = 80
_MAX_CURVE_EPOCHS = 2000


@dataclass(frozen=True)
class View:
    """What one principal may see: the owner sees everything, others their visible datasets."""

    who: str
    owner: bool
    allowed: frozenset[str]

    def shown(self, refs: Iterable[str]) -> list[str]:
        """The dataset refs (``ID`` or ``ID@VERSION``) of ``refs`` the principal may see, in order."""
        return [r for r in refs if self.owner or r.split("@", 1)[0] in self.allowed]

    def sees_any(self, refs: Iterable[str]) -> bool:
        """A version made from ``refs`` is shown: it names none, or one the principal may see."""
        refs = list(refs)
        return not refs or bool(self.shown(refs))

    def sees_all(self, refs: Iterable[str]) -> bool:
        """Everything computed from ``refs`` may be shown: the principal sees every one."""
        refs = list(refs)
        return len(self.shown(refs)) == len(refs)


def view_of(lake: Any, who: str) -> View:
    owner = api._owner(lake, who)
    return View(who, owner, frozenset(api._visible(lake, who)))


def _render(request: Request, name: str, who: str, **ctx: Any) -> Response:
    ctx.update(principal=who, csrf=csrf_token(request))
    return request.app.state.templates.TemplateResponse(request, name, ctx)


def not_found(what: str, ref: str) -> NotFoundError:
    """The one 404 of a card: alike for a hidden, a missing and a malformed ref."""
    return NotFoundError(f"no {what} {ref[:80]!r} in this lake", where=what)


def lookup(lake: Any, what: str, ref: str, get: Callable[[Any, str], Any]) -> Any:
    """``get(lake, ref)``, or :func:`not_found` for a ref that is malformed, a path, or unknown."""
    if not _REF.fullmatch(ref) or ".." in ref:
        raise not_found(what, ref)
    try:
        return get(lake, ref)
    except AivcError:
        raise not_found(what, ref) from None


def visible_record(lake: Any, view: View, what: str, ref: str, get: Callable[[Any, str], Any]) -> tuple[Any, bool]:
    """The record ``ref`` (a model, instrument or embedding version, found by ``get``) and
    whether ``view`` sees every dataset of its lineage; :func:`not_found` when it sees none."""
    rec = lookup(lake, what, ref, get)
    refs = lineage_datasets(rec.lineage)
    if not view.sees_any(refs):
        raise not_found(what, ref)
    return rec, view.sees_all(refs)


def lineage_datasets(lineage: Any) -> list[str]:
    """The dataset versions a lineage names (``datasets``, and a perturbation's one ``dataset``)."""
    refs = list(lineage.datasets)
    if lineage.dataset and lineage.dataset not in refs:
        refs.append(lineage.dataset)
    return refs


# -- formatting -------------------------------------------------------------------------------
def show(v: Any) -> str:
    """One value as a card shows it."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 1e4 else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def scalars(d: Mapping[str, Any], skip: tuple[str, ...] = (), depth: int = 2, prefix: str = "") -> list[tuple[str, str]]:
    """The scalar entries of a (nested) record as ``(dotted key, shown value)`` rows; lists and
    deeper objects are left out, and at most :data:`_MAX_SCALARS` rows are kept."""
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        if k in skip:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            if depth > 1:
                rows.extend(scalars(v, (), depth - 1, key + "."))
        elif v is None or isinstance(v, bool | int | float | str):
            rows.append((key, show(v)))
    return rows[:_MAX_SCALARS]


# -- what each principal may see -------------------------------------------------------------
def visible_embeddings(lake: Any, view: View) -> list[dict[str, Any]]:
    """Embedding versions shown to ``view`` (``aivc features list --json`` rows; ``n_rows``
    only where every dataset of the version is visible)."""
    from aivc.cli_features import version_summary
    from aivc.store.features import list_versions

    out = []
    for v in list_versions(lake):
        refs = lineage_datasets(v.lineage)
        if not view.sees_any(refs):
            continue
        row = version_summary(v)
        model = v.lineage.model or (v.source or {}).get("model")
        out.append(row | {"n_rows": row["n_rows"] if view.sees_all(refs) else None, "model": model, "datasets": view.shown(refs)})
    return out


def visible_models(lake: Any, view: View) -> list[Any]:
    from aivc.training.registry import list_models

    return [m for m in list_models(lake) if view.sees_any(lineage_datasets(m.lineage))]


def visible_instruments(lake: Any, view: View, reads: set[str] | None = None) -> list[Any]:
    from aivc.instruments.registry import list_instruments

    return [r for r in list_instruments(lake) if view.sees_any(lineage_datasets(r.lineage)) and (reads is None or r.reads in reads)]


def _model_row(m: Any, view: View) -> dict[str, Any]:
    return {"ref": m.ref, "model_type": m.model_type, "created_at": m.created_at, "datasets": view.shown(lineage_datasets(m.lineage))}


def _instrument_row(r: Any, view: View) -> dict[str, Any]:
    from aivc.cli_instruments import instrument_summary

    row = instrument_summary(r)
    if not view.sees_all(lineage_datasets(r.lineage)):
        row |= {"calibration_macro_f1": None, "ece_before": None, "ece_after": None}
    return row


# -- pages ------------------------------------------------------------------------------------
@router.get("/instruments")
def instruments_page() -> Response:
    return RedirectResponse("/models#instruments", status_code=303)


@router.get("/models")
def models_page(request: Request, who: Annotated[str, Depends(principal)]) -> Response:
    lake = lake_of(request)
    view = view_of(lake, who)
    embeddings = visible_embeddings(lake, view)
    models = [_model_row(m, view) for m in visible_models(lake, view)]
    instruments = [_instrument_row(r, view) for r in visible_instruments(lake, view)]
    return _render(
        request, "models.html", who, models=models, model_refs={m["ref"] for m in models}, embeddings=embeddings,
        instruments=instruments, instrument_refs={i["ref"] for i in instruments}, predictions=api.visible_predictions(lake, who),
    )  # fmt: skip


def training_summary(m: Any) -> dict[str, Any]:
    """A model's training at a glance: epochs, the best epoch and its validation loss, the last
    epoch's losses, early stopping; and the loss curves (``epoch`` and each ``*_loss`` series)."""
    hist = [h for h in m.history if isinstance(h, Mapping)]
    val = [(h.get("epoch"), h["validation_loss"]) for h in hist if isinstance(h.get("validation_loss"), int | float)]
    best = min(val, key=lambda x: x[1]) if val else None
    best_epoch = m.training.get("best_epoch", m.metrics.get("best_epoch", best[0] if best else None))
    best_loss = next((loss for e, loss in val if e == best_epoch), best[1] if best else m.metrics.get("validation_loss"))
    last = hist[-1] if hist else {}
    rows = [
        ("epochs", show(m.training.get("epochs", len(hist) or None))),
        ("best epoch", show(best_epoch)),
        ("validation loss (best epoch)", show(best_loss)),
        ("train loss (last epoch)", show(last.get("train_loss"))),
        ("validation loss (last epoch)", show(last.get("validation_loss"))),
        ("stopped early", show(m.training.get("stopped_early"))),
    ]
    keys = sorted({k for h in hist for k, v in h.items() if k.endswith("_loss") and isinstance(v, int | float)})
    shown = hist[-_MAX_CURVE_EPOCHS:]
    curves = {"epoch": [h.get("epoch") for h in shown], "series": {k: [h.get(k) for h in shown] for k in keys}}
    return {"rows": [r for r in rows if r[1] != "—"], "curves": curves if keys else None}


@router.get("/models/{ref:path}")
def model_card(ref: str, request: Request, who: Annotated[str, Depends(principal)]) -> Response:
    from aivc.training.registry import get_model

    lake = lake_of(request)
    view = view_of(lake, who)
    m, full = visible_record(lake, view, "model", ref, get_model)
    embeddings = [e for e in visible_embeddings(lake, view) if e["model"] == m.ref]
    instruments = [_instrument_row(r, view) for r in visible_instruments(lake, view, {e["ref"] for e in embeddings})]
    details = None
    if full:  # computed over every training dataset: only for a principal who sees them all
        details = {
            "training": training_summary(m),
            "init": scalars(m.init),
            "metrics": scalars(m.metrics, _SKIP_METRICS),
            "run": scalars(m.training, ("best_epoch", "stopped_early", "epochs")),
            "encodings": [(k, f"{len(v):,} categories") for k, v in m.encodings.items()],
            "config": json.dumps(m.config, indent=2, sort_keys=True, default=str),
        }
    facts = [("type", m.model_type), ("created", m.created_at), ("genes", show(len(m.gene_ids))), ("organism", show(m.lineage.organism)), ("weights sha256", m.weights_sha256[:16] or "—")]
    return _render(
        request, "model_card.html", who, m=m, facts=facts, datasets=view.shown(lineage_datasets(m.lineage)), gene_ur=m.lineage.gene_ur,
        embeddings=embeddings, instruments=instruments, details=details,
    )  # fmt: skip


def calibration_rows(r: Any) -> list[tuple[str, str]]:
    """An instrument's headline calibration: macro-F1, conformal coverage against its nominal
    ``1 - alpha``, mean set size, calibration errors (those its record holds)."""
    m, alpha = r.metrics, r.outputs.get("alpha", r.config.get("alpha"))
    cal = m.get("calibration") or {}
    rows = [
        ("macro-F1 (out-of-fold)", cal.get("macro_f1")),
        ("accuracy (out-of-fold)", cal.get("accuracy")),
        ("balanced accuracy (out-of-fold)", cal.get("balanced_accuracy")),
        ("conformal coverage", m.get("calibration_coverage", m.get("coverage"))),
        ("nominal coverage (1 - alpha)", round(1 - float(alpha), 6) if isinstance(alpha, int | float) else None),
        ("mean prediction-set size", m.get("calibration_mean_set_size", m.get("mean_set_size"))),
        ("ECE before / after temperature", f"{show(m['ece_before'])} / {show(m.get('ece_after'))}" if "ece_before" in m else None),
        ("temperature", m.get("temperature")),
        ("novelty threshold", m.get("novelty_threshold")),
        ("training cells", m.get("n_train")),
    ]
    return [(k, show(v)) for k, v in rows if v is not None]


def _classes(r: Any, full: bool) -> list[dict[str, str]]:
    out = []
    for c in r.outputs.get("classes") or []:
        if not isinstance(c, Mapping):
            continue
        row = {"term_id": str(c.get("term_id", "")), "label": str(c.get("label", ""))}
        if full:
            row |= {"n_train": show(c.get("n_train")), "f1": show(c.get("oof_f1")), "coverage": show(c.get("oof_coverage"))}
        out.append(row)
    return out


@router.get("/instruments/{ref:path}")
def instrument_card(ref: str, request: Request, who: Annotated[str, Depends(principal)]) -> Response:
    from aivc.instruments.registry import get_instrument

    lake = lake_of(request)
    view = view_of(lake, who)
    r, full = visible_record(lake, view, "instrument", ref, get_instrument)
    emb = next((e for e in visible_embeddings(lake, view) if e["ref"] == r.reads), None)
    models = {m.ref for m in visible_models(lake, view)}
    model = emb["model"] if emb is not None and emb["model"] in models else None
    preds = [p for p in api.visible_predictions(lake, who, r.name) if p["instrument_ref"] == r.ref]
    facts = [("kind / type", f"{r.kind} / {r.type}"), ("created", r.created_at), ("classes", show(len(r.outputs.get("classes") or []))), ("alpha", show(r.outputs.get("alpha")))]
    if r.outputs.get("proteins"):
        facts.append(("proteins", show(len(r.outputs["proteins"]))))
    return _render(
        request, "instrument_card.html", who, r=r, facts=facts, reads=r.reads, reads_visible=emb is not None, model=model,
        classes=_classes(r, full), proteins=[str(p) for p in r.outputs.get("proteins") or []][:500],
        columns=sorted((r.outputs.get("columns") or {}).items()), datasets=view.shown(lineage_datasets(r.lineage)), predictions=preds,
        description=r.description if full else "", calibration=calibration_rows(r) if full else [],
        metrics=scalars(r.metrics, _SKIP_METRICS + ("calibration",)) if full else [], config=scalars(r.config) if full else [],
    )  # fmt: skip


# -- the reannotation report -------------------------------------------------------------------
def _mean(table: Any, column: str) -> float | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    if column not in table.column_names or table.num_rows == 0:
        return None
    col = table.column(column)
    if pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.int8())
    v = pc.mean(col).as_py()
    return None if v is None else float(v)


def label_stats(table: Any) -> dict[str, Any]:
    """Per predicted label of a prediction table: cells, mean confidence, abstentions and mean
    conformal set size (those columns that are present), largest first; and the same overall."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = set(table.column_names)
    label = next((c for c in LABEL_COLUMNS if c in cols), None)
    overall = {
        "n_cells": table.num_rows, "mean_probability": _mean(table, "probability"),
        "abstain_fraction": _mean(table, "abstain"), "mean_set_size": _mean(table, "set_size"),
    }  # fmt: skip
    if label is None or table.num_rows == 0:
        return {"label_column": label, "overall": overall, "labels": []}
    keys = [label] + (["predicted_term_id"] if label != "predicted_term_id" and "predicted_term_id" in cols else [])
    t = table.select(keys + [c for c in ("probability", "set_size", "abstain") if c in cols])
    aggs: list[tuple[Any, ...]] = [(label, "count", pc.CountOptions(mode="all"))]
    if "abstain" in cols:
        t = t.set_column(t.column_names.index("abstain"), "abstain", pc.cast(t.column("abstain"), pa.int64()))
        aggs.append(("abstain", "sum"))
    aggs += [(c, "mean") for c in ("probability", "set_size") if c in cols]
    rows = []
    for g in t.group_by(keys).aggregate(aggs).to_pylist():
        rows.append({
            "label": g[label], "term_id": g.get("predicted_term_id"), "n_cells": int(g[f"{label}_count"]),
            "abstained": g.get("abstain_sum"), "mean_probability": g.get("probability_mean"), "mean_set_size": g.get("set_size_mean"),
        })  # fmt: skip
    rows.sort(key=lambda x: (-x["n_cells"], str(x["label"])))
    return {"label_column": label, "overall": overall, "labels": rows}


def visible_prediction(lake: Any, view: View, ref: str) -> Any:
    """The prediction version ``ref`` if it covers a dataset ``view`` may see; otherwise the
    404 of a missing version (worded alike, naming no other version)."""
    from aivc.instruments.predictions import get_prediction_version

    v = lookup(lake, "prediction version", ref, get_prediction_version)
    if not view.sees_any(v.datasets):
        raise not_found("prediction version", ref)
    return v


def visible_embedding(lake: Any, view: View, ref: str) -> Any:
    """The embedding version ``ref`` if it holds cells of a dataset ``view`` may see; otherwise
    the 404 of a missing version."""
    from aivc.store.features import get_version

    return visible_record(lake, view, "embedding", ref, get_version)[0]


def _summary_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    names = {
        "n_cells": "cells", "n_labelled": "labelled cells", "agree": "agree with the submitted label", "agree_fraction": "agreement",
        "exact_fraction": "exact matches", "coverage": "conformal coverage", "nominal_coverage": "nominal coverage",
        "mean_set_size": "mean set size (known types)", "n_abstain": "abstained", "macro_f1": "macro-F1",
    }  # fmt: skip
    return [(names[k], show(summary[k])) for k in names if k in summary]


@router.get("/predictions/{ref:path}/report.html")
def stored_report(ref: str, request: Request, who: Annotated[str, Depends(principal)]) -> Response:
    """The report ``aivc annotate`` wrote (self-contained HTML), when every dataset it covers is visible."""
    from aivc.instruments.predictions import version_dir

    lake = lake_of(request)
    view = view_of(lake, who)
    v = visible_prediction(lake, view, ref)
    name = v.report.get("html")
    path = version_dir(lake, v.instrument, v.version) / str(name) if name else None
    if not view.sees_all(v.datasets) or path is None or "/" in str(name) or not path.is_file():
        raise not_found("prediction version", ref)
    return FileResponse(path, media_type="text/html; charset=utf-8")


@router.get("/predictions/{ref:path}")
def prediction_report(ref: str, request: Request, who: Annotated[str, Depends(principal)]) -> Response:
    from aivc.instruments.predictions import read_predictions

    lake = lake_of(request)
    view = view_of(lake, who)
    v = visible_prediction(lake, view, ref)
    shown = view.shown(v.datasets)
    full = view.sees_all(v.datasets)
    stats = label_stats(read_predictions(lake, v, {d.split("@", 1)[0] for d in shown}))
    instruments = {r.ref for r in visible_instruments(lake, view)}
    embedding_visible = any(e["ref"] == v.embedding_ref for e in visible_embeddings(lake, view))
    o = stats["overall"]
    overall = [
        ("cells", show(o["n_cells"])), ("mean confidence", show(o["mean_probability"])),
        ("abstained", show(o["abstain_fraction"] if o["abstain_fraction"] is None else f"{o['abstain_fraction']:.1%}")),
        ("mean conformal set size", show(o["mean_set_size"])),
    ]  # fmt: skip
    labels = [
        {"label": show(r["label"]), "term_id": r["term_id"] or "", "n_cells": show(r["n_cells"]), "abstained": show(r["abstained"]),
         "mean_probability": show(r["mean_probability"]), "mean_set_size": show(r["mean_set_size"])}
        for r in stats["labels"]
    ]  # fmt: skip
    plot = {"labels": [show(r["label"]) for r in stats["labels"]], "counts": [r["n_cells"] for r in stats["labels"]], "label_column": stats["label_column"]}
    return _render(
        request, "prediction_report.html", who, v=v, datasets=shown, overall=[r for r in overall if r[1] != "—"], labels=labels,
        plot=plot, instrument_visible=v.instrument_ref in instruments, embedding_visible=embedding_visible,
        summary=_summary_rows(v.summary) if full and v.summary else [], report_html=bool(full and v.report.get("html")),
        job=scalars(v.job) if full else [],
    )  # fmt: skip


__all__ = ["router", "View", "label_stats", "training_summary", "calibration_rows", "visible_prediction", "visible_embedding", "view_of"]
