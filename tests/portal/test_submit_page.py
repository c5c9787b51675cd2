"""The browser's path through the pages with a cookie session: sign in, SQL with the CSRF token, submit a bad file, read its errors, fix and resubmit."""

from __future__ import annotations

import time

import yaml
from fastapi.testclient import TestClient

from tests.portal.conftest import CONSORTIUM_DS, PUBLIC_DS


def _client(root) -> TestClient:  # noqa: ANN001
    from aivc.portal.app import create_app

    return TestClient(create_app(str(root)), follow_redirects=False)


def sign_in(c: TestClient, token: str) -> None:
    c.get("/login")  # sets the CSRF cookie
    csrf = c.cookies.get("aivc_csrf")
    res = c.post("/login", data={"token": token, "csrf": csrf})
    assert res.status_code == 303 and res.headers["location"] == "/datasets", res.text
    cookie = res.headers["set-cookie"]
    assert "aivc_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")


def test_signed_in_pages_show_what_the_user_may_see_and_sql_needs_the_csrf_token(portal_lake) -> None:  # noqa: ANN001
    with _client(portal_lake.root) as c:
        bad = c.post("/login", data={"token": "aivc_000000000000_" + "A" * 43, "csrf": c.cookies.get("aivc_csrf") or ""})
        assert bad.status_code in (401, 403)
        sign_in(c, portal_lake.tokens["alice"])
        page = c.get("/datasets")
        assert CONSORTIUM_DS in page.text and PUBLIC_DS in page.text and ">alice<" in page.text
        assert c.get(f"/datasets/{CONSORTIUM_DS}").status_code == 200
        q = "SELECT dataset_id, count(*) AS n FROM cells GROUP BY 1 ORDER BY 1"
        assert c.post("/sql", data={"query": q}).status_code == 403  # the session cookie without the form's token
        ok = c.post("/sql", data={"query": q, "csrf": c.cookies.get("aivc_csrf")})
        assert ok.status_code == 200 and CONSORTIUM_DS in ok.text and "2 rows" in ok.text
        csv = c.post("/sql.csv", data={"query": q, "csrf": c.cookies.get("aivc_csrf")})
        assert csv.status_code == 200 and csv.text.splitlines() == ["dataset_id,n", f"{PUBLIC_DS},350", f"{CONSORTIUM_DS},350"]
        refused = c.post("/sql", data={"query": "DROP TABLE cells", "csrf": c.cookies.get("aivc_csrf")})
        assert refused.status_code == 400 and 'id="error"' in refused.text
        out = c.post("/logout", data={"csrf": c.cookies.get("aivc_csrf")})
        assert out.status_code == 303
        c.cookies.delete("aivc_session")
        assert CONSORTIUM_DS not in c.get("/datasets").text


def _wait_page(c: TestClient, url: str, timeout: float = 240.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = c.get(url).text
        if 'http-equiv="refresh"' not in text:
            return text
        time.sleep(0.5)
    raise AssertionError(f"{url} still running after {timeout} s")


def test_submit_a_bad_file_read_the_error_fix_and_resubmit_with_a_hostile_title(fresh_lake, pbmc_files) -> None:  # noqa: ANN001
    from aivc.demo import pbmc_manifest
    from aivc.store.lake import Lake
    from aivc.store.tokens import create_token

    token, _ = create_token(Lake.open(fresh_lake), "alice")
    (h1, _), _ = pbmc_files
    title = "<script>alert(1)</script> PBMC"
    man = pbmc_manifest("portal-page", labelled=True, title=title)
    with _client(fresh_lake) as c:
        sign_in(c, token)
        csrf = c.cookies.get("aivc_csrf")
        bad = yaml.safe_dump(man | {"organism": "NCBITaxon:0000"})
        res = c.post("/submit", data={"csrf": csrf, "manifest_text": bad}, files={"data": ("pbmc.h5ad", h1.read_bytes())})
        assert res.status_code == 303 and res.headers["location"].startswith("/submissions/")
        text = _wait_page(c, res.headers["location"])
        assert 'id="rejected"' in text and 'id="errors"' in text and "organism" in text
        res = c.post("/submit", data={"csrf": csrf, "manifest_text": yaml.safe_dump(man)}, files={"data": ("pbmc.h5ad", h1.read_bytes())})
        text = _wait_page(c, res.headers["location"])
        assert 'id="committed"' in text and "portal-page@1" in text
        page = c.get("/datasets")
        assert "&lt;script&gt;alert(1)&lt;/script&gt; PBMC" in page.text and "<script>alert(1)" not in page.text
        assert "<script>alert(1)" not in c.get("/datasets/portal-page").text
