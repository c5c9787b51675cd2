"""Model / instrument cards and reannotation reports (TestClient): real values from the lake,
only the datasets a principal may see, one 404 for hidden, missing and malformed refs."""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.portal.conftest import CONSORTIUM_DS, PUBLIC_DS, PortalLake


def _client(root: Path, token: str | None = None) -> TestClient:
    from aivc.portal.app import create_app

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return TestClient(create_app(root, run_jobs=False), follow_redirects=False, headers=headers)


def _token(portal_lake: PortalLake, user: str) -> str:
    if not portal_lake.tokens:
        pytest.fail("store.tokens is missing: the portal fixture made no tokens")
    return portal_lake.tokens[user]


@pytest.fixture(scope="module")
def anon(portal_lake: PortalLake):
    with _client(portal_lake.root) as c:
        yield c


@pytest.fixture(scope="module")
def alice(portal_lake: PortalLake):
    with _client(portal_lake.root, _token(portal_lake, "alice")) as c:
        yield c


def _label_data(page: str) -> dict[str, int]:
    m = re.search(r'<script id="label-data" type="application/json">(.*?)</script>', page, re.S)
    assert m, "the report page has no label data"
    d = json.loads(m.group(1))
    assert len(d["labels"]) == len(d["counts"]) == len(set(d["labels"]))
    return dict(zip(d["labels"], d["counts"], strict=True))


def _expected_counts(root: Path, datasets: tuple[str, ...], view: str = "predictions_celltype_v1") -> Counter[str]:
    """Predicted-label counts straight from the prediction version's SQL view (as the owner)."""
    from aivc.instruments.sql import query
    from aivc.store.lake import Lake

    ids = ", ".join(f"'{d}'" for d in datasets)
    res = query(Lake.open(str(root)), f"SELECT predicted_label, count(*) FROM {view} WHERE dataset_id IN ({ids}) GROUP BY 1")
    return Counter({label: int(n) for label, n in res.rows})


def _error_text(page: str, ref: str) -> str:
    """The 404 page with the ref it names (as the page escapes it) blanked out."""
    from markupsafe import escape  # as the templates escape

    needle = str(escape(repr(ref[:80])))
    assert needle in page, (ref, page)
    return page.replace(needle, "'X'")


# -- instrument card ---------------------------------------------------------------------------
def test_instrument_card_names_its_embedding_classes_and_calibration(anon, alice, portal_lake) -> None:  # noqa: ANN001
    from aivc.instruments.registry import get_instrument
    from aivc.store.lake import Lake

    rec = get_instrument(Lake.open(str(portal_lake.root)), "celltype@1")
    for c in (anon, alice):  # trained on the public dataset only: everyone sees all of it
        page = c.get("/instruments/celltype@1")
        assert page.status_code == 200, page.text
        text = page.text
        assert f'<a href="/embeddings/{portal_lake.embedding_ref}">{portal_lake.embedding_ref}</a>' in text
        classes = rec.outputs["classes"]
        assert len(classes) >= 2 and re.search(rf'<th>classes</th><td>{len(classes)}</td>', text)
        for cls in classes:
            assert f"<code>{cls['term_id']}</code></td><td>{html.escape(cls['label'])}</td>" in text
        f1 = rec.metrics["calibration"]["macro_f1"]
        assert f'<th>macro-F1 (out-of-fold)</th><td class="num">{f1:.4g}</td>' in text
        assert f'<td class="num">{rec.metrics["calibration_coverage"]:.4g}</td>' in text
        assert f'<a href="/datasets/{PUBLIC_DS}%401">{PUBLIC_DS}@1</a>' in text
        assert f'<a href="/predictions/{portal_lake.prediction_ref}">' in text
    assert anon.get("/instruments").headers["location"] == "/models#instruments"


def test_models_page_links_every_card(anon, portal_lake) -> None:  # noqa: ANN001
    page = anon.get("/models")
    assert page.status_code == 200
    assert '<a href="/instruments/celltype@1">celltype@1</a>' in page.text
    assert f'<a href="/predictions/{portal_lake.prediction_ref}">{portal_lake.prediction_ref}</a>' in page.text
    assert f'<a href="/embeddings/{portal_lake.embedding_ref}">{portal_lake.embedding_ref}</a>' in page.text
    assert "No models yet" in page.text and CONSORTIUM_DS not in page.text
    assert anon.get("/models/cell-vae@1").status_code == 404  # the fixture trained no model


