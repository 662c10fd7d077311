"""The dashboard in a real browser: `streamlit run` in a subprocess, headless Debian Chromium
through Playwright. Upload a trace file, compute signals, wait for the step chart, and fail on
any exception or error box. The server is always terminated.

Set TELLTALE_SCREENSHOT=docs/screenshot.png to also save the full-page screenshot there.
Skipped when /usr/bin/chromium is missing, unless CI is set (then it fails).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SERVER_START_S = 90
COMPUTE_S = 240  # the default model loads in ~15-20 s on 2 CPU cores; scoring takes seconds

pytestmark = pytest.mark.browser

SMALL_TRACES = (
    '{"id": "p1-c0", "problem_id": "p1", "prompt": "Tom has 3 apples and picks 4 more. Then '
    'he doubles them. How many apples?", "steps": [{"text": "3 + 4 = 7", "label": 0}, '
    '{"text": "7 * 2 = 15", "label": 1}, {"text": "Answer: 15", "label": 1}], '
    '"is_correct": false}\n'
    '{"id": "p2-c0", "problem_id": "p2", "prompt": "What is 5 plus 6?", '
    '"response": "5 + 6 = 11\\nAnswer: 11", "is_correct": true}\n'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    """A fresh `streamlit run dashboard/app.py` on a free port; terminated afterwards."""
    port = free_port()
    log = tmp_path / "streamlit.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard/app.py",
             "--server.port", str(port), "--server.address", "127.0.0.1",
             "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)


def full_page_screenshot(page: Any, path: Path) -> None:
    """Streamlit scrolls inside its own container, so Playwright's full_page option sees one
    screen; grow the viewport to the content's height instead, then shoot."""
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll("
        "'[data-testid=\"stMain\"], [data-testid=\"stAppViewContainer\"], section')]"
        ".map(e => e.scrollHeight), document.body.scrollHeight)")
    width = page.viewport_size["width"] if page.viewport_size else 1400
    page.set_viewport_size({"width": width, "height": min(int(height) + 40, 12_000)})
    page.wait_for_timeout(1500)  # let plotly re-layout at the new size
    page.screenshot(path=str(path), full_page=True)


def trace_file(tmp_path: Path) -> Path:
    """The project's sample trace file when there is one, else a small hand-labelled file."""
    # trace files only: no journals of unfinished runs
    from dashboard.diagnose.trace_state import sample_files

    samples = sample_files(ROOT / "sample_traces")
    if samples:
        return samples[0]
    path = tmp_path / "small.jsonl"
    path.write_text(SMALL_TRACES)
    return path


def test_upload_compute_and_plot(app_url: str, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium (make browser-deps).")
        pytest.skip(f"{CHROMIUM} is missing (install chromium to run the browser test)")
    sync_api = pytest.importorskip("playwright.sync_api")
    upload = trace_file(tmp_path)
    shot = tmp_path / "traces-page.png"
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url, wait_until="domcontentloaded")
            page.get_by_role("heading", name="Traces").wait_for(timeout=60_000)
            # the trace file's uploader is the first (the probe section has its own)
            page.locator('[data-testid="stFileUploader"] input[type="file"]').first \
                .set_input_files(str(upload))
            page.get_by_text(f"Problems in {upload.name}").or_(
                page.get_by_role("heading", name="Chains")).first.wait_for(timeout=60_000)
            page.get_by_role("heading", name="Chains").wait_for(timeout=60_000)
            page.get_by_role("button", name="Compute signals").click()
            chart = page.locator('[data-testid="stPlotlyChart"]').first
            chart.wait_for(state="visible", timeout=COMPUTE_S * 1000)
            page.locator('[data-testid="stPlotlyChart"] .main-svg').first.wait_for(
                timeout=30_000)  # plotly has drawn
            page.wait_for_timeout(1000)
            errors = page.locator('[data-testid="stException"], '
                                  '[data-testid="stAlertContentError"]')
            assert errors.count() == 0, errors.first.inner_text()
            assert page.get_by_text("SmolLM2-135M-Instruct").count() >= 1  # the model card
            full_page_screenshot(page, shot)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    target = os.environ.get("TELLTALE_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
