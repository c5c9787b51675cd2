"""The browser's path through the pages with a cookie session: sign in, SQL with the CSRF token, submit a bad file, read its errors, fix and resubmit."""

from __future__ import annotations

import time
from pathlib import Path

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


def _form_fields(man: dict) -> dict[str, str]:
    """The Submit page's manifest form filled in with ``man`` (what a user types)."""
    out = {f"m.{k}": str(man[k]) for k in ("dataset_id", "title", "license", "access", "organism", "citation") if k in man}
    out["m.genes.id_type"] = man["genes"]["id_type"]
    for name, spec in man["obs"].items():
        for kind in ("column", "value"):
            if kind in spec:
                out[f"obs.{name}.{kind}"] = str(spec[kind]).lower() if isinstance(spec[kind], bool) else str(spec[kind])
    out["obs.cell_type.label_map"] = "\n".join(f"{a} = {b}" for a, b in man["obs"]["cell_type"]["label_map"].items())
    return out


def test_the_manifest_form_then_a_resubmission_that_reuses_the_upload(fresh_lake, pbmc_files) -> None:  # noqa: ANN001
    from aivc.demo import pbmc_manifest
    from aivc.store.lake import Lake
    from aivc.store.tokens import create_token

    lake = Lake.open(fresh_lake)
    token, _ = create_token(lake, "alice")
    other, _ = create_token(lake, "carol")
    (h1, _), _ = pbmc_files
    man = pbmc_manifest("portal-form", labelled=True, title="PBMC from the form")
    fields = _form_fields(man) | {"obs.cell_type.column": "bulk_labelz"}
    with _client(fresh_lake) as c:
        sign_in(c, token)
        csrf = c.cookies.get("aivc_csrf")
        form_page = c.get("/submit").text
        assert 'name="obs.cell_type.column"' in form_page and "NCBITaxon:10090" in form_page
        res = c.post("/submit", data={"csrf": csrf, **fields}, files={"data": ("pbmc.h5ad", h1.read_bytes())})
        assert res.status_code == 303, res.text
        first = res.headers["location"].rsplit("/", 1)[1]
        text = _wait_page(c, f"/submissions/{first}")
        assert 'id="rejected"' in text and "OBS_COLUMN_MISSING" in text and "obs[&#39;bulk_labelz&#39;] (cell_type)" in text, text
        assert "did you mean &#39;bulk_labels&#39;?" in text  # where it is wrong, and the closest column
        assert f'href="/submit?resubmit={first}"' in text
        queue_dir = Path(lake.root) / ".portal" / "uploads"
        assert (queue_dir / first / "pbmc.h5ad").stat().st_size == h1.stat().st_size  # kept for the resubmission
        again = c.get(f"/submit?resubmit={first}").text
        assert 'id="reuse"' in again and f'value="{first}"' in again and "bulk_labelz" in again  # the manifest it was, to fix
        fixed = yaml.safe_load((queue_dir / first / "manifest.yaml").read_text())
        assert fixed["obs"]["cell_type"]["column"] == "bulk_labelz" and fixed["dataset_id"] == "portal-form"
        fixed["obs"]["cell_type"]["column"] = "bulk_labels"
        res = c.post("/submit", data={"csrf": csrf, "reuse": first, "manifest_text": yaml.safe_dump(fixed)})  # no new upload
        assert res.status_code == 303, res.text
        second = res.headers["location"].rsplit("/", 1)[1]
        text = _wait_page(c, f"/submissions/{second}")
        assert 'id="committed"' in text and "portal-form@1" in text, text
        st = c.get(f"/api/submissions/{second}", headers={"Authorization": f"Bearer {token}"}).json()
        assert st["resubmits"] == first and st["result"]["n_cells"] == 350 and st["bytes"] == h1.stat().st_size
        assert not (queue_dir / second / "pbmc.h5ad").exists()  # committed: the lake holds the data now
        assert (queue_dir / first / "pbmc.h5ad").exists()
        # reusing a committed job's upload, or someone else's, is refused and queues nothing
        n_jobs = len(list(queue_dir.iterdir()))
        refused = c.post("/api/submissions", data={"reuse": second, "manifest_text": "x: 1"}, headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 400 and refused.json()["where"] == "reuse"
    with _client(fresh_lake) as c2:
        theirs = c2.post("/api/submissions", data={"reuse": first, "manifest_text": "x: 1"}, headers={"Authorization": f"Bearer {other}"})
        assert theirs.status_code == 404 and theirs.json()["where"] == "submission_id"  # like a missing one
        assert c2.get(f"/submit?resubmit={first}", headers={"Authorization": f"Bearer {other}"}).status_code == 404
    assert len(list(queue_dir.iterdir())) == n_jobs


def test_a_restarted_server_sweeps_what_a_stopped_one_left(tmp_path) -> None:  # noqa: ANN001
    import json
    import os
    import subprocess
    import sys

    from aivc.portal.submissions import KEEP_UPLOAD_S, STALE_UPLOAD_S, SubmissionQueue
    from aivc.store.lake import Lake

    lake = Lake.init(tmp_path / "lake")
    q = SubmissionQueue(lake, run_jobs=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ids = {}
    for kind in ("partial", "fresh_partial", "orphan", "live", "old_rejected", "new_rejected"):
        sid, folder = q.create("alice")
        ids[kind] = sid
        (folder / "d.h5ad").write_bytes(b"x" * 10)
        if kind.endswith("partial"):
            continue
        q.queue_job(sid, "alice", "d.h5ad", 10)
        st = json.loads((folder / "status.json").read_text())
        st |= {"status": "running" if kind == "orphan" else "queued" if kind == "live" else "rejected", "pid": dead.pid if kind == "orphan" else os.getpid()}
        (folder / "status.json").write_text(json.dumps(st))
    now = __import__("time").time()
    os.utime(q.folder(ids["partial"]), (now - STALE_UPLOAD_S - 5,) * 2)
    os.utime(q.folder(ids["old_rejected"]) / "status.json", (now - KEEP_UPLOAD_S - 5,) * 2)
    assert q.sweep() == {"removed_partial": 1, "marked_failed": 1, "expired_uploads": 1}
    assert not q.folder(ids["partial"]).exists() and (q.folder(ids["fresh_partial"]) / "d.h5ad").exists()
    orphan = q.status(ids["orphan"], "alice")
    assert orphan["status"] == "failed" and "nothing was committed" in orphan["error"]
    assert q.status(ids["live"], "alice")["status"] == "queued"  # its server (this process) is alive
    assert not (q.folder(ids["old_rejected"]) / "d.h5ad").exists() and (q.folder(ids["new_rejected"]) / "d.h5ad").exists()
    assert q.sweep() == {"removed_partial": 0, "marked_failed": 0, "expired_uploads": 0}
