"""The inspection page in a real browser (Debian's Chromium driven by Playwright) against a real
server: upload a real photo, see its class on the page, find it in the history and statistics.
A screenshot of each view is saved under test-artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Chromium is missing: make test installs Debian's chromium package"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    yield opened
    context.close()
    assert errors == []  # no script errors, no CSP violations


def test_upload_see_class_then_find_it_in_history_and_stats(
    page: Page,
    server: tuple[object, str, str],
    photos: Path,
) -> None:
    _, base, _ = server
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(base + "/")
    expect(page.get_by_role("heading", name="Classify images")).to_be_visible()

    page.locator("#file-input").set_input_files([photos / "coffee.png", photos / "camera.png"])
    cards = page.locator("#results .card")
    expect(cards).to_have_count(2)
    expect(page.locator(".card[data-top-class='espresso']")).to_be_visible(timeout=30_000)
    expect(page.locator(".card[data-top-class='tripod']")).to_be_visible(timeout=30_000)
    coffee = page.locator(".card[data-top-class='espresso']")
    expect(coffee.get_by_role("img", name="espresso: 95.1%")).to_be_visible()
    expect(coffee).to_contain_text("efficientnet_lite0")
    page.screenshot(path=str(ARTIFACTS / "classify.png"), full_page=True)

    page.get_by_role("tab", name="History").click()
    rows = page.locator("#history-table tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#history-table")).to_contain_text("espresso")
    page.get_by_role("textbox", name="Class").fill("espresso")
    page.locator("#history-filters").get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("coffee.png")
    page.screenshot(path=str(ARTIFACTS / "history.png"), full_page=True)

    page.get_by_role("tab", name="Statistics").click()
    expect(page.locator("#stats-total")).to_have_text("2 predictions")
    expect(page.locator("#chart-classes li")).to_have_count(2)
    page.screenshot(path=str(ARTIFACTS / "stats.png"), full_page=True)


def test_asks_for_an_api_key_when_the_server_needs_one(
    page: Page, photos: Path, tmp_path: Path
) -> None:
    import subprocess

    from tests.support import VISINSPECT, environment, free_port, wait_ready

    port = free_port()
    process = subprocess.Popen(
        [VISINSPECT, "serve", "--port", str(port)],
        env=environment(DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}", API_KEYS="s3cret-key"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)  # type: ignore[arg-type]
        page.goto(base + "/")
        page.locator("#file-input").set_input_files(photos / "coffee.png")
        expect(page.get_by_role("alert")).to_contain_text("needs an API key")
        expect(page.locator("#results .card .error")).to_contain_text("missing_api_key")

        page.get_by_label("API key").fill("s3cret-key")
        page.get_by_label("API key").press("Enter")
        page.get_by_label("API key").dispatch_event("change")
        page.locator("#file-input").set_input_files(photos / "camera.png")
        expect(page.locator(".card[data-top-class='tripod']")).to_be_visible(timeout=30_000)
    finally:
        process.terminate()
        process.wait(timeout=60)
