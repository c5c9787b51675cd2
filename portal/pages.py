"""The portal's HTML pages (Jinja2, autoescaped), as the request's principal.

Every page applies the lake's access rules exactly like the API: a dataset the principal may
not see is a 404 like a missing one, and its cells never appear in a list, map or neighbours.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from aivc.errors import UsageError
from aivc.portal import api
from aivc.portal.auth import PUBLIC, check_csrf, csrf_token, lake_of, principal

router = APIRouter(include_in_schema=False)

#: The README's example queries, offered on the SQL page (a test checks each is in the README
#: word for word and runs on a portal lake).
EXAMPLE_QUERIES = (
    ("cells per type", "SELECT cell_type, count(*) AS n FROM cells GROUP BY 1 ORDER BY n DESC"),
    ("median counts per donor", "SELECT d.title, c.donor_id, median(c.n_counts) FROM cells c JOIN datasets d USING (dataset_id) GROUP BY ALL"),
    ("genes measured", "SELECT dataset_id, count(*) AS genes_measured FROM dataset_genes GROUP BY 1"),
    ("embedding versions", "SELECT ref, dim, n_rows, model, view_name, alias_name, is_latest FROM embedding_versions ORDER BY ref"),
    (
        "cell-type centroids",
        "WITH x AS (SELECT c.cell_type, generate_subscripts(e.vector, 1) AS i, unnest(e.vector) AS v FROM cell_pca e JOIN cells c USING (obs_id)), "
        "m AS (SELECT cell_type, i, avg(v) AS v FROM x GROUP BY ALL) SELECT cell_type, list(v ORDER BY i) AS centroid FROM m GROUP BY cell_type ORDER BY cell_type",
    ),
    (
        "reannotation disagreements",
        "SELECT c.cell_type, p.predicted_label, p.prediction_set, p.abstain FROM predictions_celltype p JOIN cells c USING (obs_id) "
        "WHERE p.predicted_term_id <> c.cell_type_ontology_term_id ORDER BY p.probability DESC LIMIT 20",
    ),
)
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _render(request: Request, name: str, who: str, status: int = 200, **ctx: Any) -> Response:
    ctx.update(principal=who, csrf=csrf_token(request))
    return request.app.state.templates.TemplateResponse(request, name, ctx, status_code=status)


@router.get("/")
def home() -> Response:
    return RedirectResponse("/datasets", status_code=303)


@router.get("/datasets")
def datasets_page(request: Request, who: Annotated[str, Depends(principal)], organism: str = "", tissue: str = "", assay: str = "", access: str = "") -> Response:
    from aivc.store.dataset_rows import dataset_rows

    lake = lake_of(request)
    rows = dataset_rows(lake, api._as(lake, who), current_only=True, organism=organism or None, tissue=tissue or None, assay=assay or None, access=access or None, with_terms=True)
    filters = {"organism": organism, "tissue": tissue, "assay": assay, "access": access}
    return _render(request, "datasets.html", who, rows=rows, filters=filters)


@router.get("/datasets/{ref}")
def dataset_page(ref: str, request: Request, who: Annotated[str, Depends(principal)]) -> Response:
    from aivc.store.dataset_rows import dataset_detail

    lake = lake_of(request)
    detail = dataset_detail(lake, api._check_ref(ref), api._as(lake, who))  # 404 unless visible
    version = detail.get("version") or {}
    plots = _qc_figures(lake, who, detail["id"], version.get("version"))
    return _render(request, "dataset.html", who, d=detail, version=version, report=detail.get("report"), plots=plots)


def _qc_figures(lake: Any, who: str, dataset_id: str, version: Any) -> list[tuple[str, str, Any]]:
    """The validation report's QC plots (inline SVG drawn by aivc's own code, no script) of
    one dataset version the principal may see (the caller checked), from the per-cell QC
    columns of the ``cells_all_versions`` view. A committed version never changes, so its
    plots are drawn once per server process."""
    from markupsafe import Markup

    if not isinstance(version, int):
        return []
    figures = _version_qc_figures(lake.uri, str(lake.info().get("lake_id")), dataset_id, version)
    return [(key, caption, Markup(svg)) for key, caption, svg in figures]  # our SVG: numbers, escaped labels


@functools.lru_cache(maxsize=64)
def _version_qc_figures(uri: str, lake_id: str, dataset_id: str, version: int) -> tuple[tuple[str, str, str], ...]:
    """``(key, caption, svg)`` of one committed version, keyed by the lake's id (a lake
    recreated at the same path is another lake)."""
    from aivc.ingest.report import qc_figures
    from aivc.store.lake import Lake
    from aivc.store.sql import query, sql_str

    sql = f"SELECT n_counts, n_genes, pct_mito FROM cells_all_versions WHERE dataset_id = {sql_str(dataset_id)} AND dataset_version = {version}"
    return tuple(qc_figures(query(Lake.open(uri), sql).to_pandas()))  # as the owner: the version is visible in full


@router.get("/submit")
def submit_page(request: Request, who: Annotated[str, Depends(principal)], resubmit: str = "") -> Response:
    """The upload form; ``?resubmit=ID`` starts from a rejected submission's manifest and offers
    its kept upload, so that fixing the manifest needs no new upload."""
    from aivc.portal.manifest_form import form_spec

    if who == PUBLIC:
        return RedirectResponse("/login", status_code=303)
    queue, manifest, reuse = request.app.state.submissions, "", None
    if resubmit:
        owner = api._owner(lake_of(request), who)
        st = queue.status(resubmit, who, owner=owner)  # 404 for a bad id or another user's
        manifest = (queue.folder(resubmit) / "manifest.yaml").read_text(errors="replace")
        try:
            reuse = {"id": resubmit, "data": queue.kept_data(resubmit, who, owner=owner)[1], "bytes": st.get("bytes")}
        except UsageError:
            reuse = None  # committed, or the upload has expired: upload the file again
    return _render(
        request, "submit.html", who, limit_mib=request.app.state.max_upload_bytes // 2**20, spec=form_spec(), manifest=manifest, reuse=reuse
    )  # fmt: skip


@router.post("/submit")
async def submit_post(request: Request, who: Annotated[str, Depends(principal)]) -> Response:
    if who == PUBLIC:
        return RedirectResponse("/login", status_code=303)
    st = await api.receive_submission(request, who)
    return RedirectResponse(f"/submissions/{st['submission_id']}", status_code=303)


@router.get("/submissions/{submission_id}")
def submission_page(submission_id: str, request: Request, who: Annotated[str, Depends(principal)]) -> Response:
    if who == PUBLIC:
        return RedirectResponse("/login", status_code=303)
    lake = lake_of(request)
    st = request.app.state.submissions.status(submission_id, who, owner=api._owner(lake, who))
    done = st.get("status") in ("committed", "rejected", "failed")
    res = st.get("result") or {}
    findings = {"errors": res.get("errors") or [], "warnings": res.get("warnings") or []}
    return _render(request, "submission.html", who, st=st, done=done, findings=findings)


@router.api_route("/sql.csv", methods=["POST"])
async def sql_csv(request: Request, who: Annotated[str, Depends(principal)]) -> Response:
    return await sql_page(request, who, csv_out=True)


@router.api_route("/sql", methods=["GET", "POST"])
async def sql_page(request: Request, who: Annotated[str, Depends(principal)], q: str = "", csv_out: bool = False) -> Response:
    query, result, error = q[: api.MAX_QUERY_CHARS], None, None
    fmt = "csv" if csv_out else "html"
    if request.method == "POST":
        form = await request.form(max_files=0, max_fields=10, max_part_size=12 * api.MAX_QUERY_CHARS)  # URL-encoded: up to 12 bytes a character
        check_csrf(request, str(form.get("csrf") or ""))
        query = str(form.get("query") or "")
        try:
            if len(query) > api.MAX_QUERY_CHARS:
                raise UsageError(f"the query is longer than {api.MAX_QUERY_CHARS} characters", where="query")
            result = api.run_sql(lake_of(request), who, query)
        except UsageError as exc:  # includes refusals by the sandbox
            error = exc.message.splitlines()[0]
        except Exception as exc:  # noqa: BLE001 - an AivcError subclass such as a sandbox refusal
            from aivc.errors import AivcError

            if not isinstance(exc, AivcError):
                raise
            error = exc.message.splitlines()[0]
        if result is not None and fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(result["columns"])
            w.writerows([[r[c] for c in result["columns"]] if isinstance(r, dict) else r for r in result["rows"]])
            return Response(buf.getvalue(), media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="query.csv"'})
    return _render(request, "sql.html", who, query=query, result=result, error=error, examples=EXAMPLE_QUERIES, status=400 if error else 200)


@router.get("/embeddings")
def embeddings_page(request: Request, who: Annotated[str, Depends(principal)]) -> Response:
    from aivc.portal.cards import view_of, visible_embeddings

    lake = lake_of(request)
    return _render(request, "embeddings.html", who, rows=visible_embeddings(lake, view_of(lake, who)))


def _prediction_refs(lake: Any, who: str) -> list[str]:
    return [r["ref"] for r in api.visible_predictions(lake, who)]


def _visible_version(lake: Any, who: str, ref: str) -> Any:
    from aivc.portal.cards import view_of, visible_embedding

    return visible_embedding(lake, view_of(lake, who), ref)


@router.get("/embeddings/{ref}")
def embedding_map_page(ref: str, request: Request, who: Annotated[str, Depends(principal)]) -> Response:
    v = _visible_version(lake_of(request), who, ref)
    fields = ["dataset_id", "cell_type", "donor_id", "tissue", "assay", "disease", "sex", "n_genes", "n_counts", "pct_mito"]
    return _render(request, "map.html", who, ref=v.ref, fields=fields, predictions=_prediction_refs(lake_of(request), who))


@router.get("/embeddings/{ref}/map.json")
def embedding_map_data(ref: str, request: Request, who: Annotated[str, Depends(principal)], color: str = "dataset_id") -> dict[str, Any]:
    """The principal's cells of the map: ids, x, y and one colour value per cell."""
    from aivc.portal.cards import view_of, visible_embedding
    from aivc.portal.maps import visible_map

    lake = lake_of(request)
    view = view_of(lake, who)  # the principal's datasets, read once for every check below
    v = visible_embedding(lake, view, ref)
    visible = set(view.allowed)
    table = visible_map(lake, v.ref, visible)
    ids = table.column("id").to_pylist()
    values: dict[str, Any] = {}
    if color.startswith("prediction:"):
        from aivc.instruments.predictions import read_predictions
        from aivc.portal.cards import visible_prediction

        pt = read_predictions(lake, visible_prediction(lake, view, color.split(":", 1)[1]), visible)
        label = next((c for c in ("predicted_label", "label", "prediction", "cell_type") if c in pt.column_names), pt.column_names[-1])
        idcol = "obs_id" if "obs_id" in pt.column_names else "id"
        values = dict(zip(pt.column(idcol).to_pylist(), pt.column(label).to_pylist(), strict=False))
    elif color == "dataset_id":
        values = dict(zip(ids, table.column("dataset_id").to_pylist(), strict=False))
    else:
        if not _FIELD.fullmatch(color):
            raise UsageError("colour by a cell field name (letters, digits, _)", where="color")
        from aivc.instruments.sql import query as run_query

        from aivc.store.sql import sql_str

        on_map = sorted(set(table.column("dataset_id").to_pylist()))  # the map's datasets, not every visible one
        sql = f'SELECT obs_id, "{color}" AS value FROM cells WHERE dataset_id IN ({", ".join(map(sql_str, on_map)) or "NULL"})'
        res = run_query(lake, sql, principal=None if view.owner else who, limit=None)
        values = {r["obs_id"]: r["value"] for r in res.to_dicts()}
    return {"ref": v.ref, "color": color, "ids": ids, "x": table.column("x").to_pylist(), "y": table.column("y").to_pylist(), "values": [values.get(i) for i in ids]}


@router.get("/assets/plotly.min.js")
def plotly_js() -> Response:
    """plotly's bundled JS from the installed plotly package (nothing from the internet)."""
    import plotly

    return FileResponse(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", media_type="application/javascript")


__all__ = ["router", "PUBLIC"]
