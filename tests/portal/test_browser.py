"""The portal in a real headless Chromium (selenium 4, the system chromedriver; nothing downloaded).

What a person does: sign in, submit a bad file and read its error on the page, fix it and
resubmit, run a SQL query, open an embedding map and click a cell with the mouse; and an
anonymous visitor never sees a consortium dataset (list, page, map, neighbours).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.portal.conftest import CONSORTIUM_DS, PUBLIC_DS, PortalLake
from tests.portal.test_serve import start_server

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DOCS = Path(__file__).resolve().parents[2] / "docs"
#: WebGL in software, asked for explicitly (Chromium's silent fallback to it is deprecated)
WEBGL = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader")


def _stop(proc: Any) -> None:  # a subprocess.Popen
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(portal_lake: PortalLake) -> Iterator[str]:
    proc, url = start_server(portal_lake.root)
    yield url
    _stop(proc)


def _chrome(*extra: str) -> Any:  # a selenium WebDriver
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        pytest.fail(f"the browser tests need {CHROMIUM} and {DRIVER}: apt-get install -y chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900", *extra):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


@pytest.fixture
def browser() -> Iterator[Any]:
    drv = _chrome(*WEBGL)
    yield drv
    drv.quit()


@pytest.fixture
def browser_without_webgl() -> Iterator[Any]:
    drv = _chrome("--disable-webgl")
    yield drv
    drv.quit()


def _wait(cond: Callable[[], Any], timeout: float = 30) -> Any:
    from selenium.common.exceptions import WebDriverException

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            v = cond()
        except WebDriverException:  # a page reloading itself: no such element, a stale one, or
            v = None  # "node does not belong to the document" (chromedriver's words for the same race)
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError("timed out waiting in the browser")


def _sign_in(browser: Any, server: str, token: str) -> None:
    browser.get(server + "/login")
    browser.find_element("id", "token").send_keys(token)
    browser.find_element("id", "signin").click()
    _wait(lambda: browser.current_url.endswith("/datasets"))


#: One plotted point that is at least 8 px from every other one, inside the plot area (clear of
#: its edges and of the modebar): its cell id, its pixel offset from the map's centre (where
#: selenium 4 puts a move_to_element_with_offset origin), the gap to its nearest neighbour.
_PICK_POINT = """
var gd = document.getElementById('map'), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, pts = [];
gd.data.forEach(function (t) { t.x.forEach(function (x, i) {
  pts.push({id: t.customdata[i], px: xa.l2p(x) + xa._offset, py: ya.l2p(t.y[i]) + ya._offset}); }); });
var inside = pts.filter(function (p) {
  return p.px > xa._offset + 10 && p.px < xa._offset + xa._length - 10 && p.py > ya._offset + 40 && p.py < ya._offset + ya._length - 10; });
var best = null;
inside.forEach(function (p) {
  var gap = Infinity;
  pts.forEach(function (q) { if (q !== p) gap = Math.min(gap, Math.hypot(q.px - p.px, q.py - p.py)); });
  if (gap >= 8 && (best === null || p.id < best.id)) best = {id: p.id, px: p.px, py: p.py, gap: gap};
});
var r = gd.getBoundingClientRect();
return {n: pts.length, types: gd._fullData.map(function (t) { return t.type; }),
        ids: pts.map(function (p) { return p.id; }), point: best, w: r.width, h: r.height};
"""


def _click_a_cell(browser: Any, server: str, ref: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Open the map of ``ref``, click one plotted cell with the mouse; returns what was plotted
    (``_PICK_POINT``) and the neighbour rows the page then lists."""
    from selenium.webdriver.common.action_chains import ActionChains

    browser.get(server + f"/embeddings/{ref}")
    _wait(lambda: browser.find_element("id", "map").get_attribute("data-n"), 120)  # the first visit computes the UMAP
    plotted = browser.execute_script(_PICK_POINT)
    assert plotted["n"] == int(browser.find_element("id", "map").get_attribute("data-n")) == len(set(plotted["ids"]))
    p = plotted["point"]
    assert p is not None, "no plotted cell stands clear of the others"
    dx, dy = round(p["px"] - plotted["w"] / 2), round(p["py"] - plotted["h"] / 2)
    ActionChains(browser).move_to_element_with_offset(browser.find_element("id", "map"), dx, dy).click().perform()
    assert _wait(lambda: browser.find_element("id", "clicked").text) == f"cell {p['id']}"
    items = _wait(lambda: browser.find_elements("css selector", "#neighbour-list li"))
    return plotted, [json.loads(li.get_attribute("data-row")) for li in items]


