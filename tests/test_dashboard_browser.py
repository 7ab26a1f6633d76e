"""The dashboard in a real browser: JupyterLab on loopback, Debian's Chromium driven by Playwright,
a notebook that starts a short offline run; the chart, the table and the buttons must render."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

from conftest import lab_check
from notebook_fixtures import REPO, SHORT_RUN, jupyter_lab, notebook  # noqa: F401 (fixture)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "artifacts"
UI_MS = 120_000    # JupyterLab's page and kernel on a loaded machine
WAIT_MS = 300_000  # the run: first use prepares the data; a loaded CI machine is slow

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"Debian chromium is not installed at {CHROMIUM} (apt-get install chromium)"),
]


def run_all_cells(page) -> None:
    """JupyterLab's own menu: Run > Run All Cells. A page still settling its kernel may answer
    with a kernel dialog (accepted: it proposes the notebook's python3) or drop the request,
    so this tries again until a cell shows it ran or is running."""
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=UI_MS)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=UI_MS)
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    started = ("() => Array.from(document.querySelectorAll('.jp-Notebook .jp-InputPrompt'))"
               ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))")
    deadline = time.monotonic() + UI_MS / 1000
    while time.monotonic() < deadline and not page.evaluate(started):
        if accept.count() and accept.first.is_visible():
            accept.first.click()
        else:
            page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
            page.click("div.lm-Menu-itemLabel:text-is('Run All Cells')")
        for _ in range(40):
            if page.evaluate(started) or (accept.count() and accept.first.is_visible()):
                break
            page.wait_for_timeout(250)


@contextmanager
def notebook_page(jupyter_lab, route: str, name: str, start: str, viewport: dict, failure: str):
    """A notebook `name` whose one cell starts a night (`%autoresearch start SHORT_RUN start`), opened
    in Chromium at `route` of the test's Jupyter server; a screenshot named `failure` if the checks fail."""
    from playwright.sync_api import sync_playwright

    # one cell: however the page's Run All lands (a loaded machine once ran only the second of two
    # cells), the extension is loaded by the cell that starts the run
    nbformat.write(notebook(f"%load_ext autoresearch_nb\n%autoresearch start {SHORT_RUN} {start}"),
                   str(jupyter_lab.root / name))
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport=viewport)
            page.goto(f"{jupyter_lab.url}/{route}/{name}?token={jupyter_lab.token}")
            try:
                yield browser, page
            except Exception:
                page.screenshot(path=str(ARTIFACTS / failure), full_page=True)
                raise
        finally:
            browser.close()


def test_the_dashboard_renders_in_jupyterlab(jupyter_lab):
    root: Path = jupyter_lab.root
    with notebook_page(jupyter_lab, "lab/tree", "dashboard.ipynb", "--max-experiments 8 --tag browser",
                       {"width": 1400, "height": 1300}, "dashboard-failure.png") as (browser, page):
        check_dashboard(page)
        check_exported_notebook(browser, root / "autoresearch-lab")
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    assert (root / "autoresearch-lab" / ".autoresearch" / "ledger.jsonl").exists()
    lab_check(root / "autoresearch-lab")  # the night the browser stopped is left whole


# The worst WCAG contrast ratio between the dashboard's text (table cells, header, log) and the colour
# actually behind it (the first ancestor with an opaque background; the page's own when none has one).
CONTRAST = """root => {
  const rgb = c => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = c => { const [r, g, b] = rgb(c).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
                     return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const behind = el => { for (let e = el; e; e = e.parentElement) { const c = getComputedStyle(e).backgroundColor;
                         const parts = rgb(c); if (parts.length === 3 || (parts.length === 4 && parts[3] > 0.5)) return c; }
                         return getComputedStyle(document.body).backgroundColor; };
  const ratio = el => { const a = lum(getComputedStyle(el).color), b = lum(behind(el));
                        return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05); };
  const texts = [...root.querySelectorAll('td, th, pre')].filter(e => e.textContent.trim() && !e.querySelector('span[style*=background]'));
  return texts.length ? Math.min(...texts.map(ratio)) : 0;
}"""


def readable(dashboard) -> float:
    return dashboard.evaluate(CONTRAST)


def check_exported_notebook(browser, lab: Path) -> None:
    """The morning after: the run's results notebook, rendered to HTML, reads in a browser with its
    chart and table in place."""
    from autoresearch_nb.report.export import export_lab

    notebook_path = export_lab(lab, lab.parent / "results.ipynb", html=True)
    html = notebook_path.with_suffix(".html")
    assert html.exists()
    page = browser.new_page(viewport={"width": 1100, "height": 1400})
    page.goto(html.as_uri())
    page.wait_for_selector("img", timeout=UI_MS)
    assert page.locator("img").first.evaluate("img => img.complete && img.naturalWidth > 300")
    assert "baseline" in page.inner_text("body")
    page.screenshot(path=str(ARTIFACTS / "export.png"), full_page=False)


