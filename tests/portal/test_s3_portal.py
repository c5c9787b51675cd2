"""The portal over an ``s3://`` lake (the moto S3 server): browse, SQL, access, and a submission
through the API, whose upload and status live in the lake's local work folder, never in the bucket."""

from __future__ import annotations

import time

import yaml
from fastapi.testclient import TestClient


def test_the_portal_serves_an_s3_lake_and_commits_a_submission_to_it(s3_lake_uri, pbmc_files, tmp_path) -> None:  # noqa: ANN001
    from aivc.demo import pbmc_manifest
    from aivc.ingest.submission import submit
    from aivc.portal.app import create_app
    from aivc.store.access import add_user
    from aivc.store.lake import Lake
    from aivc.store.tokens import create_token

    lake = Lake.init(s3_lake_uri)
    (h1, m1), (h2, _) = pbmc_files
    m2 = tmp_path / "consortium.yaml"
    man = pbmc_manifest("s3-consortium", labelled=True, title="consortium on S3") | {"access": "consortium"}
    m2.write_text(yaml.safe_dump(man))
    assert submit(lake, h1, m1).status == "committed"
    assert submit(lake, h2, m2).status == "committed"
    add_user(lake, "alice", ["consortium"])
    token, _ = create_token(lake, "alice")
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(s3_lake_uri)) as c:
        public = [d["id"] for d in c.get("/api/datasets").json()]
        member = [d["id"] for d in c.get("/api/datasets", headers=auth).json()]
        assert "s3-consortium" not in public and "s3-consortium" in member and len(member) == len(public) + 1
        assert c.get("/api/datasets/s3-consortium").status_code == 404
        q = {"query": "SELECT dataset_id, count(*) AS n FROM cells GROUP BY 1 ORDER BY 1"}
        assert [r["dataset_id"] for r in c.post("/api/sql", json=q).json()["rows"]] == public
        assert sum(r["n"] for r in c.post("/api/sql", json=q, headers=auth).json()["rows"]) == 700
        third = yaml.safe_dump(pbmc_manifest("s3-portal", labelled=True, title="via the portal"))
        r = c.post("/api/submissions", headers=auth, data={"manifest_text": third}, files={"data": ("p.h5ad", h1.read_bytes())})
        assert r.status_code == 202, r.text
        sid = r.json()["submission_id"]
        deadline = time.monotonic() + 240
        while (st := c.get(f"/api/submissions/{sid}", headers=auth).json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, st
            time.sleep(0.5)
        assert st["status"] == "committed", st
        assert st["result"]["dataset_id"] == "s3-portal" and st["result"]["n_cells"] == 350
        assert "s3-portal" in [d["id"] for d in c.get("/api/datasets").json()]
    reopened = Lake.open(s3_lake_uri)
    assert (reopened.root / ".portal" / "uploads" / sid / "status.json").is_file()  # the local work folder
    dirs, _files = reopened.storage.children("")
    assert ".portal" not in dirs and "catalog" in dirs  # nothing of the portal's own goes to the bucket
