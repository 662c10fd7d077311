"""The chain maker in a real browser: `streamlit run` in a subprocess, headless Debian Chromium
through Playwright, the default model answering 2 shipped problems twice (40 new tokens each).
Start, follow the run to its summary, see the chains in the Traces view below, and fail on any
exception or error box. The run's folder goes to a temporary TELLTALE_RUNS_DIR.

Set TELLTALE_GENERATE_SCREENSHOT=docs/generate.png to also save the screenshot there.
Skipped when /usr/bin/chromium is missing, unless CI is set (then it fails).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_browser import CHROMIUM
from tests.test_browser import app_url as app_url  # noqa: F401 - a fixture

RUN_S = 400  # loads the default model (~15-20 s alone) and writes 4 short replies
SHOT_HEIGHT = 1750

pytestmark = pytest.mark.browser


@pytest.fixture
def runs_dir(tmp_path: Path) -> Iterator[Path]:
    """Runs in a temporary folder (set before the server starts, which inherits it)."""
    from dashboard.diagnose.generate_state import RUNS_ENV

    before = os.environ.get(RUNS_ENV)
    os.environ[RUNS_ENV] = str(tmp_path / "runs")
    yield tmp_path / "runs"
    if before is None:
        os.environ.pop(RUNS_ENV, None)
    else:
        os.environ[RUNS_ENV] = before


def test_make_chains_with_the_default_model(runs_dir: Path, app_url: str,  # noqa: F811
                                            tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium (make browser-deps).")
        pytest.skip(f"{CHROMIUM} is missing (install chromium to run the browser test)")
    sync_api = pytest.importorskip("playwright.sync_api")
    shot = tmp_path / "generate.png"
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url, wait_until="domcontentloaded")
            page.get_by_role("heading", name="Traces").wait_for(timeout=60_000)
            page.get_by_text("make them here: the model answers a problem set").click()
            page.get_by_text("arith_problems.jsonl: 200 problem(s)").wait_for(timeout=60_000)
            for label, value in (("Problems", 2), ("Chains per problem", 2),
                                 ("Max new tokens", 40)):
                box = page.get_by_label(label, exact=True)
                box.fill(str(value))
                box.press("Enter")
                page.wait_for_timeout(800)
            page.get_by_role("button", name="Start", exact=True).click()
            page.get_by_text("Wrote ").wait_for(timeout=RUN_S * 1000)
            page.get_by_role("heading", name="Chains", exact=True).wait_for(timeout=60_000)
            page.wait_for_timeout(1500)
            errors = page.locator('[data-testid="stException"], '
                                  '[data-testid="stAlertContentError"]')
            assert errors.count() == 0, errors.first.inner_text()
            assert page.get_by_text("for 2 problems").count() == 1
            assert page.get_by_role("button", name="Download the chains (JSONL)").count() == 1
            page.set_viewport_size({"width": 1400, "height": SHOT_HEIGHT})  # the run, the
            page.wait_for_timeout(1500)  # summary and the chain table, not the whole page
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    [folder] = list(runs_dir.iterdir())
    assert (folder / "chains.jsonl").is_file() and (folder / "chains.meta.json").is_file()
    assert shot.stat().st_size > 10_000
    target = os.environ.get("TELLTALE_GENERATE_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
