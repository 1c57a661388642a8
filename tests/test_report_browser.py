"""Each example study's report in a real browser: Debian's headless Chromium, driven by Selenium
pointed at /usr/bin/chromium and /usr/bin/chromedriver (nothing is downloaded). The page loads
with no console error and no network request, every expected section, figure and table is
there, the numbers beside each figure are collapsed, suppressed cells read as suppressed with
their reason on hover, and a screenshot of each page is saved with the test's outputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import IN_CI

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# per report: sections, figures and tables that must be on the page
EXPECTED = {
    "statins_mi": (["run", "attrition", "cohort", "curves", "models"],
                   ["fig-km", "fig-cif", "fig-forest-cox", "fig-forest-poisson"],
                   ["t-attrition_statin", "t-attrition_non_users", "t-cohort", "t-curves",
                    "t-model_cox", "t-model_poisson"]),
    "diabetes_incidence": (["run", "attrition", "cohort", "models", "lexis"],
                           ["fig-forest-poisson"],
                           ["t-attrition_cohort", "t-cohort", "t-rates", "t-lexis",
                            "t-model_poisson"]),
    "mi_mortality": (["run", "attrition", "cohort", "models", "measures"],
                     # (by region and year every cell is suppressed: a table, no figure)
                     ["fig-forest-logistic", "fig-measure-mortality_30d_by_region"],
                     ["t-cohort", "t-model_logistic", "t-measure_mortality_30d",
                      "t-measure_mortality_30d_by_region"]),
    "synthetic": (["run", "table1", "measures", "hospitals"],
                  ["fig-love-balance", "fig-overlap-preference", "fig-funnel",
                   "fig-measure-readmission"],
                  ["t-table1", "t-balance", "t-preference", "t-hospitals",
                   "t-measure_readmission"]),
}


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for every browser test (starting one costs seconds)."""
    why = None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        why = "selenium is not installed (make install-test)"
    if why is None and not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        why = "Debian's chromium and chromium-driver are not installed (make system-deps)"
    if why:
        if IN_CI:
            pytest.fail(f"CI must run the browser tests, but: {why}")
        pytest.skip(why)
    os.environ["SE_OFFLINE"] = "true"   # Selenium Manager must never fetch a browser or driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,1000", "--disable-extensions", "--no-first-run",
              "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--disable-default-apps", "--metrics-recording-only"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    yield driver
    driver.quit()


# each report's run: a session fixture of conftest.py that other tests share (each run once,
# its report rendered once, by the run that wrote it); a test asks only for those it shows
RUNS = {"diabetes_incidence": "local_run", "statins_mi": "statins_run",
        # (too few MIs on small_data for its model)
        "mi_mortality": "mortality_run", "synthetic": "synthetic_report"}


@pytest.fixture
def report(request) -> tuple[str, Path]:
    """(name, run folder) of the report a test is parametrized with (read only); the run is
    set up before the test, so --durations tells its cost apart from the browser's."""
    got = request.getfixturevalue(RUNS[request.param])
    return request.param, got if isinstance(got, Path) else got.out   # (a StudyResult)


def _load(driver, page: Path) -> None:
    driver.get_log("browser")        # drop what earlier pages logged
    driver.get_log("performance")
    driver.get(page.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"


def _requests(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def _screenshot(driver, path: Path) -> None:
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height, 800), 8000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)
    assert path.stat().st_size > 20_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("report", list(EXPECTED), indirect=True)
def test_the_report_loads_offline_and_shows_every_part(browser, report, tmp_path):
    from selenium.webdriver.common.by import By

    name, out = report
    page = tmp_path / "report.html"     # a copy: the page needs nothing beside it
    shutil.copy(out / "report.html", page)
    _load(browser, page)
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    assert browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)") == []
    assert _requests(browser) == [page.as_uri()]
    assert browser.execute_script("return document.scripts.length") == 0

    sections, figures, tables = EXPECTED[name]
    shown = [s.get_attribute("id") for s in browser.find_elements(By.CSS_SELECTOR,
                                                                   "main > section")]
    assert [s for s in sections if s not in shown] == []
    for fid in figures:
        svg = browser.find_element(By.CSS_SELECTOR, f"#{fid} svg")
        assert svg.is_displayed() and svg.size["width"] > 300 and svg.size["height"] > 80, fid
    for tid in tables:
        t = browser.find_element(By.ID, tid)
        assert len(t.find_elements(By.CSS_SELECTOR, "tbody tr")) > 0, tid
    # each figure's numbers beside it, collapsed until asked for
    for fid in figures:
        details = browser.find_elements(By.CSS_SELECTOR, f"#{fid} + details")
        if details:
            table = details[0].find_element(By.TAG_NAME, "table")
            assert not table.is_displayed()
            details[0].find_element(By.TAG_NAME, "summary").click()
            assert table.is_displayed()
    _screenshot(browser, tmp_path / f"{name}.png")


@pytest.mark.parametrize("report", ["synthetic", "statins_mi"], indirect=True)
def test_suppressed_cells_read_as_suppressed_with_the_reason_on_hover(browser, report):
    from selenium.webdriver.common.by import By

    name, out = report
    _load(browser, out / "report.html")
    cells = browser.find_elements(By.CSS_SELECTOR, ".suppressed")
    assert cells, "these outputs hold suppressed cells"
    for c in cells:
        assert c.get_attribute("textContent").strip() == "suppressed"
        assert "fewer than 5 persons" in c.get_attribute("title")
    if name == "synthetic":   # the withheld Table 1 cell: diabetes among statin users
        row = browser.find_element(By.XPATH, "//table[@id='t-table1']//tr[th='diabetes']")
        assert "suppressed" in row.get_attribute("textContent")


def test_the_offline_check_sees_a_request_when_a_page_makes_one(browser, synthetic_report,
                                                                 tmp_path):
    """The checks above would catch a page that loads something: one that does is seen."""
    page = tmp_path / "report.html"
    html = (synthetic_report / "report.html").read_text()
    page.write_text(html.replace("</footer>", '<img src="http://127.0.0.1:9/x.png"></footer>'))
    _load(browser, page)
    assert "http://127.0.0.1:9/x.png" in _requests(browser)
    assert browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)") != []
