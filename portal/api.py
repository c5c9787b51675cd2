"""The portal's JSON API (``/api/...``): the shapes of the CLI's ``--json``, as the request's principal.

============================================  ===========================================
``GET  /api/datasets``                        ``aivc datasets --json`` (filters organism,
                                              tissue, assay, access, current_only)
``GET  /api/datasets/{id}[@version]``         versions, the version's record, its report
``GET  /api/datasets/{ref}/export?format=``   the version as .h5ad or .h5mu (a download)
``POST /api/sql``  ``{"query": ...}``         ``aivc sql --json``: ``{"columns", "rows"}``
``POST /api/submissions``                     multipart ``data`` + ``manifest``; 202 and
                                              ``{"submission_id", "status": "queued"}``
``GET  /api/submissions/{id}``                status, the ``aivc submit --json`` answer and
                                              the validation report
``GET  /api/features``                        ``aivc features list --json``
``GET  /api/neighbors/{ref}/{id}?k=``         ``aivc neighbors REF ID --json``
``GET  /api/predictions``                     ``aivc instruments predictions --json``
``GET  /api/predictions/{ref}``               the rows of one prediction version
============================================  ===========================================

Access: no token is ``public``; a dataset the principal may not see answers 404 exactly as a
missing one, and its cells never appear in SQL, neighbours, predictions or messages.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel

from aivc.errors import NotFoundError, UsageError
from aivc.portal.auth import PortalError, check_csrf, lake_of, principal, require_user

router = APIRouter(prefix="/api")

#: Longest SQL text accepted (characters); longer is a 413 before any parsing.
MAX_QUERY_CHARS = 20_000
#: Most rows one /api/sql or /api/predictions answer carries.
MAX_ROWS = 10_000
_CHUNK = 1024 * 1024


def _owner(lake: Any, who: str) -> bool:
    from aivc.store.access import lake_owner

    return who == lake_owner(lake)


def _as(lake: Any, who: str) -> str | None:
    """The principal argument of aivc's functions: ``None`` for the lake owner (sees all)."""
    return None if _owner(lake, who) else who


def _visible(lake: Any, who: str) -> set[str]:
    from aivc.store.access import visible_datasets

    return set(visible_datasets(lake, _as(lake, who)))


# -- datasets -------------------------------------------------------------------------------
@router.get("/datasets", summary="Dataset versions the principal may see")
def datasets(
    request: Request,
    who: Annotated[str, Depends(principal)],
    organism: str | None = None,
    tissue: str | None = None,
    assay: str | None = None,
    access: str | None = None,
    current_only: bool = False,
) -> list[dict[str, Any]]:
    from aivc.store.dataset_rows import dataset_rows

    lake = lake_of(request)
    return dataset_rows(lake, _as(lake, who), current_only=current_only, organism=organism, tissue=tissue, assay=assay, access=access)


@router.get("/datasets/{ref}", summary="One dataset: its versions, a version's record and report")
def dataset(ref: str, request: Request, who: Annotated[str, Depends(principal)]) -> dict[str, Any]:
    from aivc.store.dataset_rows import dataset_detail

    lake = lake_of(request)
    return dataset_detail(lake, _check_ref(ref), _as(lake, who))