def _dataset(obs_id: str) -> str:
    return obs_id.split("@", 1)[0]


def test_anonymous_visitor_cannot_see_the_consortium_dataset(server, browser_without_webgl, portal_lake) -> None:  # noqa: ANN001
    browser = browser_without_webgl  # also checks the map's SVG fallback where a browser has no WebGL
    browser.get(server + "/datasets")
    table = browser.find_element("id", "datasets").text
    assert PUBLIC_DS in table and CONSORTIUM_DS not in table
    if os.environ.get("AIVC_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        browser.save_screenshot(str(DOCS / "portal-datasets.png"))
    browser.get(server + f"/datasets/{CONSORTIUM_DS}")
    assert "404" in browser.title
    hidden = browser.find_element("id", "error").text.replace(CONSORTIUM_DS, "X")
    browser.get(server + "/datasets/pbmc68k-part9")
    assert browser.find_element("id", "error").text.replace("pbmc68k-part9", "X") == hidden  # like a missing one
    browser.get(server + f"/datasets/{PUBLIC_DS}")
    assert browser.find_element("id", "report").is_displayed()
    assert browser.find_elements("css selector", "#qc-plots svg")  # the QC plots are drawn
    plotted, neighbours = _click_a_cell(browser, server, portal_lake.embedding_ref)
    assert set(plotted["types"]) == {"scatter"}  # no WebGL: SVG points, still clickable
    assert plotted["n"] == 350 and {_dataset(i) for i in plotted["ids"]} == {PUBLIC_DS}
    assert len(neighbours) == 10 and {n["dataset_id"] for n in neighbours} == {PUBLIC_DS}
    assert {_dataset(n["obs_id"]) for n in neighbours} == {PUBLIC_DS}
    assert CONSORTIUM_DS not in browser.find_element("id", "neighbours").text


def test_sign_in_run_sql_and_click_a_cell_on_the_map(server, browser, portal_lake) -> None:  # noqa: ANN001
    _sign_in(browser, server, portal_lake.tokens["alice"])
    assert "alice" in browser.find_element("id", "who").text and CONSORTIUM_DS in browser.find_element("id", "datasets").text
    browser.get(server + "/sql")
    q = browser.find_element("id", "query")
    q.clear()
    q.send_keys("SELECT dataset_id, count(*) AS n FROM cells GROUP BY 1 ORDER BY 1")
    browser.find_element("id", "run").click()
    rows = _wait(lambda: browser.find_elements("css selector", "#result tbody tr"))
    assert [r.text.split() for r in rows] == [[PUBLIC_DS, "350"], [CONSORTIUM_DS, "350"]]
    plotted, neighbours = _click_a_cell(browser, server, portal_lake.embedding_ref)
    assert set(plotted["types"]) == {"scattergl"}  # WebGL points: plotly hit-tests them from the data, not the pixels
    assert plotted["n"] == 700 and {_dataset(i) for i in plotted["ids"]} == {PUBLIC_DS, CONSORTIUM_DS}
    clicked = plotted["point"]["id"]
    assert len(neighbours) == 10 and [n["rank"] for n in neighbours] == list(range(1, 11))
    assert clicked not in {n["obs_id"] for n in neighbours} and {n["obs_id"] for n in neighbours} <= set(plotted["ids"])
    assert all(n["dataset_id"] == _dataset(n["obs_id"]) in (PUBLIC_DS, CONSORTIUM_DS) for n in neighbours)
    # a link from the reannotation report opens the map coloured by that prediction: one trace per predicted label
    colour = f"prediction:{portal_lake.prediction_ref}"
    browser.get(server + f"/embeddings/{portal_lake.embedding_ref}?color={colour}")
    _wait(lambda: browser.find_element("id", "map").get_attribute("data-color") == colour, 60)
    names = browser.execute_script("return document.getElementById('map').data.map(function (t) { return t.name; });")
    from aivc.instruments.sql import query
    from aivc.store.lake import Lake

    view = "predictions_" + portal_lake.prediction_ref.split(":", 1)[1].replace("@", "_v")
    labels = {r[0] for r in query(Lake.open(portal_lake.root), f"SELECT DISTINCT predicted_label FROM {view}").rows}
    assert len(labels) > 3
    assert set(names) == {("(none)" if x is None else x) for x in labels}


@pytest.fixture
def submit_server(fresh_lake: Path) -> Iterator[str]:
    """``aivc serve`` over a private copy of the lake: the submissions change that copy only."""
    proc, url = start_server(fresh_lake)
    try:
        yield url
    finally:
        _stop(proc)


def _wait_done(browser: Any) -> str:
    """The submission page's final status (it reloads itself every 2 s until then)."""
    done = ("committed", "rejected", "failed")
    status = "var e = document.getElementById('status'); return e ? e.textContent : null;"  # one call: no element handle to go stale
    return _wait(lambda: (s := browser.execute_script(status)) in done and s, 240)


def test_submit_a_bad_file_read_the_error_fix_and_resubmit(submit_server, browser, portal_lake, pbmc_files, tmp_path) -> None:  # noqa: ANN001
    import anndata as ad
    import numpy as np

    from aivc.demo import pbmc_manifest

    server = submit_server
    (good, _), _ = pbmc_files
    bad = tmp_path / "pbmc-log1p.h5ad"  # the usual mistake: normalised, log-transformed values instead of counts
    a = ad.read_h5ad(good)
    a.X = np.log1p(a.X)
    a.write_h5ad(bad)
    man = pbmc_manifest("pbmc-browser", labelled=True, title="PBMC submitted in a browser") | {"access": "consortium"}
    man_file = tmp_path / "pbmc-browser.yaml"
    man_file.write_text(yaml.safe_dump(man, sort_keys=False))

    _sign_in(browser, server, portal_lake.tokens["alice"])
    browser.get(server + "/submit")
    browser.find_element("id", "data").send_keys(str(bad))
    browser.find_element("id", "manifest-file").send_keys(str(man_file))
    browser.find_element("id", "submit").click()
    _wait(lambda: "/submissions/" in browser.current_url)
    assert _wait_done(browser) == "rejected"
    assert browser.find_element("id", "rejected").is_displayed()
    errors = browser.find_elements("css selector", "#errors tbody tr")
    assert len(errors) == 1
    code, where, what = (td.text for td in errors[0].find_elements("css selector", "td"))
    assert code == "MATRIX_LOG_TRANSFORMED" and where.startswith("X[cell ") and "log-transformed" in what and "not an integer" in what
    if os.environ.get("AIVC_SCREENSHOTS") == "1":
        browser.save_screenshot(str(DOCS / "portal-report.png"))

    browser.find_element("css selector", "#rejected a").click()  # back to the form, to fix and resubmit
    _wait(lambda: "/submit" in browser.current_url and browser.find_element("id", "submit-form"))
    assert browser.find_element("id", "reuse").is_selected()  # it offers the rejected upload again; the file was wrong, so upload the fixed one
    browser.find_element("id", "no-reuse").click()
    browser.find_element("id", "data").send_keys(str(good))
    assert yaml.safe_load(browser.find_element("id", "manifest-text").get_attribute("value")) == man  # the manifest it was
    browser.find_element("id", "submit").click()
    _wait(lambda: "/submissions/" in browser.current_url)
    assert _wait_done(browser) == "committed"
    link = browser.find_element("css selector", "#committed a")
    assert link.text == "pbmc-browser@1" and "350 cells" in browser.find_element("id", "committed").text
    assert not browser.find_elements("id", "errors")
    link.click()
    _wait(lambda: browser.current_url.endswith("/datasets/pbmc-browser@1"))
    assert "PBMC submitted in a browser" in browser.find_element("tag name", "body").text
    assert browser.find_element("id", "report").is_displayed()
    browser.delete_all_cookies()  # signed out: the new consortium dataset is hidden like the others
    browser.get(server + "/datasets")
    assert "pbmc-browser" not in browser.find_element("id", "datasets").text
    browser.get(server + "/datasets/pbmc-browser")
    assert "404" in browser.title
