"""The search page end to end in headless Chromium (Debian's ``chromium`` driven by Playwright):
load the page, upload a query, see the framed top-k grid, click through to a match and to the
gallery. A screenshot is written to ``build/test-artifacts/serve_page.png``.

Skips (with the reason) when the ``playwright`` package or a Chromium binary is missing;
``.ci/run`` installs both. Playwright never downloads a browser here: it drives the system one
through ``executable_path``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from serve_testlib import LiveServer

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    path = os.environ.get("REIDKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium binary (apt-get install chromium); .ci/run installs it")
    return path


@pytest.fixture(scope="module")
def browser_page(service, tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    executable = _chromium()
    from reidkit.serve import create_app

    with LiveServer(create_app(service)) as server, sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 860},
            bypass_csp=True)  # the page itself runs under the CSP; the test's own waits are evaluated scripts
        try:
            page = context.new_page()
            page.set_default_timeout(20000)
            problems: list[str] = []
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.on("request", lambda req: None if req.url.startswith((server.url, "blob:", "data:"))
                    else problems.append(f"request outside the service: {req.url}"))
            yield page, server.url, problems
        finally:
            context.close()


def _cards(page, grid: str):
    return page.locator(f"#{grid} .card")


def test_upload_grid_click_through_and_gallery(browser_page, serve_gallery, service):
    page, url, problems = browser_page
    page.goto(url + "/")
    page.wait_for_function("document.querySelector('#model-card').textContent.includes('osnet_x0_25')")
    card_text = page.locator("#model-card").inner_text()
    assert "synthetic" in card_text and "rank-1" in card_text and "24 entries" in card_text

    page.fill("#query-pid", "5")
    page.set_input_files("#file-input", str(serve_gallery / "0005_c1_1.png"))
    page.wait_for_function("document.querySelectorAll('#results .card').length === 10")
    cards = _cards(page, "results")
    classes = [cards.nth(i).get_attribute("class") for i in range(10)]
    texts = [cards.nth(i).inner_text() for i in range(10)]
    assert "correct" in classes[0] and "score\n1.0000" in texts[0]
    for cls, text in zip(classes, texts):
        same = "pid\n5\n" in text + "\n"
        assert ("correct" in cls) == same and ("wrong" in cls) == (not same), (cls, text)
    assert "wrong" in " ".join(classes)
    page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)
    assert "matches for the uploaded image" in page.locator("#score-note").inner_text()

    second = int(cards.nth(1).get_attribute("data-id"))
    cards.nth(1).click()
    page.wait_for_function(f"document.querySelector('#query-info').textContent === 'gallery entry {second}'")
    page.wait_for_function(f"document.querySelector('#score-note').textContent.includes('entry {second}')")
    shown = [int(_cards(page, "results").nth(i).get_attribute("data-id")) for i in range(_cards(page, "results").count())]
    expected = [m["id"] for m in service.search(entry_id=second, topk=10)["matches"]]
    assert shown == expected and second not in shown

    searches = int(page.locator("#results").get_attribute("data-searches"))
    page.check("#exclude-own")
    page.click("#search-button")
    own = service.index.get([second])[0].camid
    page.wait_for_function(f"document.querySelector('#results').dataset.searches === '{searches + 1}'")
    cams = [t.split("camera\n")[1].split("\n")[0] for t in _cards(page, "results").all_inner_texts()]
    assert cams and str(own) not in cams

    page.click("#gallery-tab")
    page.wait_for_function("document.querySelectorAll('#gallery .card').length === 24")
    assert page.locator("#page-info").inner_text() == "1-24 of 24"
    page.fill("#filter-camid", "1")
    page.click("#gallery-filters button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#gallery .card').length === 12")
    first = int(_cards(page, "gallery").nth(0).get_attribute("data-id"))
    _cards(page, "gallery").nth(0).click()
    page.wait_for_function(f"document.querySelector('#query-info').textContent === 'gallery entry {first}'")
    assert page.locator("#matches-view").is_visible() and not page.locator("#gallery-view").is_visible()
    assert problems == []


def test_errors_are_shown(browser_page, tmp_path):
    page, url, problems = browser_page
    page.goto(url + "/")
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"plain text")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    assert "not a readable image" in page.locator("#error").inner_text()
    problems.clear()  # the browser logs the 400 answer as a console error: expected here
