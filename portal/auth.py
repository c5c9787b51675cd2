"""Who is asking: API tokens, the browser's session cookie, and CSRF protection.

A request is made by

- the user of ``Authorization: Bearer TOKEN`` (a token from ``aivc access token create``),
- else the user of the session cookie ``aivc_session`` (set by ``POST /login``; its value is a token),
- else ``public`` (anonymous).

A bad, revoked or expired token is a 401, never a silent fall back to ``public``.

CSRF (double submit): a form carries ``csrf_token(request)``, which is also set as the
cookie ``aivc_csrf``; a state-changing request authenticated by the session cookie must
send the same value (form field ``csrf`` or header ``X-CSRF-Token``), else 403. Requests
with a Bearer token carry no ambient credentials and need no CSRF token.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

SESSION_COOKIE = "aivc_session"
CSRF_COOKIE = "aivc_csrf"
CSRF_HEADER = "x-csrf-token"
PUBLIC = "public"
#: Longest token accepted (the format is ``aivc_<id>_<secret>``; anything longer is refused unread).
MAX_TOKEN_CHARS = 512

router = APIRouter()


class PortalError(Exception):
    """An HTTP error answered as JSON ``{"error": message}`` under /api, as a page elsewhere."""

    def __init__(self, status: int, message: str, *, where: str = "", code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.where = where
        self.code = code or {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND", 413: "TOO_LARGE"}.get(status, "HTTP_ERROR")


def lake_of(request: Request) -> Any:
    """The app's :class:`~aivc.store.lake.Lake`."""
    return request.app.state.lake


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise PortalError(401, "the Authorization header must be 'Bearer TOKEN' (a token from `aivc access token create`)", where="Authorization")
    return value.strip()


def user_for_token(request: Request, token: str, where: str) -> str:
    """The user a token belongs to; 401 when it is unknown, malformed, revoked or expired."""
    from aivc.store.tokens import InvalidToken, principal_for_token

    if len(token) > MAX_TOKEN_CHARS:
        raise PortalError(401, "invalid token: too long", where=where)
    lake = lake_of(request)
    try:
        return principal_for_token(lake, token)  # also refuses a token whose user was removed
    except InvalidToken as exc:
        raise PortalError(401, exc.message.splitlines()[0] if exc.message else "invalid token", where=where) from None


def principal(request: Request) -> str:
    """FastAPI dependency: the user name of the request, or ``"public"``."""
    cached = getattr(request.state, "aivc_principal", None)
    if cached is not None:
        return cached
    token = _bearer(request)
    via = "bearer"
    if token is None:
        token = request.cookies.get(SESSION_COOKIE) or None
        via = "cookie"
    if token is None:
        who, via = PUBLIC, "none"
    else:
        who = user_for_token(request, token, "Authorization" if via == "bearer" else SESSION_COOKIE)
    request.state.aivc_principal = who
    request.state.aivc_auth = via
    return who


def require_user(request: Request) -> str:
    """FastAPI dependency: like :func:`principal`, but 401 for anonymous requests."""
    who = principal(request)
    if who == PUBLIC:
        raise PortalError(401, "sign in first: send 'Authorization: Bearer TOKEN' (a token from `aivc access token create USER`)", where="Authorization")
    return who


def auth_method(request: Request) -> str:
    """How the request was authenticated: ``bearer``, ``cookie`` or ``none``."""
    principal(request)
    return request.state.aivc_auth


def csrf_token(request: Request) -> str:
    """The CSRF token for a form of this response (set as the ``aivc_csrf`` cookie too)."""
    have = request.cookies.get(CSRF_COOKIE)
    if have and 20 <= len(have) <= 100:
        return have
    new = getattr(request.state, "aivc_csrf_new", None)
    if new is None:
        new = secrets.token_urlsafe(32)
        request.state.aivc_csrf_new = new
    return new


def check_csrf(request: Request, form_value: str | None = None) -> None:
    """403 unless a cookie-authenticated request sends the CSRF token of its ``aivc_csrf`` cookie.

    ``form_value`` is the form's ``csrf`` field; the ``X-CSRF-Token`` header counts too.
    Bearer-token requests and anonymous ones (no ambient credentials) pass.
    """
    if auth_method(request) != "cookie":
        return
    _same_as_cookie(request, form_value)


def _same_as_cookie(request: Request, form_value: str | None) -> None:
    cookie = request.cookies.get(CSRF_COOKIE) or ""
    sent = form_value or request.headers.get(CSRF_HEADER) or ""
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise PortalError(403, "the form's CSRF token is missing or does not match; reload the page and try again", where="csrf", code="CSRF")


class CsrfCookieMiddleware:
    """Pure ASGI middleware: sets the ``aivc_csrf`` cookie when :func:`csrf_token` made a new one."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def send_with_cookie(message: dict) -> None:
            if message["type"] == "http.response.start":
                new = state.get("aivc_csrf_new")
                if new:
                    headers = list(message.get("headers", []))
                    headers.append((b"set-cookie", f"{CSRF_COOKIE}={new}; Path=/; SameSite=Strict".encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


# -- /login and /logout -------------------------------------------------------------------
_FALLBACK_LOGIN = """<!doctype html><html><head><meta charset="utf-8"><title>Sign in - aivc</title></head>
<body><h1>Sign in</h1>{error}<form method="post" action="/login">
<input type="hidden" name="csrf" value="{csrf}"><label>Token <input type="password" name="token" autocomplete="off"></label>
<button type="submit">Sign in</button></form></body></html>"""


def _login_page(request: Request, error: str | None, status: int) -> Response:
    import html

    import jinja2

    csrf = csrf_token(request)
    try:
        return request.app.state.templates.TemplateResponse(
            request, "login.html", {"csrf": csrf, "error": error, "principal": PUBLIC}, status_code=status
        )
    except jinja2.TemplateNotFound:
        err = f'<p class="error">{html.escape(error)}</p>' if error else ""
        return HTMLResponse(_FALLBACK_LOGIN.format(error=err, csrf=html.escape(csrf)), status_code=status)


@router.get("/login", include_in_schema=False)
def login_page(request: Request) -> Response:
    return _login_page(request, None, 200)


@router.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    form = await request.form(max_files=0, max_fields=10, max_part_size=4096)
    token = str(form.get("token") or "").strip()
    csrf = str(form.get("csrf") or "")
    try:
        _same_as_cookie(request, csrf)
    except PortalError as exc:
        return _login_page(request, exc.message, 403)
    if not token:
        return _login_page(request, "paste the token `aivc access token create USER` printed", 400)
    try:
        user_for_token(request, token, "token")
    except PortalError as exc:
        return _login_page(request, exc.message, 401)
    nxt = RedirectResponse("/datasets", status_code=303)
    nxt.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/", secure=request.url.scheme == "https")
    return nxt


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    form = await request.form(max_files=0, max_fields=10, max_part_size=4096)
    _same_as_cookie(request, str(form.get("csrf") or ""))
    out = RedirectResponse("/", status_code=303)
    out.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return out
