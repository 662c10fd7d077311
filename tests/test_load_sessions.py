"""Four users at once against one server: `streamlit run` in a subprocess (the fixture of
tests/test_browser.py) and four headless Chromium contexts, each its own Streamlit session, on
the default model:

- Live: a sampled reply (seed 7, 48 new tokens) with a probe watching;
- Introspection: a single trial with the concept injected (one trial, 16 tokens, beside the
  random-vector control) and the logit lens;
- Fine-tuning: a token scan of the shipped finetune_conflicts.jsonl;
- Traces: 16 chains of arith_small.jsonl, uploaded, scored with a probe.

Both probes are a copy of the shipped default probe taken at the start and uploaded (a run that
rewrites sample_traces/probes meanwhile changes nothing here).

First each runs alone, one after another; then four fresh sessions press their buttons at the
same time. Every run must finish within a bounded time with no exception or error box on any
page, and the Live reply written beside the others must equal the one written alone (text,
tokens, every step and its scores within 1e-6): nothing of another session, an injected vector
least of all, reaches it. The sessions share one cached model and queue on its lock; the table
printed (pytest -s) gives each user's time from press to finished result, alone and together.
Nothing about speed is asserted.

The runs alone and together ask for the same amount of work, but the three cached pages get
other inputs together (another concept word, K=21, the same chains serialised differently),
so the process's result cache cannot answer them; the Live run is never cached.
Skipped when /usr/bin/chromium is missing, unless CI is set (then it fails).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.test_browser import CHROMIUM, ROOT
from tests.test_browser import app_url as app_url  # noqa: F401 - a fixture

pytestmark = pytest.mark.browser

SETUP_S = 240  # opening a session: the first one loads the default model (~20 s idle)
PHASE_S = 480  # every run of a phase finishes within this, or the test fails
POLL_S = 0.25
LIVE_SEED, LIVE_TOKENS = 7, 48
TRIAL_TOKENS = 16
CONCEPT = {"alone": "lighthouse", "together": "volcano"}
SCAN_K = {"alone": 20, "together": 21}
N_CHAINS = 16
SCORE_TOL = 1e-6
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
PROBE = ROOT / "sample_traces" / "probes" / "default"
PROBE_UPLOAD = "upload a probe (.safetensors + .json) ..."  # the Live page's option


def prepare_files(tmp_path: Path) -> float:
    """What the users upload, read once: the probe's two files, and the first chains of
    arith_small.jsonl serialised two ways (the same chains, another content hash per phase).
    Returns the probe's calibrated step threshold.

    The sidecar is written compact, so the copy's hash differs from the shipped probe's: the
    Live page resets its alarm threshold to a probe's own only when the probe's hash changes,
    and a widget that was not drawn while no probe was chosen (the upload option, before the
    upload) comes back at 0.000 for the same hash."""
    folder = tmp_path / "probe"
    folder.mkdir()
    (folder / "default.safetensors").write_bytes(PROBE.with_suffix(".safetensors").read_bytes())
    sidecar = json.loads(PROBE.with_suffix(".json").read_text())
    (folder / "default.json").write_text(json.dumps(sidecar, separators=(",", ":")))
    assert (folder / "default.json").read_bytes() != PROBE.with_suffix(".json").read_bytes()
    lines = (ROOT / "sample_traces" / "arith_small.jsonl").read_text().splitlines()[:N_CHAINS]
    for phase, separators in (("alone", (", ", ": ")), ("together", (",", ":"))):
        (tmp_path / f"chains-{phase}.jsonl").write_text("".join(
            json.dumps(json.loads(line), separators=separators) + "\n" for line in lines))
    return float(sidecar["step_threshold"])


def probe_files(tmp_path: Path) -> list[str]:
    return [str(tmp_path / "probe" / f"default{suffix}") for suffix in (".safetensors", ".json")]


def uploader(page: Any, label: str) -> Any:
    return page.locator('[data-testid="stFileUploader"]').filter(
        has=page.get_by_text(label, exact=True)).locator('input[type="file"]')


# ---------------------------------------------------------------------------- page helpers


def settle(page: Any) -> None:
    """Let the rerun a widget change started finish (the status widget shows while it runs)."""
    page.wait_for_timeout(400)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached",
                                                            timeout=SETUP_S * 1000)


def set_number(scope: Any, label: str, value: int) -> None:
    box = scope.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    settle(box.page)


def setup_live(page: Any, phase: str, tmp_path: Path) -> None:
    """The first sample problem, the uploaded probe, watch mode; seed and length fixed."""
    page.locator('[data-testid="stSelectbox"]').filter(
        has=page.get_by_text("Probe", exact=True)).click()
    page.get_by_role("option", name=PROBE_UPLOAD, exact=True).click()
    settle(page)
    uploader(page, "Probe files").set_input_files(probe_files(tmp_path))
    page.get_by_text("step probe + prefix tracker").wait_for(timeout=60_000)
    settle(page)
    page.get_by_text("Sampling", exact=True).click()
    set_number(page, "Max new tokens", LIVE_TOKENS)
    set_number(page, "Seed", LIVE_SEED)


def setup_trial(page: Any, phase: str, tmp_path: Path) -> None:
    """A typed concept (another per phase), one trial of 16 tokens, the injected arm and the
    random-vector control only (the no-injection arm alone would be 100 replies)."""
    page.get_by_text("your own word", exact=True).click()
    settle(page)
    word = page.get_by_label("Your word", exact=True)
    word.fill(CONCEPT[phase])
    word.press("Enter")
    settle(page)
    tab = page.get_by_role("tabpanel", name="Single trial")
    tab.get_by_text("Sampling and controls", exact=True).click()
    set_number(tab, "Trials per condition", 1)
    set_number(tab, "Max new tokens", TRIAL_TOKENS)
    for control in ("no injection", "negated vector (−v)"):
        tab.get_by_role("button", name=f"Remove {control}", exact=True).click()
        settle(page)
    tab.get_by_text(f"2 replies of up to {TRIAL_TOKENS} tokens").wait_for(timeout=30_000)


def setup_scan(page: Any, phase: str, tmp_path: Path) -> None:
    """The first shipped fine-tuning file (finetune_conflicts.jsonl); K differs per phase."""
    page.get_by_text("Scan settings", exact=False).click()
    set_number(page, "K (top-K entropy)", SCAN_K[phase])


def setup_traces(page: Any, phase: str, tmp_path: Path) -> None:
    """Upload the chains of this phase and the probe."""
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first \
        .set_input_files(str(tmp_path / f"chains-{phase}.jsonl"))
    page.get_by_text("upload a probe", exact=True).wait_for(timeout=60_000)
    page.get_by_text("upload a probe", exact=True).click()
    settle(page)
    weights, sidecar = probe_files(tmp_path)
    uploader(page, "Probe weights (.safetensors)").set_input_files(weights)
    uploader(page, "Probe sidecar (.json)").set_input_files(sidecar)
    page.get_by_role("button", name="Score with this probe", exact=True).wait_for(
        timeout=60_000)
    settle(page)


@dataclass
class User:
    """One user's page: how to set it up for a phase, the button that starts the run, and the
    download button that appears with its finished result."""

    name: str
    path: str
    heading: str
    setup: Callable[[Any, str, Path], None]
    button: str
    done: str
    page: Any = None
    pressed: float = 0.0
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # phase: (press, end)


def users() -> list[User]:
    """In the order they press together: the trial first, so the Live reply is written while
    another session's injection run is under way (their forward passes take turns on the
    model's lock)."""
    return [
        User("Introspection trial", "introspection", "Introspection", setup_trial, "Run trial",
             "Controls (CSV)"),
        User("Live monitor", "live", "Live", setup_live, "Start", "Download the result (JSON)"),
        User("Fine-tuning scan", "fine-tuning", "Fine-tuning", setup_scan, "Scan tokens",
             "Download weights (JSONL)"),
        User("Traces scoring", "", "Traces", setup_traces, "Score with this probe",
             "Download the metrics (CSV)"),
    ]


