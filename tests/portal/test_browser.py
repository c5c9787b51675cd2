"""The portal in a real headless Chromium (selenium 4, the system chromedriver; nothing downloaded)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.portal.conftest import CONSORTIUM_DS, PUBLIC_DS, PortalLake
from tests.portal.test_serve import start_server

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def server(portal_lake: PortalLake):
    proc, url = start_server(portal_lake.root)
    yield url
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.fixture
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        pytest.fail(f"the browser tests need {CHROMIUM} and {DRIVER}: apt-get install -y chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield drv
    drv.quit()


def _wait(cond, timeout: float = 30):  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError("timed out waiting in the browser")


def test_anonymous_visitor_cannot_see_the_consortium_dataset(server, browser) -> None:  # noqa: ANN001
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
    if os.environ.get("AIVC_SCREENSHOTS") == "1":
        browser.save_screenshot(str(DOCS / "portal-report.png"))


def test_sign_in_run_sql_and_click_a_cell_on_the_map(server, browser, portal_lake) -> None:  # noqa: ANN001
    browser.get(server + "/login")
    browser.find_element("id", "token").send_keys(portal_lake.tokens["alice"])
    browser.find_element("id", "signin").click()
    _wait(lambda: browser.current_url.endswith("/datasets"))
    assert "alice" in browser.find_element("id", "who").text and CONSORTIUM_DS in browser.find_element("id", "datasets").text
    browser.get(server + "/sql")
    q = browser.find_element("id", "query")
    q.clear()
    q.send_keys("SELECT dataset_id, count(*) AS n FROM cells GROUP BY 1 ORDER BY 1")
    browser.find_element("id", "run").click()
    rows = _wait(lambda: browser.find_elements("css selector", "#result tbody tr"))
    assert [r.text.split()[0] for r in rows] == [PUBLIC_DS, CONSORTIUM_DS]
    browser.get(server + f"/embeddings/{portal_lake.embedding_ref}")
    _wait(lambda: browser.find_element("id", "map").get_attribute("data-n"), 120)
    # the map's click handler, called with the first plotted cell (not a mouse click at pixel coordinates)
    browser.execute_script(
        "var m=document.getElementById('map'); var t=m.data[0]; aivcNeighbours(t.customdata[0]);"
    )
    items = _wait(lambda: browser.find_elements("css selector", "#neighbour-list li"))
    assert len(items) >= 1 and "error" not in items[0].text
