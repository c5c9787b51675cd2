"""The portal's ASGI app: :func:`create_app` over one lake.

Routes: the JSON API (:mod:`.api`, under ``/api``), sign in / out (:mod:`.auth`), the HTML
pages (:mod:`.pages`, when present), static files (``/static``, shipped with the package:
nothing is loaded from the internet) and ``/docs``, the OpenAPI description of the API as a
page rendered here (FastAPI's own Swagger UI loads its scripts from a CDN, so it is off).

Errors: an :class:`~aivc.errors.AivcError` or :class:`~aivc.portal.auth.PortalError` is a
one-line answer, JSON ``{"error", "where", "code"}`` under ``/api``, an error page elsewhere;
anything else is a 500 that says only that the server failed (the traceback goes to the
server's log, never to the client).

Example
-------
>>> app = create_app("lake")  # doctest: +SKIP
>>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import html
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from aivc.errors import AccessDeniedError, AivcError, LakeBusyError, NotFoundError, UsageError
from aivc.portal.auth import CsrfCookieMiddleware, PortalError

HERE = Path(__file__).resolve().parent
log = logging.getLogger("aivc.portal")

#: HTTP status of each aivc error class (the most specific first); others are 400.
_STATUS: tuple[tuple[type[AivcError], int], ...] = ((NotFoundError, 404), (AccessDeniedError, 404), (LakeBusyError, 503), (UsageError, 400))


def status_of(exc: AivcError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def _wants_json(request: Request) -> bool:
    """Errors are JSON under /api and for the map page's data (``/embeddings/REF/map.json``),
    pages elsewhere."""
    path = request.url.path
    return path.startswith("/api/") or path == "/api" or (path.startswith("/embeddings/") and path.endswith("/map.json"))


#: An error message is cut to this many characters (some repeat the input, which may be long).
MAX_MESSAGE_CHARS = 300


def error_response(request: Request, status: int, message: str, where: str = "", code: str = "") -> Response:
    """One error, as JSON under /api and as a page elsewhere (the message escaped)."""
    message = message.splitlines()[0] if message else "error"
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    where = where[:MAX_MESSAGE_CHARS]
    if _wants_json(request):
        return JSONResponse({"error": message, "where": where, "code": code}, status_code=status)
    templates = getattr(request.app.state, "templates", None)
    if templates is not None:
        try:
            from aivc.portal.auth import PUBLIC

            who = getattr(request.state, "aivc_principal", None) or PUBLIC
            return templates.TemplateResponse(request, "error.html", {"status": status, "message": message, "where": where, "principal": who}, status_code=status)
        except Exception:  # noqa: BLE001 - no template yet: the plain page below
            pass
    body = f"<!doctype html><html><head><meta charset='utf-8'><title>{status} - aivc</title></head><body><h1>{status}</h1><p>{html.escape(message)}</p>"
    body += f"<p>where: {html.escape(where)}</p>" if where else ""
    return HTMLResponse(body + "<p><a href='/datasets'>datasets</a></p></body></html>", status_code=status)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(PortalError)
    async def _portal(request: Request, exc: PortalError) -> Response:
        return error_response(request, exc.status, exc.message, exc.where, exc.code)

    @app.exception_handler(AivcError)
    async def _aivc(request: Request, exc: AivcError) -> Response:
        return error_response(request, status_of(exc), exc.message, exc.where, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error_response(request, 400, f"bad request: {first.get('msg', 'invalid input')}", where, "BAD_REQUEST")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        msg = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and msg == "Not Found":
            msg = f"no such page: {request.url.path}"
        return error_response(request, exc.status_code, msg, "", "HTTP_ERROR")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "the server failed on this request (see its log)", "", "SERVER_ERROR")


def _docs_page(app: FastAPI) -> str:
    """The API's OpenAPI description as one HTML page: every route, its parameters and body."""
    spec = app.openapi()
    rows = []
    for path, ops in sorted(spec.get("paths", {}).items()):
        for method, op in ops.items():
            params = ", ".join(f"{p['name']} ({p['in']}{', required' if p.get('required') else ''})" for p in op.get("parameters", []))
            body = op.get("requestBody", {}).get("content", {})
            rows.append(
                f"<tr><td><code>{html.escape(method.upper())}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op.get('summary', ''))}<br><small>{html.escape((op.get('description') or '').strip().splitlines()[0] if op.get('description') else '')}</small></td>"
                f"<td>{html.escape(params)}</td><td>{html.escape(', '.join(body))}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>aivc API</title><link rel='stylesheet' href='/static/portal.css'></head><body>"
        f"<h1>{html.escape(spec['info']['title'])} {html.escape(spec['info']['version'])}</h1>"
        "<p>JSON answers have the shapes of the CLI's <code>--json</code>. Send <code>Authorization: Bearer TOKEN</code> "
        "(<code>aivc access token create USER</code>); without it you are <code>public</code>. The machine-readable "
        "description: <a href='/openapi.json'>/openapi.json</a>.</p>"
        "<table><thead><tr><th>method</th><th>path</th><th>what</th><th>parameters</th><th>body</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></body></html>"
    )


def create_app(lake_root: str | Path, *, max_upload_bytes: int = 2 * 1024**3, run_jobs: bool = True) -> FastAPI:
    """The portal over the lake at ``lake_root`` (a folder or ``s3://`` URI).

    ``max_upload_bytes`` bounds one submission upload (413 beyond it); ``run_jobs=False``
    queues submissions without running them (tests of the queue itself).
    """
    from importlib.metadata import PackageNotFoundError, version

    from fastapi.staticfiles import StaticFiles
    from fastapi.templating import Jinja2Templates

    from aivc.portal import api, auth, cards
    from aivc.portal.submissions import SubmissionQueue
    from aivc.store.lake import Lake

    lake = Lake.open(str(lake_root))
    try:
        ver = version("aivc")
    except PackageNotFoundError:
        ver = "0"
    queue = SubmissionQueue(lake, run_jobs=run_jobs)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        queue.start()  # sweeps uploads left by a stopped server
        try:
            yield
        finally:
            queue.stop()  # the running job's subprocess is stopped by its pid

    app = FastAPI(title="aivc portal API", version=ver, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.lake = lake
    app.state.max_upload_bytes = int(max_upload_bytes)
    app.state.templates = Jinja2Templates(directory=str(HERE / "templates"))  # .html: autoescaped
    app.state.submissions = queue
    app.add_middleware(CsrfCookieMiddleware)
    _install_errors(app)
    (HERE / "static").mkdir(exist_ok=True)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(api.router)
    app.include_router(auth.router)
    try:
        from aivc.portal import pages
    except ImportError:
        pages = None
    if pages is not None:
        app.include_router(pages.router)
        app.include_router(cards.router)  # model / instrument cards, reannotation reports

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(_docs_page(app))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}  # not the lake's location: anyone may ask

    return app


#: Environment variables through which ``aivc serve --workers N`` hands its options to each worker process.
ENV_LAKE, ENV_MAX_UPLOAD = "AIVC_PORTAL_LAKE", "AIVC_PORTAL_MAX_UPLOAD_BYTES"


def app_from_env() -> FastAPI:
    """The app of one ``aivc serve`` worker process (uvicorn's factory for ``--workers N``)."""
    import os

    return create_app(os.environ[ENV_LAKE], max_upload_bytes=int(os.environ.get(ENV_MAX_UPLOAD, 2 * 1024**3)))
