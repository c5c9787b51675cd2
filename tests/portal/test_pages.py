"""The portal's HTML pages (TestClient): access rules on every page, escaping, SQL, maps."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.portal.conftest import CONSORTIUM_DS, PUBLIC_DS, PortalLake


def _client(root) -> TestClient:  # noqa: ANN001
    from aivc.portal.app import create_app

    return TestClient(create_app(str(root)), follow_redirects=False)


def sign_in(c: TestClient, token: str) -> None:
    c.get("/login")
    res = c.post("/login", data={"token": token, "csrf": c.cookies.get("aivc_csrf")})
    assert res.status_code == 303, res.text


@pytest.fixture(scope="module")
def anon(portal_lake: PortalLake):
    with _client(portal_lake.root) as c:
        yield c


def test_anonymous_never_sees_the_consortium_dataset(anon, portal_lake) -> None:  # noqa: ANN001
    page = anon.get("/datasets")
    assert page.status_code == 200 and PUBLIC_DS in page.text and CONSORTIUM_DS not in page.text
    hidden, missing = anon.get(f"/datasets/{CONSORTIUM_DS}"), anon.get("/datasets/pbmc68k-part9")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.text.replace(CONSORTIUM_DS, "X") == missing.text.replace("pbmc68k-part9", "X")  # only the id asked for
    assert anon.get(f"/api/datasets/{CONSORTIUM_DS}/export").status_code == 404
    m = anon.get(f"/embeddings/{portal_lake.embedding_ref}/map.json").json()
    assert portal_lake.public_cell in m["ids"] and portal_lake.consortium_cell not in m["ids"]
    assert set(m["values"]) == {PUBLIC_DS} and len(m["x"]) == len(m["ids"]) > 0
    assert anon.get("/submit").status_code == 303
    anon.get("/sql")
    sql = anon.post("/sql", data={"query": "SELECT DISTINCT dataset_id FROM cells", "csrf": anon.cookies.get("aivc_csrf")})
    assert sql.status_code == 200 and PUBLIC_DS in sql.text and CONSORTIUM_DS not in sql.text
    models = anon.get("/models")
    assert models.status_code == 200 and CONSORTIUM_DS not in models.text
    assert "celltype@1" in models.text and "predictions:celltype@1" in models.text


def test_signed_in_member_sees_both_and_downloads_csv(portal_lake) -> None:  # noqa: ANN001
    if not portal_lake.tokens:
        pytest.fail("store.tokens is missing: the portal fixture made no tokens")
    with _client(portal_lake.root) as c:
        sign_in(c, portal_lake.tokens["alice"])
        page = c.get("/datasets")
        assert CONSORTIUM_DS in page.text and "alice" in page.text
        d = c.get(f"/datasets/{CONSORTIUM_DS}")
        assert d.status_code == 200 and "export?format=h5ad" in d.text and "Validation report" in d.text
        m = c.get(f"/embeddings/{portal_lake.embedding_ref}/map.json", params={"color": "dataset_id"}).json()
        assert portal_lake.consortium_cell in m["ids"] and set(m["values"]) == {PUBLIC_DS, CONSORTIUM_DS}
        by_type = c.get(f"/embeddings/{portal_lake.embedding_ref}/map.json", params={"color": "cell_type"}).json()
        assert by_type["ids"] == m["ids"] and len(set(by_type["values"])) > 2 and None not in by_type["values"]
        csv = c.post("/sql.csv", data={"query": "SELECT dataset_id, count(*) AS n FROM cells GROUP BY 1 ORDER BY 1", "csrf": c.cookies.get("aivc_csrf")})
        assert csv.status_code == 200 and csv.text.splitlines()[0] == "dataset_id,n"
        assert [r.split(",")[0] for r in csv.text.splitlines()[1:]] == [PUBLIC_DS, CONSORTIUM_DS]
        assert c.get("/submit").status_code == 200
        page = c.get(f"/embeddings/{portal_lake.embedding_ref}")
        assert page.status_code == 200 and "/assets/plotly.min.js" in page.text
        js = c.get("/assets/plotly.min.js")
        assert js.status_code == 200 and len(js.content) > 1_000_000


def test_sql_refused_by_the_sandbox_is_a_400_page(anon) -> None:  # noqa: ANN001
    anon.get("/sql")
    res = anon.post("/sql", data={"query": "COPY cells TO '/tmp/x.csv'", "csrf": anon.cookies.get("aivc_csrf")})
    assert res.status_code == 400 and 'id="error"' in res.text


def test_titles_and_labels_are_escaped(anon) -> None:  # noqa: ANN001
    templates = anon.app.state.templates
    html = templates.get_template("datasets.html").render(
        rows=[{"id": "x", "version": 1, "title": "<script>alert(1)</script>", "access": "public"}],
        filters={"organism": "", "tissue": "", "assay": "", "access": ""}, principal="public", csrf="c",
    )
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_dataset_page_draws_its_qc_plots_and_the_validation_report(anon, portal_lake) -> None:  # noqa: ANN001
    import re

    import numpy as np

    from aivc.store.dataset_rows import dataset_detail
    from aivc.store.lake import Lake
    from aivc.store.sql import query

    page = anon.get(f"/datasets/{PUBLIC_DS}")
    assert page.status_code == 200
    for key in ("n_counts", "n_genes", "pct_mito", "scatter"):
        assert f'id="qc-{key}"' in page.text, key
    lake = Lake.open(portal_lake.root)
    genes = np.array([r[0] for r in query(lake, f"SELECT n_genes FROM cells WHERE dataset_id = '{PUBLIC_DS}'").rows], dtype=float)
    fig = page.text[page.text.index('id="qc-n_genes"') :]
    counts = [int(n) for n in re.findall(r'data-n="(\d+)"', fig[: fig.index("</figure>")])]
    assert sum(counts) == len(genes) == 350  # every cell of this version is in the histogram
    median = float(re.search(r'data-median="([0-9.]+)"', fig).group(1))
    assert median == pytest.approx(float(np.median(genes)), rel=0.01)
    report = dataset_detail(lake, PUBLIC_DS, None)["report"]
    met = sum(bool(e["success"]) for e in report["expectations"])
    assert f"Expectations ({met} of {len(report['expectations'])} met)" in page.text
    assert f"Warnings ({len(report['warnings'])})" in page.text and report["warnings"][0]["code"] in page.text
    assert "<svg" in page.text and "<script" not in fig[: fig.index("</figure>")]


def test_embedding_lists_count_only_visible_cells_and_the_map_colours_by_real_fields(anon, portal_lake) -> None:  # noqa: ANN001
    feats = anon.get("/api/features").json()
    row = next(r for r in feats if r["ref"] == portal_lake.embedding_ref)
    assert row["n_rows"] is None and row["datasets"] == [f"{PUBLIC_DS}@1"]  # 700 would count the hidden cells
    assert ">700<" not in anon.get("/embeddings").text
    page = anon.get(f"/embeddings/{portal_lake.embedding_ref}")
    assert page.status_code == 200 and 'value="n_genes"' in page.text and 'value="batch"' not in page.text
    m = anon.get(f"/embeddings/{portal_lake.embedding_ref}/map.json?color=n_genes").json()
    assert len(m["values"]) == 350 and all(isinstance(v, int) and v > 0 for v in m["values"])
    assert anon.get("/embeddings/cell%3Apca%4099").status_code == 404
    assert anon.get(f"/embeddings/{portal_lake.embedding_ref}/map.json?color=x%22;DROP").status_code == 400


def test_the_datasets_page_lists_tissues_and_assays_and_filters_by_them(anon) -> None:  # noqa: ANN001
    import re

    from aivc.store.lake import Lake
    from aivc.store.sql import query

    row = re.search(rf"<tr><td><a href=\"/datasets/{PUBLIC_DS}\">.*?</tr>", anon.get("/datasets").text).group(0)
    cells = re.findall(r"<td>(.*?)</td>", row)
    assay = query(Lake.open(anon.app.state.lake.root), f"SELECT DISTINCT assay FROM cells WHERE dataset_id = '{PUBLIC_DS}'").rows
    assert cells[6] == "blood" and [(cells[7].replace("&#39;", "'"),)] == assay, cells  # 10x 3' v1
    assert PUBLIC_DS in anon.get("/datasets?tissue=blood").text
    assert "no dataset you may see matches" in anon.get("/datasets?tissue=liver").text
    assert "no dataset you may see matches" in anon.get("/datasets?access=consortium").text  # hidden, not just filtered


def test_the_sql_pages_examples_are_the_readmes_and_run(anon) -> None:  # noqa: ANN001
    from pathlib import Path

    from aivc.portal.pages import EXAMPLE_QUERIES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    anon.get("/sql")
    for label, q in EXAMPLE_QUERIES:
        assert f'aivc sql "{q}"' in readme, label
        page = anon.post("/sql", data={"query": q, "csrf": anon.cookies.get("aivc_csrf")})
        assert page.status_code == 200 and 'id="n-rows"' in page.text and 'id="error"' not in page.text, (label, page.text[-500:])


def test_dataset_rows_filter_by_label_or_term_id_and_list_labels(portal_lake) -> None:  # noqa: ANN001
    from aivc.store.dataset_rows import dataset_rows
    from aivc.store.lake import Lake

    lake = Lake.open(portal_lake.root)
    ids = lambda **kw: sorted(r["id"] for r in dataset_rows(lake, "alice", **kw))  # noqa: E731
    assert ids(assay="EFO:0009901") == ids(assay="10X 3' V1") == [PUBLIC_DS, CONSORTIUM_DS]  # term id or label, any case
    assert ids(tissue="blood", assay="EFO:0009901") == [PUBLIC_DS, CONSORTIUM_DS] and ids(tissue="UBERON:0000178") == [PUBLIC_DS, CONSORTIUM_DS]
    assert ids(tissue="liver") == [] and ids(tissue="blood", assay="EFO:0000000") == []
    assert sorted(r["id"] for r in dataset_rows(lake, "public", tissue="blood")) == [PUBLIC_DS]
    rows = dataset_rows(lake, "alice", with_terms=True)
    assert {(r["id"], tuple(r["tissues"]), tuple(r["assays"])) for r in rows} == {(d, ("blood",), ("10x 3' v1",)) for d in (PUBLIC_DS, CONSORTIUM_DS)}
    assert "tissues" not in dataset_rows(lake, "alice")[0]  # the CLI's rows keep their shape