# -- the reannotation report ------------------------------------------------------------------
def test_report_counts_only_the_cells_the_principal_may_see(anon, alice, portal_lake) -> None:  # noqa: ANN001
    both, public = _expected_counts(portal_lake.root, (PUBLIC_DS, CONSORTIUM_DS)), _expected_counts(portal_lake.root, (PUBLIC_DS,))
    assert sum(both.values()) > sum(public.values()) > 0  # the consortium cells change the counts
    for ref in (portal_lake.prediction_ref, portal_lake.prediction_ref.split(":", 1)[1]):
        mine = alice.get(f"/predictions/{ref}")
        assert mine.status_code == 200, mine.text
        assert _label_data(mine.text) == dict(both)
        assert f'<th>cells</th><td class="num">{sum(both.values()):,}</td>' in mine.text
        assert f'<a href="/datasets/{CONSORTIUM_DS}%401">{CONSORTIUM_DS}@1</a>' in mine.text
        theirs = anon.get(f"/predictions/{ref}")
        assert theirs.status_code == 200
        assert _label_data(theirs.text) == dict(public)
        assert f'<th>cells</th><td class="num">{sum(public.values()):,}</td>' in theirs.text
    top, n = both.most_common(1)[0]
    assert re.search(rf"<tr><td>{re.escape(html.escape(top))}</td><td><code>CL:\d+</code></td><td class=\"num\">{n:,}</td>", mine.text)
    assert '<a href="/instruments/celltype@1">celltype@1</a>' in mine.text
    assert f'href="/embeddings/{portal_lake.embedding_ref}?color=prediction:' in mine.text
    assert '<script src="/static/cards.js"></script>' in mine.text and '<script src="/assets/plotly.min.js"></script>' in mine.text
    js = anon.get("/static/cards.js")
    assert js.status_code == 200 and "textContent" in js.text and "innerHTML" not in js.text


def test_public_never_sees_the_consortium_dataset_on_cards(portal_lake) -> None:  # noqa: ANN001
    pages = ("/models", "/instruments/celltype@1", f"/predictions/{portal_lake.prediction_ref}", "/predictions/celltype")
    with _client(portal_lake.root) as anon, _client(portal_lake.root, _token(portal_lake, "carol")) as carol:
        for c in (anon, carol):
            for url in pages:
                page = c.get(url)
                assert page.status_code == 200, (url, page.text)
                assert CONSORTIUM_DS not in page.text, url
            assert "signed in as <b>carol</b>" in carol.get("/models").text


def test_bad_hidden_and_missing_refs_are_one_404(anon, portal_lake) -> None:  # noqa: ANN001
    # the client resolves a plain "../" itself; encoded, it reaches the server as "../"
    bad = ("celltype@9", "nope", "Bad Name", "x@y@z", "..%2F..%2Faccess.json", "%2e%2e/access.json", "celltype@1%2F..%2F..%2Fx", "a" * 300, "%00")
    for base, what in (("/models", "model"), ("/instruments", "instrument"), ("/predictions", "prediction version")):
        want = None
        for ref in bad:
            res = anon.get(f"{base}/{ref}")
            assert res.status_code == 404, (base, ref, res.text)
            asked = res.request.url.path[len(base) + 1 :]  # the ref as the server got it (decoded)
            body = _error_text(res.text, asked)
            assert f"no {what} 'X' in this lake" in body, (base, ref, body)
            want = want or body
            assert body == want, (base, ref)
    assert anon.get(f"/predictions/{portal_lake.prediction_ref}/report.html").status_code == 404  # no report was written


