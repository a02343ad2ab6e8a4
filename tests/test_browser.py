"""The Dagster UI in a real browser (Debian's Chromium, driven by Playwright): a file dropped
on the share appears on the code locations page by itself, its asset opens, and a broken
version shows its error on the page. A screenshot of each step is kept in
``test-artifacts/browser/`` (or ``$RUNNER_TEST_ARTIFACTS/browser/``)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

from tests.needs import missing
from tests.service import ROOT, Service, asset_file, drop, running, wait_for

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("RUNNER_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("RUNNER_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
#: Generous: the UI notices a reloaded workspace by itself, on its own schedule.
UI_TIMEOUT_MS = 120_000


@pytest.fixture
def page(request: pytest.FixtureRequest) -> Iterator[Page]:
    if not CHROMIUM.exists():
        missing(f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            # Containers and CI machines: no user namespaces for the sandbox, a small /dev/shm.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            yield page
            if getattr(request.node, "report_call", None) and request.node.report_call.failed:
                shot(page, "failure")  # what the page showed when the test gave up
        finally:
            browser.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True, animations="disabled")


def open_locations(page: Page, service: Service) -> None:
    """The code locations page, with the first-visit newsletter dialog dismissed."""
    wait_for("the webserver to answer", lambda: service.locations() is not None)
    page.goto(f"{service.url}/locations")
    page.get_by_text("Code locations").first.wait_for()
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=5_000)
        skip.click()
    except Exception:  # not shown (already dismissed in this profile)
        pass


def row(page: Page, location: str) -> Locator:
    """The code locations table's row of ``location`` (a virtualized list of divs, not a
    table): the innermost element holding both its name and its Reload button."""
    name = page.get_by_text(location, exact=True)
    reload = page.get_by_role("button", name="Reload")
    return page.locator("div").filter(has=name).filter(has=reload).last


def test_a_dropped_file_appears_opens_and_shows_its_error_in_the_ui(
    page: Page, tmp_path: Path, state_dir: Path
) -> None:
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with running(tmp_path / "share", state_dir, tmp_path / "service.log") as service:
        open_locations(page, service)
        shot(page, "1-no-locations")

        # Dropped on the share while the page is open: it appears without clicking Reload.
        drop(service.code_dir / "browser_demo.py", asset_file(["orders", "customers"]))
        expect(row(page, "browser_demo")).to_contain_text("Loaded")
        shot(page, "2-location-appeared")

        # Its asset opens.
        page.locator('a[href="/locations/browser_demo/assets"]').first.click()
        page.get_by_text("default", exact=True).first.click()  # its asset group, folded
        page.get_by_text("orders", exact=True).first.click()
        expect(page).to_have_url(re.compile(r"/assets/orders$"))
        expect(page.get_by_role("button", name="Materialize")).to_be_visible()
        expect(page.get_by_text("Never materialized")).to_be_visible()  # its own page
        expect(page.get_by_role("link", name="browser_demo")).to_be_visible()  # its location
        shot(page, "3-asset-opened")

        # A broken version: the last good one keeps serving, the error is shown beside it.
        drop(
            service.code_dir / "browser_demo.py",
            asset_file(["orders"]) + "\nraise ValueError('the orders table is gone')\n",
        )
        page.goto(f"{service.url}/locations")
        failed = row(page, "browser_demo~new-version-failed")
        failed.get_by_role("button", name="View error").click()
        expect(page.get_by_role("dialog")).to_contain_text("the orders table is gone")
        shot(page, "4-error-shown")