def _check_ref(ref: str) -> str:
    """A dataset ref is ``ID`` or ``ID@VERSION`` with a plain id: nothing that could be a path."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(@[0-9]{1,9})?", ref) or ".." in ref:
        raise NotFoundError(f"no dataset {ref[:80]!r} in this lake", where="dataset")
    return ref


@router.get("/datasets/{ref}/export", summary="Download a dataset version as .h5ad or .h5mu")
def export(ref: str, request: Request, background: BackgroundTasks, who: Annotated[str, Depends(principal)], format: str = "h5ad") -> FileResponse:  # noqa: A002
    from aivc.store.dataset_rows import dataset_detail

    lake = lake_of(request)
    detail = dataset_detail(lake, _check_ref(ref), _as(lake, who))  # 404 unless visible
    if format not in ("h5ad", "h5mu"):
        raise UsageError(f"format must be h5ad or h5mu, not {format[:20]!r}", where="format")
    out_dir = Path(tempfile.mkdtemp(prefix="aivc-export-"))
    name = f"{detail['id']}-v{detail['version']['version']}.{format}"
    try:
        if format == "h5mu":
            from aivc.store.export_multimodal import export_h5mu

            export_h5mu(lake, f"{detail['id']}@{detail['version']['version']}", str(out_dir / name))
        else:
            from aivc.store.export import export_h5ad

            export_h5ad(lake, f"{detail['id']}@{detail['version']['version']}", str(out_dir / name))
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    background.add_task(shutil.rmtree, out_dir, True)
    return FileResponse(out_dir / name, filename=name, media_type="application/octet-stream")


# -- SQL ------------------------------------------------------------------------------------
class SqlBody(BaseModel):
    query: str
    limit: int = 1000


def run_sql(lake: Any, who: str, query: str, limit: int = 1000) -> dict[str, Any]:
    """``aivc sql --json`` as ``who``: ``{"columns", "rows"}`` (at most ``limit`` rows)."""
    from aivc.instruments.sql import query as run_query

    if len(query) > MAX_QUERY_CHARS:
        raise PortalError(413, f"the query is {len(query):,} characters; at most {MAX_QUERY_CHARS:,} are accepted", where="query", code="TOO_LARGE")
    if not query.strip():
        raise UsageError("the query is empty", where="query")
    if not 1 <= limit <= MAX_ROWS:
        raise UsageError(f"limit must be between 1 and {MAX_ROWS}", where="limit")
    res = run_query(lake, query, principal=_as(lake, who), limit=limit)
    return {"columns": res.columns, "rows": res.to_dicts()}


@router.post("/sql", summary="Run one read-only SQL statement as the principal")
def sql(body: SqlBody, request: Request, who: Annotated[str, Depends(principal)]) -> dict[str, Any]:
    check_csrf(request)  # a browser's cookie session must send X-CSRF-Token
    return run_sql(lake_of(request), who, body.query, body.limit)


# -- submissions ----------------------------------------------------------------------------
async def _limited_form(request: Request, limit: int) -> Any:
    """The multipart form, refusing (413) a body over ``limit`` bytes while it streams in."""
    from starlette.requests import Request as StarletteRequest

    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PortalError(413, f"the upload is {int(declared):,} bytes; this server accepts at most {limit:,}", where="data", code="TOO_LARGE")
        except ValueError:
            raise PortalError(400, "the Content-Length header is not a number", where="Content-Length") from None
    seen = 0
    receive = request.receive

    async def counted() -> Any:
        nonlocal seen
        msg = await receive()
        if msg["type"] == "http.request":
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise PortalError(413, f"the upload is over the {limit:,}-byte limit of this server", where="data", code="TOO_LARGE")
        return msg

    inner = StarletteRequest(request.scope, receive=counted)
    try:
        return await inner.form(max_files=2, max_fields=80, max_part_size=1024 * 1024)
    except PortalError:
        raise
    except Exception as exc:  # python-multipart / starlette: malformed body
        raise PortalError(400, f"malformed multipart body: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", where="body") from None


async def _save(upload: Any, dest: Path) -> int:
    n = 0
    with open(dest, "wb") as fh:
        while True:
            chunk = await upload.read(_CHUNK)
            if not chunk:
                return n
            fh.write(chunk)
            n += len(chunk)


async def receive_submission(request: Request, who: str) -> dict[str, Any]:
    """Stream a multipart upload to its job folder and queue it; returns the queued status.

    Shared by the API and the Submit page. The data is the file field ``data``, or, with the
    field ``reuse`` naming an earlier submission of the same user whose upload is still kept,
    that upload (a fix of the manifest needs no new upload). The manifest is the field
    ``manifest`` (a file or text), ``manifest_text``, or the Submit page's form fields
    (:mod:`aivc.portal.manifest_form`), in that order."""
    from starlette.datastructures import UploadFile

    from aivc.portal.manifest_form import has_form_fields, manifest_yaml_from_form
    from aivc.portal.submissions import data_name

    queue = request.app.state.submissions
    form = await _limited_form(request, request.app.state.max_upload_bytes)
    try:
        check_csrf(request, str(form.get("csrf") or "") or None)
        data = form.get("data")
        reuse = str(form.get("reuse") or "").strip()
        if reuse:
            from aivc.portal.submissions import ID_RE

            if not ID_RE.fullmatch(reuse):
                raise UsageError("'reuse' must be the id of an earlier submission (16 hex digits)", where="reuse")
        has_data = isinstance(data, UploadFile) and bool(data.filename)
        if not has_data and not reuse:
            raise UsageError("the form has no file field 'data' (the .h5ad / .h5mu / .h5 to submit)", where="data")
        owner = _owner(lake_of(request), who)
        name = data_name(data.filename) if has_data else queue.kept_data(reuse, who, owner=owner)[1]
        manifest_bytes = b""
        for field in ("manifest", "manifest_text"):
            m = form.get(field)
            if isinstance(m, UploadFile) and m.filename:
                manifest_bytes = await m.read(1024 * 1024 + 1)
            elif isinstance(m, str) and m.strip():
                manifest_bytes = m.encode()
            if manifest_bytes.strip():
                break
        if not manifest_bytes.strip() and has_form_fields(form):
            manifest_bytes = manifest_yaml_from_form(form)
        if not manifest_bytes.strip():
            raise UsageError("the form has no manifest (field 'manifest': the manifest YAML, as a file or as text; or the manifest form)", where="manifest")
        if len(manifest_bytes) > 1024 * 1024:
            raise PortalError(413, "the manifest is over 1 MiB", where="manifest", code="TOO_LARGE")
        sid, folder = queue.create(who)
        try:
            if has_data:
                n = await _save(data, folder / name)
            else:
                n = queue.link_data(reuse, who, folder, owner=owner)
            (folder / "manifest.yaml").write_bytes(manifest_bytes)
            return queue.queue_job(sid, who, name, n, resubmits=reuse or None)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    finally:
        await form.close()


@router.post("/submissions", status_code=202, summary="Upload data + manifest; validated and committed in the background")
async def submit(request: Request, who: Annotated[str, Depends(require_user)]) -> JSONResponse:
    st = await receive_submission(request, who)
    return JSONResponse({**st, "status_url": f"/api/submissions/{st['submission_id']}"}, status_code=202)


@router.get("/submissions/{submission_id}", summary="A submission's status, aivc submit --json answer and report")
def submission(submission_id: str, request: Request, who: Annotated[str, Depends(require_user)]) -> dict[str, Any]:
    lake = lake_of(request)
    return request.app.state.submissions.status(submission_id, who, owner=_owner(lake, who))


# -- features, neighbours, predictions ------------------------------------------------------
@router.get("/features", summary="Embedding versions (aivc features list --json)")
def features(request: Request, who: Annotated[str, Depends(principal)]) -> list[dict[str, Any]]:
    """Versions made from a dataset the principal may see; ``n_rows`` only where it sees all of
    them (the count includes the cells of the others), ``datasets`` only those it sees."""
    from aivc.portal.cards import view_of, visible_embeddings

    lake = lake_of(request)
    return visible_embeddings(lake, view_of(lake, who))


@router.get("/neighbors/{ref}/{obs_id}", summary="Nearest neighbours of one stored vector (aivc neighbors --json)")
def neighbors(ref: str, obs_id: str, request: Request, who: Annotated[str, Depends(principal)], k: Annotated[int, Query(ge=1, le=1000)] = 10) -> dict[str, Any]:
    from aivc.cli_neighbors import find
    from aivc.portal.cards import view_of, visible_embedding

    lake = lake_of(request)
    v = visible_embedding(lake, view_of(lake, who), ref)  # a hidden version is a missing one
    out = find(lake, v.ref, obs_id, k=k, principal=_as(lake, who))
    out["principal"] = who
    return out


def visible_predictions(lake: Any, who: str, instrument: str | None = None) -> list[dict[str, Any]]:
    """``aivc instruments predictions --json`` rows as ``who`` may see them: only the datasets it
    may see are named; a version that covers a hidden dataset loses its counts (they include the
    hidden cells); a version of hidden datasets only is left out."""
    from aivc.cli_instruments import prediction_summary
    from aivc.instruments.predictions import list_prediction_versions

    rows = [prediction_summary(v) for v in list_prediction_versions(lake, instrument)]
    if _owner(lake, who):
        return rows
    allowed = _visible(lake, who)
    out = []
    for r in rows:
        shown = [d for d in r["datasets"] if d.split("@", 1)[0] in allowed]
        if not shown:
            continue
        if len(shown) < len(r["datasets"]):
            r = r | {"datasets": shown, "n_rows": None, "summary": None, "job": None}
        out.append(r)
    return out


@router.get("/predictions", summary="Prediction versions (aivc instruments predictions --json), as the principal may see them")
def predictions(request: Request, who: Annotated[str, Depends(principal)], instrument: str | None = None) -> list[dict[str, Any]]:
    return visible_predictions(lake_of(request), who, instrument)


@router.get("/predictions/{ref}", summary="The rows of one prediction version, of the datasets the principal may see")
def prediction_rows(
    ref: str,
    request: Request,
    who: Annotated[str, Depends(principal)],
    dataset: str | None = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 1000,
) -> dict[str, Any]:
    from aivc.instruments.predictions import read_predictions
    from aivc.portal.cards import view_of, visible_prediction

    lake = lake_of(request)
    view = view_of(lake, who)
    v = visible_prediction(lake, view, ref)  # a hidden version is a missing one
    allowed = set(view.allowed)
    if dataset is not None:
        dataset = dataset.split("@", 1)[0]  # ID or ID@VERSION, as /api/predictions lists them
        if dataset not in allowed:
            raise NotFoundError(f"no dataset {dataset[:80]!r} in this lake", where="dataset")
        allowed = {dataset}
    table = read_predictions(lake, v, allowed)  # only the allowed datasets' partitions are read
    page = table.slice(offset, limit)
    return {"ref": v.ref, "n_rows": table.num_rows, "offset": offset, "columns": page.column_names, "rows": page.to_pylist()}
