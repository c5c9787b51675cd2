"""Versions made only from datasets a principal may not see do not exist for it on any route,
and odd input gets a clean, short, typed error (found by the portal's security review)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.portal.conftest import CONSORTIUM_DS, PUBLIC_DS


@pytest.fixture(scope="module")
def hidden(portal_lake, tmp_path_factory):  # noqa: ANN001, ANN201
    """The portal lake plus ``cell:secret@1`` (PCA of the consortium dataset only) and
    ``predictions:celltype@2`` (of the consortium dataset only)."""
    import shutil

    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.instruments.annotate import annotate
    from aivc.portal.app import create_app
    from aivc.store.lake import Lake

    root = tmp_path_factory.mktemp("hidden") / "lake"
    shutil.copytree(portal_lake.root, root, symlinks=True, ignore=shutil.ignore_patterns(".portal"))
    lake = Lake.open(root)
    secret = embed_pca(lake, name="secret", datasets=[CONSORTIUM_DS], params=PcaParams(n_components=8, n_top_genes=300))
    pv = annotate(lake, "celltype@1", datasets=[CONSORTIUM_DS], engine="local", report=False)
    with TestClient(create_app(str(root), run_jobs=False)) as c:
        yield c, secret.ref, pv.ref, {"Authorization": f"Bearer {portal_lake.tokens['alice']}"}


def _same_404(a, b, ref_a: str, ref_b: str) -> None:  # noqa: ANN001
    assert a.status_code == b.status_code == 404, (a.text, b.text)
    assert a.json()["error"].replace(ref_a, "R") == b.json()["error"].replace(ref_b, "R")


def test_a_hidden_version_is_a_missing_one_everywhere(hidden, portal_lake) -> None:  # noqa: ANN001
    c, secret, pv, alice = hidden
    _same_404(c.get(f"/api/predictions/{pv}"), c.get("/api/predictions/predictions:nope@1"), pv, "predictions:nope@1")
    assert c.get(f"/api/predictions/{pv}", headers=alice).json()["n_rows"] == 350
    nine = c.get("/api/predictions/predictions:celltype@9")
    assert nine.status_code == 404 and "versions" not in nine.json()["error"]  # names no other version
    _same_404(c.get(f"/api/neighbors/{secret}/x"), c.get("/api/neighbors/cell:nope@1/x"), secret, "cell:nope@1")
    assert "versions" not in c.get("/api/neighbors/cell:secret@9/x").json()["error"]
    ref = portal_lake.embedding_ref
    hid = c.get(f"/embeddings/{ref}/map.json?color=prediction:{pv}")
    miss = c.get(f"/embeddings/{ref}/map.json?color=prediction:predictions:nope@1")
    assert hid.headers["content-type"].startswith("application/json")  # the map script reads errors as JSON
    _same_404(hid, miss, pv, "predictions:nope@1")
    assert c.get(f"/embeddings/{secret}").status_code == 404 and c.get(f"/embeddings/{secret}", headers=alice).status_code == 200
    for path in ("/embeddings", "/models", "/api/features", "/api/predictions"):
        body = c.get(path).text
        assert secret not in body and pv not in body and CONSORTIUM_DS not in body, path
    assert pv in c.get("/api/predictions", headers=alice).text
    assert "lake" not in c.get("/healthz").json()


def test_the_map_colours_every_cell_of_a_map_by_a_field(hidden) -> None:  # noqa: ANN001
    c, secret, _pv, alice = hidden
    res = c.get(f"/embeddings/{secret}/map.json?color=cell_type", headers=alice)
    m = res.json()
    assert res.status_code == 200, m
    assert len(m["ids"]) == 350 and None not in m["values"]  # alice sees 700 cells; the map holds 350
    bad = c.get(f"/embeddings/{secret}/map.json?color=vector", headers=alice)
    assert bad.status_code == 400 and bad.headers["content-type"].startswith("application/json")


def test_odd_input_gets_short_typed_errors(hidden, portal_lake) -> None:  # noqa: ANN001
    c, _secret, pv, alice = hidden
    long = c.get(f"/api/neighbors/{portal_lake.embedding_ref}/{'x' * 60_000}")
    assert long.status_code == 404 and len(long.content) < 1000
    rows = c.get(f"/api/predictions/{pv.replace('@2', '@1')}", params={"dataset": f"{PUBLIC_DS}@1"}).json()
    assert {r["dataset_id"] for r in rows["rows"]} == {PUBLIC_DS}  # ID@VERSION as /api/predictions lists it
    c.get("/login")
    q = "SELECT '" + "é" * 4000 + "' AS x"
    page = c.post("/sql", data={"query": q, "csrf": c.cookies.get("aivc_csrf")})
    assert page.status_code == 200 and 'id="n-rows"' in page.text  # 4,000 characters, 24 kB URL-encoded
    bad = c.post("/api/submissions", headers=alice, data={"reuse": "not-an-id<script>", "manifest_text": "x: 1"}, files={"data": ("a.h5ad", b"x")})
    assert bad.status_code == 400 and bad.json()["where"] == "reuse"