# -- model cards and a stored report (a private copy of the lake) -----------------------------
def _add_models(root: Path) -> dict[str, str]:
    """Register, the way training does, a model trained on both datasets, one on the
    consortium dataset only, an embedding version made with the first and an instrument
    reading it."""
    import numpy as np

    from aivc.instruments.registry import register_instrument
    from aivc.store.features import EmbeddingWriter, read_vectors
    from aivc.store.lake import Lake
    from aivc.store.lineage import Lineage
    from aivc.training.registry import register_model

    lake = Lake.open(str(root))
    both = (f"{PUBLIC_DS}@1", f"{CONSORTIUM_DS}@1")
    history = [
        {"epoch": 1, "train_loss": 9.5, "validation_loss": 9.0, "kl_weight": 0.5},
        {"epoch": 2, "train_loss": 7.25, "validation_loss": 6.5, "kl_weight": 1.0, "best_epoch": 2},
        {"epoch": 3, "train_loss": 6.75, "validation_loss": 6.875, "kl_weight": 1.0, "best_epoch": 2},
    ]
    vae = register_model(
        lake, "card-vae", model_type="cell-vae", state_dict={}, init={"n_genes": 3, "n_latent": 2, "n_hidden": 8},
        config={"model_type": "cell-vae", "data": {"datasets": [PUBLIC_DS, CONSORTIUM_DS]}}, gene_ids=["ENSG00000141510", "ENSG00000012048", "ENSG00000139618"],
        encodings={"batch": [PUBLIC_DS, CONSORTIUM_DS]}, metrics=history[1], history=history,
        lineage=Lineage(datasets=both, organism="homo_sapiens", extra={"gene_overlap": {CONSORTIUM_DS: {"genes_used": 3}}}),
        training={"run_id": "run-1", "epochs": 3, "best_epoch": 2, "stopped_early": False, "workers": 1},
    )  # fmt: skip
    secret = register_model(
        lake, "secret-vae", model_type="cell-vae", state_dict={}, init={}, config={}, gene_ids=["ENSG00000141510"],
        encodings={}, metrics={}, lineage=Lineage(datasets=(f"{CONSORTIUM_DS}@1",)),
    )  # fmt: skip
    table, vec = read_vectors(lake, "cell:pca@1", datasets={PUBLIC_DS}, columns=("id", "soma_joinid", "dataset_id", "vector"))
    with EmbeddingWriter(lake, "cell", "card-vae", 2, source={"kind": "model", "model": vae.ref, "model_type": "cell-vae"}, lineage=Lineage(model=vae.ref, datasets=both)) as w:
        w.write(table.column("id"), vec[:, :2], soma_joinids=table.column("soma_joinid").to_numpy(), dataset_ids=table.column("dataset_id"))
    assert w.version is not None
    inst = register_instrument(
        lake, "card-type", kind="decoder", type="celltype", reads=w.version.ref, weights={"w": np.zeros(2, dtype=np.float32)},
        outputs={"classes": [{"term_id": "CL:0000236", "label": "B cell"}], "alpha": 0.1}, metrics={"calibration": {"macro_f1": 0.5}},
        config={}, lineage=Lineage(embedding=w.version.ref, datasets=(f"{PUBLIC_DS}@1",)),
    )  # fmt: skip
    hidden = register_instrument(
        lake, "secret-type", kind="decoder", type="celltype", reads=w.version.ref, weights={"w": np.zeros(2, dtype=np.float32)},
        outputs={"classes": []}, metrics={}, config={}, lineage=Lineage(embedding=w.version.ref, datasets=(f"{CONSORTIUM_DS}@1",)),
    )  # fmt: skip
    return {"model": vae.ref, "secret": secret.ref, "embedding": w.version.ref, "instrument": inst.ref, "secret_instrument": hidden.ref}


def test_model_card_shows_training_and_lineage_as_the_principal_may_see_it(fresh_lake: Path, portal_lake: PortalLake) -> None:
    refs = _add_models(fresh_lake)
    with _client(fresh_lake, _token(portal_lake, "alice")) as alice, _client(fresh_lake) as anon:
        mine = alice.get(f"/models/{refs['model']}")
        assert mine.status_code == 200, mine.text
        text = mine.text
        for d in (PUBLIC_DS, CONSORTIUM_DS):
            assert f'<a href="/datasets/{d}%401">{d}@1</a>' in text
        assert '<th>best epoch</th><td class="num">2</td>' in text
        assert '<th>validation loss (best epoch)</th><td class="num">6.5</td>' in text
        assert '<th>train loss (last epoch)</th><td class="num">6.75</td>' in text
        assert '<th>n_latent</th><td class="num">2</td>' in text and "<th>type</th><td>cell-vae</td>" in text
        curves = json.loads(re.search(r'<script id="loss-data" type="application/json">(.*?)</script>', text, re.S).group(1))
        assert curves == {"epoch": [1, 2, 3], "series": {"train_loss": [9.5, 7.25, 6.75], "validation_loss": [9.0, 6.5, 6.875]}}
        assert f'<a href="/embeddings/{refs["embedding"]}">{refs["embedding"]}</a>' in text
        assert f'<a href="/instruments/{refs["instrument"]}">{refs["instrument"]}</a>' in text
        assert alice.get(f"/models/{refs['secret']}").status_code == 200

        theirs = anon.get(f"/models/{refs['model']}")
        assert theirs.status_code == 200
        assert f'<a href="/datasets/{PUBLIC_DS}%401">{PUBLIC_DS}@1</a>' in theirs.text and CONSORTIUM_DS not in theirs.text
        assert 'id="config"' not in theirs.text and 'id="training"' not in theirs.text  # computed over hidden cells
        assert f'<a href="/embeddings/{refs["embedding"]}">' in theirs.text
        listing = anon.get("/models").text
        assert f'<a href="/models/{refs["model"]}">{refs["model"]}</a>' in listing and refs["secret"] not in listing
        assert CONSORTIUM_DS not in listing
        card = anon.get(f"/instruments/{refs['instrument']}").text
        assert f'(made with <a href="/models/{refs["model"]}">{refs["model"]}</a>)' in card

        hidden, missing = anon.get(f"/models/{refs['secret']}"), anon.get("/models/missing-vae@1")
        assert hidden.status_code == missing.status_code == 404
        assert _error_text(hidden.text, refs["secret"]) == _error_text(missing.text, "missing-vae@1")
        hidden, missing = anon.get(f"/instruments/{refs['secret_instrument']}"), anon.get("/instruments/missing-type@1")
        assert hidden.status_code == missing.status_code == 404
        assert _error_text(hidden.text, refs["secret_instrument"]) == _error_text(missing.text, "missing-type@1")
        assert alice.get(f"/instruments/{refs['secret_instrument']}").status_code == 200
        assert refs["secret_instrument"] not in anon.get("/models").text


