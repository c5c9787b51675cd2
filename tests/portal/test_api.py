"""The portal's JSON API on a real PBMC lake: CLI shapes, access rules, hostile input, submissions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.portal.conftest import CONSORTIUM_DS, PUBLIC_DS, PortalLake

pytest.importorskip("fastapi")  # a declared dependency: this only guards a half-installed venv

from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def client(portal_lake: PortalLake):
    from aivc.portal.app import create_app

    with TestClient(create_app(str(portal_lake.root))) as c:
        yield c


def _bearer(portal_lake: PortalLake, user: str) -> dict[str, str]:
    if user not in portal_lake.tokens:
        pytest.fail("store/tokens.py (aivc access token) is missing: the portal cannot authenticate anyone")
    return {"Authorization": f"Bearer {portal_lake.tokens[user]}"}


def _cli_json(*args: str, lake: Path) -> object:
    from aivc.cli import app

    res = CliRunner().invoke(app, [*args, "--lake", str(lake), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_datasets_have_the_cli_shape_and_hide_consortium_data(client, portal_lake) -> None:  # noqa: ANN001
    anon = client.get("/api/datasets").json()
    assert [r["id"] for r in anon] == [PUBLIC_DS]
    assert anon == _cli_json("datasets", "--principal", "public", lake=portal_lake.root)
    alice = client.get("/api/datasets", headers=_bearer(portal_lake, "alice")).json()
    assert sorted(r["id"] for r in alice) == sorted([PUBLIC_DS, CONSORTIUM_DS])
    assert alice == _cli_json("datasets", "--principal", "alice", lake=portal_lake.root)
    # filters
    assert [r["id"] for r in client.get("/api/datasets", params={"access": "consortium"}, headers=_bearer(portal_lake, "alice")).json()] == [CONSORTIUM_DS]
    assert client.get("/api/datasets", params={"access": "consortium"}).json() == []
    assert client.get("/api/datasets", params={"organism": "mus_musculus"}).json() == []


def test_a_hidden_dataset_is_404_exactly_like_a_missing_one(client, portal_lake) -> None:  # noqa: ANN001
    ok = client.get(f"/api/datasets/{PUBLIC_DS}")
    assert ok.status_code == 200 and ok.json()["id"] == PUBLIC_DS and ok.json()["version"]["version"] == 1
    assert client.get(f"/api/datasets/{PUBLIC_DS}@1").json()["current_version"] == 1
    hidden = client.get(f"/api/datasets/{CONSORTIUM_DS}")
    missing = client.get("/api/datasets/pbmc68k-part9")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"].replace(CONSORTIUM_DS, "X") == missing.json()["error"].replace("pbmc68k-part9", "X")
    assert client.get(f"/api/datasets/{CONSORTIUM_DS}", headers=_bearer(portal_lake, "alice")).status_code == 200
    assert client.get(f"/api/datasets/{CONSORTIUM_DS}", headers=_bearer(portal_lake, "carol")).status_code == 404
    assert client.get(f"/api/datasets/{CONSORTIUM_DS}/export").status_code == 404


def test_sql_runs_as_the_principal(client, portal_lake) -> None:  # noqa: ANN001
    q = {"query": "SELECT dataset_id, count(*) AS n FROM cells GROUP BY dataset_id ORDER BY dataset_id"}
    anon = client.post("/api/sql", json=q).json()
    assert anon["columns"] == ["dataset_id", "n"] and [r["dataset_id"] for r in anon["rows"]] == [PUBLIC_DS]
    alice = client.post("/api/sql", json=q, headers=_bearer(portal_lake, "alice")).json()
    assert [r["dataset_id"] for r in alice["rows"]] == sorted([PUBLIC_DS, CONSORTIUM_DS])
    assert alice == _cli_json("sql", q["query"], "--principal", "alice", lake=portal_lake.root)
    refused = client.post("/api/sql", json={"query": "COPY cells TO '/tmp/x.csv'"})
    assert refused.status_code == 400 and refused.json()["error"]
    too_long = client.post("/api/sql", json={"query": "SELECT 1 " + " " * 30_000})
    assert too_long.status_code == 413


def test_neighbours_and_predictions_never_show_hidden_cells(client, portal_lake) -> None:  # noqa: ANN001
    ref = portal_lake.embedding_ref
    anon = client.get(f"/api/neighbors/{ref}/{portal_lake.public_cell}", params={"k": 20})
    assert anon.status_code == 200
    body = anon.json()
    assert body["ref"] == ref and len(body["neighbors"]) == 20
    assert {n["dataset_id"] for n in body["neighbors"]} == {PUBLIC_DS}
    alice = client.get(f"/api/neighbors/{ref}/{portal_lake.public_cell}", params={"k": 200}, headers=_bearer(portal_lake, "alice")).json()
    assert CONSORTIUM_DS in {n["dataset_id"] for n in alice["neighbors"]}
    # a consortium cell as the query: 404 for the public, an answer for alice
    assert client.get(f"/api/neighbors/{ref}/{portal_lake.consortium_cell}").status_code == 404
    assert client.get(f"/api/neighbors/{ref}/{portal_lake.consortium_cell}", headers=_bearer(portal_lake, "alice")).status_code == 200
    assert client.get(f"/api/neighbors/{ref}/{portal_lake.public_cell}", params={"k": 0}).status_code == 400

    pv = portal_lake.prediction_ref
    rows = client.get(f"/api/predictions/{pv}", params={"limit": 10_000}).json()
    assert rows["n_rows"] == len(rows["rows"]) > 0 and {r["dataset_id"] for r in rows["rows"]} == {PUBLIC_DS}
    both = client.get(f"/api/predictions/{pv}", params={"limit": 10_000}, headers=_bearer(portal_lake, "alice")).json()
    assert {r["dataset_id"] for r in both["rows"]} == {PUBLIC_DS, CONSORTIUM_DS} and both["n_rows"] == 700
    assert client.get(f"/api/predictions/{pv}", params={"dataset": CONSORTIUM_DS}).status_code == 404
    # the list of versions: the public sees only its datasets named, and no counts that include hidden cells
    anon_list = client.get("/api/predictions")
    assert CONSORTIUM_DS not in anon_list.text
    assert [(r["ref"], r["datasets"], r["n_rows"]) for r in anon_list.json()] == [(pv, [f"{PUBLIC_DS}@1"], None)]
    listed = client.get("/api/predictions", headers=_bearer(portal_lake, "alice")).json()
    assert listed == _cli_json("instruments", "predictions", lake=portal_lake.root)  # alice sees every dataset: the CLI's answer
    cli_rows = _cli_json("features", "list", lake=portal_lake.root)
    alice_rows = client.get("/api/features", headers=_bearer(portal_lake, "alice")).json()
    assert [{k: v for k, v in r.items() if k not in ("model", "datasets")} for r in alice_rows] == cli_rows  # the CLI's rows, and their lineage
    assert [r["n_rows"] for r in client.get("/api/features").json()] == [None] * len(cli_rows)  # the public: no count of hidden cells


@pytest.mark.parametrize("path", ["/api/datasets/..%2F..%2Fetc%2Fpasswd", "/api/datasets/%2e%2e", "/api/submissions/..%2F..%2Faccess.json", "/api/submissions/0123456789abcdef"])
def test_path_traversal_is_a_clean_404(client, portal_lake, path) -> None:  # noqa: ANN001
    res = client.get(path, headers=_bearer(portal_lake, "alice"))
    assert res.status_code == 404 and "error" in res.json() and "Traceback" not in res.text


def test_tokens(client, portal_lake) -> None:  # noqa: ANN001
    assert client.get("/api/datasets", headers={"Authorization": "Bearer aivc_nope_nope"}).status_code == 401
    assert client.get("/api/datasets", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.post("/api/submissions", files={"data": ("x.h5ad", b"x")}, data={"manifest": "a: 1"}).status_code == 401
    assert client.get("/docs").status_code == 200 and "/api/sql" in client.get("/docs").text and "cdn" not in client.get("/docs").text.lower()


def _wait(client, sid: str, headers: dict[str, str], timeout: float = 240.0) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = client.get(f"/api/submissions/{sid}", headers=headers).json()
        if st["status"] in ("committed", "rejected", "failed"):
            return st
        time.sleep(0.5)
    raise AssertionError(f"submission {sid} still {st['status']} after {timeout} s")


def test_submissions_run_in_the_background_and_two_at_once_both_commit(fresh_lake, pbmc_files, tmp_path) -> None:  # noqa: ANN001
    import yaml

    from aivc.demo import pbmc_manifest
    from aivc.portal.app import create_app
    from aivc.store.catalog import Catalog
    from aivc.store.lake import Lake
    from aivc.store.tokens import create_token

    token, _ = create_token(Lake.open(fresh_lake), "carol")
    h = {"Authorization": f"Bearer {token}"}
    (h1, _), _ = pbmc_files
    with TestClient(create_app(str(fresh_lake), max_upload_bytes=50 * 1024**2)) as c:
        # a bad manifest: rejected with the field it is wrong about; nothing committed
        bad = pbmc_manifest("portal-bad", labelled=True, title="bad") | {"organism": "NCBITaxon:0000"}
        r = c.post("/api/submissions", headers=h, files={"data": ("pbmc.h5ad", h1.read_bytes()), "manifest": ("m.yaml", yaml.safe_dump(bad).encode())})
        assert r.status_code == 202 and r.json()["status"] == "queued"
        bad_st = _wait(c, r.json()["submission_id"], h)
        assert bad_st["status"] == "rejected", bad_st
        errs = (bad_st["result"] or {}).get("errors") or []
        assert errs and any("organism" in (e.get("where") or "") for e in errs), errs
        # two good ones at once: both commit, one version each
        sids = []
        for name in ("portal-a", "portal-b"):
            man = yaml.safe_dump(pbmc_manifest(name, labelled=True, title=f"PBMC via the portal ({name})")).encode()
            r = c.post("/api/submissions", headers=h, files={"data": ("pbmc.h5ad", h1.read_bytes()), "manifest": ("m.yaml", man)})
            assert r.status_code == 202, r.text
            sids.append(r.json()["submission_id"])
        done = [_wait(c, s, h) for s in sids]
        assert [d["status"] for d in done] == ["committed", "committed"], done
        assert [d["result"]["dataset_id"] for d in done] == ["portal-a", "portal-b"]
        # another user cannot read carol's submission
        assert c.get(f"/api/submissions/{sids[0]}", headers=_bearer_of(fresh_lake, "alice")).status_code == 404
        # too large: refused while streaming, nothing queued
        n_before = len(list((Path(fresh_lake) / ".portal" / "uploads").iterdir()))
        big = c.post("/api/submissions", headers=h, files={"data": ("big.h5ad", b"\0" * (51 * 1024**2)), "manifest": ("m.yaml", b"a: 1")})
        assert big.status_code == 413, big.text
        assert len(list((Path(fresh_lake) / ".portal" / "uploads").iterdir())) == n_before
        # a name that is a path, a malformed body
        assert c.post("/api/submissions", headers=h, files={"data": ("notes.txt", b"x"), "manifest": ("m.yaml", b"a: 1")}).status_code == 400
        up = Path(fresh_lake) / ".portal" / "uploads"
        r = c.post("/api/submissions", headers=h, files={"data": ("../../x.h5ad", b"x"), "manifest": ("m.yaml", b"a: 1")})
        if r.status_code == 202:  # the multipart parser kept only the base name: stored inside its own folder
            assert r.json()["data"] == "x.h5ad" and (up / r.json()["submission_id"] / "x.h5ad").is_file()
        else:
            assert r.status_code == 400
        assert not (up.parent / "x.h5ad").exists() and not (up.parent.parent / "x.h5ad").exists()
        mal = c.post("/api/submissions", headers={**h, "Content-Type": "multipart/form-data; boundary=zz"}, content=b"--zz\r\nnot a part")
        assert mal.status_code == 400
    ids = {v.dataset_id for v in Catalog(Lake.open(fresh_lake)).all_versions()}
    assert {"portal-a", "portal-b"} <= ids and "portal-bad" not in ids


def _bearer_of(lake_root: Path, user: str) -> dict[str, str]:
    from aivc.store.lake import Lake
    from aivc.store.tokens import create_token

    token, _ = create_token(Lake.open(lake_root), user)
    return {"Authorization": f"Bearer {token}"}