def check_dashboard(page) -> None:
    run_all_cells(page)

    dashboard = page.locator(".arnb-dashboard")
    dashboard.wait_for(timeout=UI_MS)
    # The table fills in when the baseline experiment finishes.
    rows = dashboard.locator(".arnb-table select option")
    rows.first.wait_for(state="attached", timeout=WAIT_MS)
    assert rows.count() >= 1
    assert "baseline" in rows.last.inner_text()

    chart = dashboard.locator("img").first
    chart.wait_for(timeout=WAIT_MS)
    assert chart.evaluate("img => img.complete && img.naturalWidth > 300")
    assert dashboard.locator("button:has-text('Stop')").is_visible()
    assert dashboard.locator("button:has-text('Pause')").is_visible()
    assert "heuristic baseline" in dashboard.inner_text()

    # A few experiments in (the picture people see over breakfast, not the first second)
    deadline = time.monotonic() + WAIT_MS / 1000
    while rows.count() < 4 and time.monotonic() < deadline:
        page.wait_for_timeout(1000)
    assert rows.count() >= 4, rows.count()

    # A click on a row's number shows its change, rationale and log tail.
    assert dashboard.locator(".arnb-rows td").filter(has_text="baseline").count() >= 1
    dashboard.locator("button.arnb-row:text-is('#0')").click()
    page.wait_for_selector(".arnb-dashboard :text('Log tail')", timeout=WAIT_MS)
    assert "#0" in dashboard.locator(".arnb-rows button.mod-info").inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert readable(dashboard) >= 4.5, readable(dashboard)

    # The same dashboard in JupyterLab's dark theme: the table, header and log take the page's colours
    page.click("div.lm-MenuBar-itemLabel:text-is('Settings')")
    page.hover("div.lm-Menu-itemLabel:text-is('Theme')")
    page.click("div.lm-Menu-itemLabel:text-is('JupyterLab Dark')")
    page.wait_for_selector("body[data-jp-theme-light='false']", state="attached", timeout=UI_MS)
    page.wait_for_timeout(1000)  # the theme's stylesheet settles
    assert readable(dashboard) >= 4.5, readable(dashboard)
    page.screenshot(path=str(ARTIFACTS / "dashboard-dark.png"), full_page=True)

    # Stop from the browser ends the run; the buttons say so.
    dashboard.locator("button:has-text('Stop')").click()
    page.wait_for_selector(".arnb-dashboard i:text-is('finished')", timeout=WAIT_MS)
    assert dashboard.locator("button:has-text('Stop')").is_disabled()


def test_the_dashboard_reads_in_the_classic_notebook(jupyter_lab):
    """The same dashboard in Jupyter Notebook's own page (Notebook 7, what `jupyter notebook` opens
    today), served by the same server: table rows, a click on a number, readable text."""
    root: Path = jupyter_lab.root
    with notebook_page(jupyter_lab, "notebooks", "classic.ipynb", "--max-experiments 3 --tag classic",
                       {"width": 1300, "height": 1300}, "dashboard-notebook-failure.png") as (_, page):
        run_all_cells(page)
        dashboard = page.locator(".arnb-dashboard")
        dashboard.wait_for(timeout=UI_MS)
        numbers = dashboard.locator("button.arnb-row:text-is('#0')")
        numbers.wait_for(timeout=WAIT_MS)
        numbers.click()
        page.wait_for_selector(".arnb-dashboard :text('Log tail')", timeout=WAIT_MS)
        assert dashboard.locator("img").first.evaluate("img => img.complete && img.naturalWidth > 300")
        assert readable(dashboard) >= 4.5, readable(dashboard)
        page.wait_for_selector(".arnb-dashboard i:text-is('finished')", timeout=WAIT_MS)
        page.screenshot(path=str(ARTIFACTS / "dashboard-notebook.png"), full_page=True)
        # on a phone the live run's panel goes under the chart, and the chart fits the screen
        page.set_viewport_size({"width": 412, "height": 915})
        page.wait_for_timeout(1000)
        chart, loss = (dashboard.locator("img").nth(k).bounding_box() for k in (0, 1))
        assert loss["y"] >= chart["y"] + chart["height"] - 1, (chart, loss)
        assert chart["width"] <= 412, chart
        # the table keeps its columns and scrolls sideways inside the screen, in one piece: no row scrolls alone
        sideways = dashboard.locator(".arnb-rows").evaluate(
            "box => [getComputedStyle(box).overflowX, box.scrollWidth, box.clientWidth,"
            " Array.from(box.children).filter(row => row.scrollWidth > row.clientWidth + 1"
            " && getComputedStyle(row).overflowX !== 'visible').length]")
        assert sideways[0] == "auto" and sideways[1] > sideways[2] and sideways[2] <= 412 and sideways[3] == 0, sideways
        page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=False)
    lab_check(root / "autoresearch-lab")