def test_stored_report_only_for_a_principal_who_sees_every_dataset(fresh_lake: Path, portal_lake: PortalLake) -> None:
    from aivc.instruments.annotate import annotate
    from aivc.store.lake import Lake

    v = annotate(Lake.open(str(fresh_lake)), "celltype@1", all_datasets=True, engine="local", report=True)
    assert v.summary and v.report.get("html")
    with _client(fresh_lake, _token(portal_lake, "alice")) as alice, _client(fresh_lake) as anon:
        mine = alice.get(f"/predictions/{v.ref}")
        assert mine.status_code == 200
        assert f'<th>cells</th><td class="num">{v.summary["n_cells"]:,}</td>' in mine.text.split('id="summary"')[1]
        assert f'<th>agreement</th><td class="num">{v.summary["agree_fraction"]:.4g}</td>' in mine.text
        assert f'href="/predictions/{v.ref}/report.html"' in mine.text
        full = alice.get(f"/predictions/{v.ref}/report.html")
        assert full.status_code == 200 and full.headers["content-type"].startswith("text/html") and "aivc reannotation report" in full.text

        theirs = anon.get(f"/predictions/{v.ref}")
        assert theirs.status_code == 200 and 'id="summary"' not in theirs.text and "report.html" not in theirs.text
        assert CONSORTIUM_DS not in theirs.text
        hidden, missing = anon.get(f"/predictions/{v.ref}/report.html"), anon.get("/predictions/predictions:celltype@7/report.html")
        assert hidden.status_code == missing.status_code == 404
        assert _error_text(hidden.text, v.ref) == _error_text(missing.text, "predictions:celltype@7")

    only = annotate(Lake.open(str(fresh_lake)), "celltype@1", datasets=[CONSORTIUM_DS], engine="local", report=False)
    with _client(fresh_lake, _token(portal_lake, "alice")) as alice, _client(fresh_lake) as anon:
        assert _label_data(alice.get(f"/predictions/{only.ref}").text) == dict(_expected_counts(fresh_lake, (CONSORTIUM_DS,), only.view_name))
        hidden, missing = anon.get(f"/predictions/{only.ref}"), anon.get("/predictions/predictions:celltype@7")
        assert hidden.status_code == missing.status_code == 404
        assert _error_text(hidden.text, only.ref) == _error_text(missing.text, "predictions:celltype@7")
        assert only.ref not in anon.get("/models").text and only.ref not in anon.get("/instruments/celltype@1").text


# -- in a real browser ------------------------------------------------------------------------
def test_cards_draw_their_plots_in_a_browser(fresh_lake: Path, portal_lake: PortalLake) -> None:
    from tests.portal.test_browser import WEBGL, _chrome, _sign_in, _stop, _wait
    from tests.portal.test_serve import start_server

    refs = _add_models(fresh_lake)
    public = _expected_counts(fresh_lake, (PUBLIC_DS,))
    proc, url = start_server(fresh_lake)
    drv = _chrome(*WEBGL)
    plotted = "var g = document.getElementById(arguments[0]); return g && g._fullData && g._fullData.length"
    try:
        drv.get(url + f"/predictions/{portal_lake.prediction_ref}")
        _wait(lambda: drv.execute_script(plotted, "label-plot"), 60)
        drawn = drv.execute_script(
            "var g = document.getElementById('label-plot'); return {x: g._fullData[0].x, y: g._fullData[0].y, bars: g.querySelectorAll('.bars .point').length};"
        )
        assert dict(zip(drawn["x"], drawn["y"], strict=True)) == dict(public)
        assert drawn["bars"] == len(public)
        assert CONSORTIUM_DS not in drv.page_source

        _sign_in(drv, url, _token(portal_lake, "alice"))
        drv.get(url + f"/models/{refs['model']}")
        assert _wait(lambda: drv.execute_script(plotted, "loss-plot"), 60) == 2
        curves = drv.execute_script("return document.getElementById('loss-plot')._fullData.map(function (t) { return [t.name, t.y]; });")
        assert sorted(map(tuple, [(n, tuple(y)) for n, y in curves])) == [("train_loss", (9.5, 7.25, 6.75)), ("validation_loss", (9.0, 6.5, 6.875))]
    finally:
        drv.quit()
        _stop(proc)