def open_session(browser: Any, url: str, user: User, phase: str, tmp_path: Path) -> None:
    """A new context (its own Streamlit session) on the user's page, the sidebar's default model
    loaded (a cache hit after the first), the inputs set for `phase`."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                  accept_downloads=True)
    page = context.new_page()
    page.goto(f"{url}/{user.path}", wait_until="domcontentloaded")
    page.get_by_role("heading", name=user.heading, exact=True).wait_for(timeout=60_000)
    page.get_by_role("button", name="Load model", exact=True).click()
    page.get_by_text("loaded in").wait_for(timeout=SETUP_S * 1000)
    settle(page)
    user.setup(page, phase, tmp_path)
    user.page = page


def press(user: User) -> None:
    user.page.get_by_role("button", name=user.button, exact=True).click()
    user.pressed = time.monotonic()


def error_text(page: Any) -> str | None:
    errors = page.locator(ERRORS)
    return errors.first.inner_text() if errors.count() else None


def wait_finished(running: list[User], phase: str) -> None:
    """Poll every page until each shows its finished result; fail at once on an error box, or
    when the phase runs past PHASE_S."""
    deadline = time.monotonic() + PHASE_S
    pending = list(running)
    while pending:
        for user in list(pending):
            error = error_text(user.page)
            if error is not None:
                pytest.fail(f"{user.name} ({phase}) shows an error: {error}")
            if user.page.get_by_role("button", name=user.done, exact=True).count():
                user.spans[phase] = (user.pressed, time.monotonic())
                pending.remove(user)
        if pending and time.monotonic() > deadline:
            pytest.fail(f"Not finished within {PHASE_S} s ({phase}): "
                        + ", ".join(u.name for u in pending))
        time.sleep(POLL_S)


def check_page(user: User, phase: str) -> None:
    """No error box once the result is drawn (the page settles first)."""
    settle(user.page)
    error = error_text(user.page)
    assert error is None, f"{user.name} ({phase}) shows an error: {error}"


def live_result(page: Any) -> dict[str, Any]:
    """The finished Live run as its page offers it: the downloaded JSON."""
    assert page.get_by_text("Finished.", exact=True).count() == 1  # not stopped, no error
    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("button", name="Download the result (JSON)", exact=True).click()
    return dict(json.loads(Path(info.value.path()).read_text()))


def assert_same_reply(alone: dict[str, Any], together: dict[str, Any],
                      step_threshold: float) -> None:
    config = alone["run"]["config"]
    assert (config["seed"], config["max_new_tokens"]) == (LIVE_SEED, LIVE_TOKENS)
    assert alone["threshold"] == pytest.approx(step_threshold, abs=1e-3)  # the probe's own
    assert together["run"]["config"] == config
    assert alone["steps"], "the Live reply closed no step: nothing to compare scores on"
    assert together["text"] == alone["text"]
    assert together["token_ids"] == alone["token_ids"]
    assert len(together["steps"]) == len(alone["steps"])
    for one, other in zip(alone["steps"], together["steps"], strict=True):
        assert (other["text"], other["kept"], other["alarm"]) == (
            one["text"], one["kept"], one["alarm"])
        for score in ("step_score", "prefix_score"):
            if one[score] is None:
                assert other[score] is None
            else:
                assert other[score] == pytest.approx(one[score], abs=SCORE_TOL)


def report(everyone: list[User]) -> str:
    """The table (pytest -s): each user's seconds from press to result, alone and together, the
    difference (about what it waited for the others: the same work, once with company), and when
    its run began and ended after the first press together."""
    first = min(u.spans["together"][0] for u in everyone)
    lines = [f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (1 min)",
             f"{'user':<22}{'alone s':>9}{'together s':>12}{'extra s':>10}"
             f"{'together ran (s after first press)':>38}"]
    for user in everyone:
        alone = user.spans["alone"][1] - user.spans["alone"][0]
        start, end = user.spans["together"]
        lines.append(f"{user.name:<22}{alone:>9.1f}{end - start:>12.1f}"
                     f"{end - start - alone:>10.1f}{'':>20}{start - first:>7.1f} to "
                     f"{end - first:>6.1f}")
    return "\n".join(lines)


def test_four_sessions_at_once(app_url: str, tmp_path: Path) -> None:  # noqa: F811
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium (make browser-deps).")
        pytest.skip(f"{CHROMIUM} is missing (install chromium to run the browser test)")
    sync_api = pytest.importorskip("playwright.sync_api")
    everyone = users()
    live = next(u for u in everyone if u.path == "live")
    results: dict[str, dict[str, Any]] = {}
    step_threshold = prepare_files(tmp_path)
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        try:
            for user in everyone:  # alone, one after another
                open_session(browser, app_url, user, "alone", tmp_path)
                press(user)
                wait_finished([user], "alone")
                check_page(user, "alone")
                if user is live:
                    results["alone"] = live_result(user.page)
                user.page.context.close()
            for user in everyone:  # four fresh sessions, set up, then pressed at once
                open_session(browser, app_url, user, "together", tmp_path)
            for user in everyone:
                press(user)
            wait_finished(everyone, "together")
            for user in everyone:
                check_page(user, "together")
            results["together"] = live_result(live.page)
        finally:
            browser.close()
    print("\n" + report(everyone))
    assert_same_reply(results["alone"], results["together"], step_threshold)
